"""`make deploy` run for real against a fake `sam`: the order of its builds and deploys, and the
Architecture each build was for. The one deploy that changes the stack always ships a build for
the Architecture the stack is deployed with, also when the guided answers just changed it.

The Makefile and tools/stacktool are copied to a scratch folder (so the fake guided deploy
writes that folder's samconfig.toml, not the project's); the fake `sam` on the command line
records each call and what build was there when it ran; `stacktool architecture` runs for
real, and only its AWS calls (the credentials check, the outputs) are stood in for."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from stacktool.__main__ import saved_architecture

ROOT = Path(__file__).resolve().parents[2]

SAVED = """version = 0.1
[default.global.parameters]
stack_name = "gw"
[default.deploy.parameters]
capabilities = "CAPABILITY_IAM"
confirm_changeset = true
resolve_s3 = true
region = "us-east-1"
{overrides}"""

# the fake SAM CLI: `build` notes the Architecture it built for; `deploy` records the build it
# found; `deploy --guided` saves the answers given in FAKE_GUIDED_ANSWERS, as SAM does before
# it packages anything
FAKE_SAM = """#!{python}
import json, os, sys
from pathlib import Path
args = sys.argv[1:]
built = Path(".aws-sam/fake-built")
if args[0] == "build":
    override = args[args.index("--parameter-overrides") + 1]
    built.parent.mkdir(exist_ok=True)
    built.write_text(override.split("=", 1)[1])
elif "--guided" in args:
    Path("samconfig.toml").write_text(os.environ["FAKE_GUIDED_ANSWERS"])
call = {{"args": args, "build": built.read_text() if built.exists() else None}}
with open("sam-calls.jsonl", "a") as calls:
    calls.write(json.dumps(call) + "\\n")
"""

# stacktool with AWS stood in for: the credentials check passes, the outputs are one line; the
# Architecture commands are the real ones (reading the scratch folder's samconfig.toml)
FAKE_STACKTOOL = """import sys
sys.path[:0] = ["tools", {layers!r}]
if sys.argv[1] in ("credentials", "outputs"):
    print("stood in:", sys.argv[1])
    sys.exit(0)
