"""The API function's process collects reference cycles at a server's pace
(`imagegw.infra.collector`): its youngest generation less often than the interpreter's
default, the older ones as usual."""

from __future__ import annotations

import gc
import os
import subprocess
import sys
from pathlib import Path

from imagegw.infra.collector import YOUNG_THRESHOLD, loading, pace_for_server

ROOT = Path(__file__).resolve().parents[2]


def in_api_function(code: str) -> str:
    """What `code` prints, run by a fresh interpreter in the API function's folder with the
    layer's package on the path (as uvicorn runs `main`)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT / "layers" / "common")}
    return subprocess.run(
        [sys.executable, "-c", code],
        cwd=ROOT / "functions" / "api",
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout


def test_the_api_functions_process_collects_its_youngest_generation_at_a_servers_pace() -> None:
    # Given the API function's entry point imported as uvicorn imports it
    shown = in_api_function("import gc, main; print(*gc.get_threshold())").split()
    # Then its youngest generation is collected every YOUNG_THRESHOLD allocations, the
    # older generations at the interpreter's default pace
    default = subprocess.run(
        [sys.executable, "-c", "import gc; print(*gc.get_threshold())"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout.split()
    assert int(default[0]) < YOUNG_THRESHOLD
    assert [int(v) for v in shown] == [YOUNG_THRESHOLD, *(int(v) for v in default[1:])]


def test_a_collector_switched_off_or_slower_already_is_left_as_it_is() -> None:
    before = gc.get_threshold()
    try:
        gc.set_threshold(0)
        pace_for_server()
        assert gc.get_threshold()[0] == 0
        gc.set_threshold(50_000, 7, 9)
        pace_for_server()
        assert gc.get_threshold() == (50_000, 7, 9)
    finally:
        gc.set_threshold(*before)


def test_what_loading_made_is_frozen_and_the_collector_is_on_after_it() -> None:
    before = gc.get_freeze_count()
    was_on = gc.isenabled()
    try:
        # Given the collector off, as the API function's start script leaves it (serve.py)
        gc.disable()
        # When something is made while loading
        with loading():
            assert not gc.isenabled()  # (no collection walks what the import makes)
            made = [[index] for index in range(1000)]
        # Then it is out of later collections, and the collector is on
        assert gc.get_freeze_count() >= before + len(made)
        assert gc.isenabled()
    finally:
        gc.unfreeze()
        if not was_on:
            gc.disable()


def test_the_start_script_runs_uvicorns_command_line_with_the_collector_off() -> None:
    # When the start script's Python is run as run.sh runs it, with uvicorn's --help
    shown = in_api_function(
        "import gc, runpy, sys; sys.argv = ['serve.py', '--help']\n"
        "try:\n    runpy.run_path('serve.py', run_name='__main__')\n"
        "except SystemExit as end:\n    print(end.code, gc.isenabled())"
    )
    # Then it is uvicorn's command line, and the collector is off (main.py switches it on)
    assert "Usage:" in shown and "--app-dir" in shown
    assert shown.split()[-2:] == ["0", "False"]
