"""The first `make run`'s install shows progress (tools/pipprogress.py), not one still line."""

from __future__ import annotations

import io

from pipprogress import STEP, main, progress

PIP = [
    "Collecting starlette==0.47.2 (from -r requirements-dev.txt (line 3))\n",
    "  Downloading starlette-0.47.2-py3-none-any.whl.metadata (6.2 kB)\n",
    "Requirement already satisfied: anyio<5,>=3.6.2 in ./.venv/lib (from starlette==0.47.2)\n",
    "Collecting moto[server]==5.1.0\n",
    "WARNING: file:///x/extras is ignored: it is neither a file nor a directory.\n",
    "Installing collected packages: starlette, moto\n",
    "Successfully installed moto-5.1.0 starlette-0.47.2\n",
]


def test_on_a_terminal_one_line_is_rewritten_as_packages_come() -> None:
    shown = list(progress(PIP, "project dependencies", tty=True))
    # each step rewrites the same line ("\r"), naming the count and the package at hand
    assert shown[0].startswith("\r  project dependencies: 1 packages looked at (now starlette")
    assert "3 packages looked at (now moto" in shown[2]
    assert "installing 2 packages" in shown[3]
    assert shown[-1].endswith("project dependencies: ready (3 packages, 0 s)\n")
    # and only the last one ends the line; pip's noise about missing folders is hidden
    assert all(not piece.endswith("\n") for piece in shown[:-1])
    assert not any("is ignored" in piece for piece in shown)


def test_in_a_log_a_line_every_few_packages_and_errors_as_they_are() -> None:
    lines = [f"Collecting package{i}\n" for i in range(STEP * 2 + 3)]
    lines.append("ERROR: No matching distribution found for nothing==0\n")
    out = io.StringIO()
    assert main(["deps"], io.StringIO("".join(lines)), out) == 0
    text = out.getvalue().splitlines()
    assert text == [
        f"  deps: {STEP} packages looked at",
        f"  deps: {STEP * 2} packages looked at",
        "ERROR: No matching distribution found for nothing==0",
        f"  deps: ready ({STEP * 2 + 3} packages, 0 s)",
    ]