from stacktool.__main__ import main
sys.exit(main())
"""


def overrides(arch: str | None, more: str = "") -> str:
    if arch is None:
        return ""
    return f'parameter_overrides = "Architecture=\\"{arch}\\" A=\\"b\\"{more}"\n'


def make_deploy(
    tmp_path: Path, saved: str | None, answered: str | None, guided: bool, more: str = ""
) -> Any:
    """Run `make deploy` in a scratch copy of the project whose samconfig.toml saves `saved`
    (None: nothing saved) and whose guided answers choose `answered` (and the parameters in
    `more`); the fake sam's calls, the Architecture saved at the end, make's output and exit
    status."""
    work = tmp_path / "project"
    shutil.copytree(ROOT / "tools" / "stacktool", work / "tools" / "stacktool")
    shutil.copy(ROOT / "Makefile", work / "Makefile")
    shutil.copy(ROOT / "template.yaml", work / "template.yaml")
    (work / "samconfig.toml").write_text(SAVED.format(overrides=overrides(saved)))
    # the virtualenvs' markers, newer than what they are made from, so nothing is installed
    fake = tmp_path / "bin"
    fake.mkdir()
    for made_from in (
        "requirements-dev.txt",
        "layers/common/requirements.txt",
        "layers/common/constraints.txt",
    ):
        (work / made_from).parent.mkdir(parents=True, exist_ok=True)
        (work / made_from).write_text("")
        os.utime(work / made_from, (1, 1))
    venv, sam_venv = tmp_path / "venv", tmp_path / "venv-sam"
    (venv / "bin").mkdir(parents=True)
    sam_venv.mkdir()
    (venv / "bin" / ".ready").touch()
    (sam_venv / ".ready").touch()
    (fake / "python3.13").symlink_to(sys.executable)  # the build's check that 3.13 is there
    sam = fake / "sam"
    sam.write_text(FAKE_SAM.format(python=sys.executable))
    sam.chmod(0o755)
    (work / "fakestack.py").write_text(FAKE_STACKTOOL.format(layers=str(ROOT / "layers/common")))
    env = {
        **os.environ,
        "PATH": f"{fake}{os.pathsep}{os.environ['PATH']}",
        "FAKE_GUIDED_ANSWERS": SAVED.format(overrides=overrides(answered, more)),
        "PYENV_ROOT": str(tmp_path / "no-pyenv"),
    }
    env.pop("MAKEFLAGS", None)
    done = subprocess.run(
        [
            "make",
            "--no-print-directory",
            "deploy",
            f"GUIDED={int(guided)}",
            f"VENV={venv}",
            f"SAM_VENV={sam_venv}",
            f"SAM={sam}",
            f"STACKTOOL={sys.executable} fakestack.py",
        ],
        cwd=work,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    calls = [json.loads(line) for line in (work / "sam-calls.jsonl").read_text().splitlines()]
    told = done.stdout + done.stderr
    return calls, saved_architecture(work / "samconfig.toml"), told, done.returncode


def steps(calls: list[dict[str, Any]]) -> list[str]:
    """Each call as `build <arch>`, `preview` (a guided deploy that executes nothing) or
    `deploy <the build it shipped>`."""
    shown = []
    for call in calls:
        args = call["args"]
        if args[0] == "build":
            shown.append(f"build {call['build']}")
        elif "--guided" in args:
            assert "--no-execute-changeset" in args  # the guided run changes nothing
            shown.append("preview")
        else:
            assert args == ["deploy"]  # the saved answers, not asked again
            shown.append(f"deploy {call['build']}")
    return shown


def test_a_guided_deploy_that_changes_the_architecture_never_ships_the_old_build(
    tmp_path: Path,
) -> None:
    # Given a stack saved as arm64, and guided answers that choose x86_64
    calls, saved, told, status = make_deploy(tmp_path, "arm64", "x86_64", guided=True)
    # Then the guided questions only preview, the build is redone for x86_64, and the one
    # deploy that changes anything ships the x86_64 build
    assert status == 0, told
    assert steps(calls) == ["build arm64", "preview", "build x86_64", "deploy x86_64"]
    assert saved == "x86_64"
    assert "building for x86_64 before the deploy" in told


@pytest.mark.parametrize("saved", ["x86_64", None])
def test_a_guided_deploy_that_keeps_the_architecture_builds_once(
    tmp_path: Path, saved: str | None
) -> None:
    # Given a saved Architecture (or none: the template's arm64) that the answers keep
    calls, _, told, status = make_deploy(tmp_path, saved, saved, guided=True)
    arch = saved or "arm64"
    assert status == 0, told
    assert steps(calls) == [f"build {arch}", "preview", f"deploy {arch}"]


def test_a_deploy_with_the_saved_answers_builds_for_them_and_deploys_once(
    tmp_path: Path,
) -> None:
    calls, _, told, status = make_deploy(tmp_path, "x86_64", None, guided=False)
    assert status == 0, told
    assert steps(calls) == ["build x86_64", "deploy x86_64"]
    assert "stood in: outputs" in told  # the addresses are printed at the end


def test_guided_answers_whose_timeouts_cannot_work_together_stop_before_any_deploy(
    tmp_path: Path,
) -> None:
    # Given guided answers with a GenerationTimeout longer than the FunctionTimeout (which
    # CloudFormation takes: the template cannot compare two parameters)
    more = ' FunctionTimeout=\\"300\\" GenerationTimeout=\\"600\\"'
    calls, _, told, status = make_deploy(tmp_path, "arm64", "arm64", guided=True, more=more)
    # Then make deploy stops after the preview, saying what to set, and nothing is deployed
    assert status != 0
    assert steps(calls) == ["build arm64", "preview"]
    assert "GenerationTimeout 600 does not fit FunctionTimeout 300" in told
    assert "Set GenerationTimeout to 270 or less" in told
