"""Boot the `sam build` output the way Lambda runs it, and call it over HTTP on loopback.

Lambda, with the Web Adapter layer, runs the function's handler script (`run.sh`) from
`LAMBDA_TASK_ROOT` with the layers under /opt; the adapter then waits for the readiness path and
forwards requests over HTTP. This test does the same without Docker: it starts
`<build>/ApiFunction/run.sh` with

- a clean Python 3.13 (a venv without pip made from pyenv's 3.13: the Lambda runtime version),
  whose site-packages holds only what the Lambda runtime ships (boto3 and its dependencies,
  symlinked from the dev venv); nothing else of the dev venv is importable;
- `PYTHONPATH` = `<build>/CommonLayer/python`, where /opt/python would be (run.sh appends
  /opt/python, which does not exist here);
- the function's environment variables read from the built template (parameter defaults for
  `Ref`s), with loopback stand-ins for the outside world, plus Lambda's own variables.

So it catches what unit tests cannot: a dependency missing from `layers/common/requirements.txt`,
wheels built for the wrong architecture, a broken `run.sh`, an app that fails to start.

The Makefile runs `sam build --build-dir .aws-sam/build-local --parameter-overrides
Architecture=<local arch>` and exports `SAM_LOCAL_BUILD_DIR`. Without it the test is skipped,
except on CI (`CI=true`) where it fails.
"""

from __future__ import annotations

import base64
import json
import os
import platform
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

import boto3
import httpx
import pytest

import lambda_runtime
from fakes.modelscope import FakeModelScope
from fakes.server import ServerThread, SwappableApp
from imagegw.frontends.local import create_access_table
from lambdahost.events import to_http_request

pytestmark = pytest.mark.e2e

REPO_ROOT = Path(__file__).resolve().parents[2]
EVENTS_DIR = REPO_ROOT / "events"
BUILD_DIR_ENV = "SAM_LOCAL_BUILD_DIR"
FUNCTION = lambda_runtime.FUNCTION
LAYER = lambda_runtime.LAYER
READY_TIMEOUT = 20.0

STAND_INS = lambda_runtime.STAND_INS


@dataclass(frozen=True)
class DeployedApp:
    """The booted build: its base URL and where its output goes."""

    url: str
    log: Path


def _fail_or_skip(reason: str) -> NoReturn:
    if os.environ.get("CI") == "true":
        pytest.fail(reason)
    pytest.skip(reason)


def _build_dir() -> Path:
    value = os.environ.get(BUILD_DIR_ENV)
    if not value:
        _fail_or_skip(
            f"{BUILD_DIR_ENV} is not set: run `make e2e` or `make test` (they run "
            "`sam build --build-dir .aws-sam/build-local --parameter-overrides "
            "Architecture=<local arch>` first)"
        )
    build = Path(value)
    build = build if build.is_absolute() else REPO_ROOT / build
    missing = [
        str(p)
        for p in (build / FUNCTION / "run.sh", build / LAYER / "python", build / "template.yaml")
        if not p.exists()
    ]
    if missing:
        pytest.fail(f"{build} is not a complete `sam build` output; missing: {', '.join(missing)}")
    return build


def _check_architecture(layer_python: Path) -> None:
    """Fail clearly when the layer's compiled wheels are for another machine."""
    machine = {"amd64": "x86_64", "arm64": "aarch64"}.get(platform.machine().lower())
    machine = machine or platform.machine().lower()
    compiled = sorted(layer_python.glob("pydantic_core/_pydantic_core*.so"))
    wrong = [p.name for p in compiled if machine not in p.name]
    if wrong:
        arch = "arm64" if machine == "aarch64" else machine
        pytest.fail(
            f"the layer in {layer_python} was built for another architecture ({wrong[0]}); "
            f"build with `--parameter-overrides Architecture={arch}` to boot it here"
        )


def _lambda_python(tmp: Path) -> Path:
    """A clean 3.13 venv whose site-packages holds only the Lambda runtime's packages."""
    try:
        return lambda_runtime.runtime_python(tmp)
    except RuntimeError as exc:
        pytest.fail(str(exc))


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _lambda_environment(
    build: Path, python_bin: Path, runtime_dir: Path, port: int
) -> dict[str, str]:
    try:
        return lambda_runtime.lambda_environment(build, python_bin, runtime_dir, port)
    except RuntimeError as exc:
        pytest.fail(str(exc))


def _wait_ready(process: subprocess.Popen[bytes], url: str, log: Path) -> None:
    deadline = time.monotonic() + READY_TIMEOUT
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(
                f"run.sh exited with {process.returncode} before /healthz answered:\n"
                f"{log.read_text(errors='replace')[-4000:]}"
            )
        try:
            if httpx.get(f"{url}/healthz", timeout=1.0).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    pytest.fail(
        f"/healthz did not answer 200 within {READY_TIMEOUT:.0f} s:\n"
        f"{log.read_text(errors='replace')[-4000:]}"
    )


def _stop(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM the process group (as Lambda does at shutdown), then SIGKILL it if it lingers.

    Only while the leader is not yet reaped: its pid (the group id) cannot have been reused.
    """
    if process.poll() is not None:
        return
    try:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=5)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=5)


@contextmanager
def booted_build(
    tmp: Path,
    s3_env: dict[str, str],
    provider_url: str,
    extra: dict[str, str] | None = None,
    *,
    stderr: Path | None = None,
) -> Iterator[tuple[str, Path]]:
    """The `sam build` output booted as Lambda boots it (its run.sh, the layer's python/ on
    the path, the Web Adapter's port), with the S3 stand-in and the fake ModelScope at
    `provider_url`: its URL once /healthz answers, and its log (stdout; stderr too unless
    `stderr` is given). Stopped as Lambda stops it on the way out."""
    build = _build_dir()
    _check_architecture(build / LAYER / "python")
    runtime_dir = tmp / "var-runtime"
    runtime_dir.mkdir()
    port = _free_port()
    env = _lambda_environment(build, _lambda_python(tmp), runtime_dir, port)
    env.update(
        {
            "BUCKET": s3_env["BUCKET"],
            "S3_ENDPOINT_URL": s3_env["S3_ENDPOINT_URL"],
            "AWS_ACCESS_KEY_ID": s3_env["AWS_ACCESS_KEY_ID"],
            "AWS_SECRET_ACCESS_KEY": s3_env["AWS_SECRET_ACCESS_KEY"],
            "MODELSCOPE_BASE_URL": provider_url,
            **(extra or {}),
        }
    )
    log = tmp / "function.log"
    url = f"http://127.0.0.1:{port}"
    with log.open("wb") as out, (stderr or Path(os.devnull)).open("wb") as err:
        process = subprocess.Popen(
            [str(build / FUNCTION / "run.sh")],
            cwd=build / FUNCTION,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=err if stderr is not None else subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        _wait_ready(process, url, stderr or log)
        yield url, log
    finally:
        _stop(process)


@pytest.fixture(scope="module")
def deployed_app(
    tmp_path_factory: pytest.TempPathFactory,
    s3_env: dict[str, str],
    _fake_ms_server: tuple[ServerThread, SwappableApp],
) -> Iterator[DeployedApp]:
    tmp = tmp_path_factory.mktemp("lambda")
    with booted_build(tmp, s3_env, f"{_fake_ms_server[0].url}/v1") as (url, log):
        yield DeployedApp(url=url, log=log)


def _model_ids(response: httpx.Response) -> list[str]:
    body = response.json()
    assert body["object"] == "list"
    return [model["id"] for model in body["data"]]


def test_models_are_listed(deployed_app: DeployedApp) -> None:
    # Given the booted build / When a client lists the models
    response = httpx.get(
        f"{deployed_app.url}/v1/models",
        headers={"authorization": "Bearer ms-test-token"},
        timeout=10.0,
    )

    # Then the ModelScope image model is among them
    assert response.status_code == 200, response.text
    assert "Qwen/Qwen-Image" in _model_ids(response)


def test_unknown_path_is_an_openai_error(deployed_app: DeployedApp) -> None:
    # Given the booted build / When a client calls a path that does not exist
    response = httpx.get(f"{deployed_app.url}/nope", timeout=10.0)

    # Then it gets a JSON 404 in the OpenAI error shape
    assert response.status_code == 404
    assert response.headers["content-type"].startswith("application/json")
    error = response.json()["error"]
    assert {"message", "type", "param", "code"} <= set(error)
    assert isinstance(error["message"], str)
    assert error["message"]


@pytest.mark.parametrize("name", ["function-url-models.json", "apigw-rest-models.json"])
def test_models_event_replayed_as_the_adapter_forwards_it(
    deployed_app: DeployedApp, name: str
) -> None:
    # Given a sample Lambda event, turned into the request the Web Adapter sends to the app
    request = to_http_request(json.loads((EVENTS_DIR / name).read_text()))

    # When it is sent to the booted build
    response = httpx.request(
        request.method,
        f"{deployed_app.url}{request.target}",
        headers=request.headers,
        content=request.body,
        timeout=10.0,
    )

    # Then the models are listed, whether the route carries a provider prefix or not
    assert response.status_code == 200, response.text
    assert "Qwen/Qwen-Image" in _model_ids(response)


def test_streamed_edit_event_generates_through_the_build(
    deployed_app: DeployedApp, fake_ms: FakeModelScope
) -> None:
    # Given the Function URL edit event (a data-URI photo), streamed, as the adapter forwards it
    event = json.loads((EVENTS_DIR / "function-url-edit.json").read_text())
    request = to_http_request(event)
    body = {**request.json(), "stream": True}
    headers = {k: v for k, v in request.headers.items() if k != "content-length"}

    # When it is sent to the booted build
    with httpx.stream(
        request.method,
        f"{deployed_app.url}{request.target}",
        headers=headers,
        json=body,
        timeout=30.0,
    ) as response:
        assert response.status_code == 200
        text = "".join(response.iter_text())

    # Then the build uploaded the photo to S3, ModelScope fetched it from the presigned URL,
    # and the streamed answer ends with the edited image and [DONE]
    frames = [f for f in text.split("\n\n") if f]
    assert frames[-1] == "data: [DONE]"
    assert any('"content":"![' in f for f in frames), text[-2000:]
    (task,) = fake_ms.tasks.values()
    photo = next(p for p in request.json()["messages"][-1]["content"] if p["type"] == "image_url")
    assert task.inputs == [base64.b64decode(photo["image_url"]["url"].split(",", 1)[1])]


def _access_table(s3_env: dict[str, str], name: str) -> tuple[Any, dict[str, str]]:
    """A fresh access table and secret on the stand-in's moto server (it serves every AWS
    service); a DynamoDB client on it, and the function's environment that names them."""
    credentials = {
        "region_name": s3_env["AWS_REGION"],
        "endpoint_url": s3_env["S3_ENDPOINT_URL"],
        "aws_access_key_id": s3_env["AWS_ACCESS_KEY_ID"],
        "aws_secret_access_key": s3_env["AWS_SECRET_ACCESS_KEY"],
    }
    dynamodb = boto3.client("dynamodb", **credentials)
    create_access_table(dynamodb, name)
    value = json.dumps({"pepper": "e2e-pepper-" + name, "tokens": {}})
    secret = boto3.client("secretsmanager", **credentials).create_secret(
        Name=name, SecretString=value
    )["ARN"]
    return dynamodb, {
        "ACCESS_TABLE": name,
        "ACCESS_SECRET": secret,
        "AWS_ENDPOINT_URL_DYNAMODB": s3_env["S3_ENDPOINT_URL"],
        "AWS_ENDPOINT_URL_SECRETS_MANAGER": s3_env["S3_ENDPOINT_URL"],
    }


def test_run_times_learned_within_the_write_window_reach_the_table_at_shutdown(
    tmp_path: Path, s3_env: dict[str, str], fake_ms: FakeModelScope
) -> None:
    # Given the build with a reachable access table (the template's default mixed mode)
    dynamodb, access = _access_table(s3_env, "e2e-shutdown-estimates")
    with booted_build(tmp_path, s3_env, fake_ms.base_url, access) as (url, _log):  # type: ignore[attr-defined]
        # When two generations of one model end within a few seconds (the second's run time
        # waits for its key's write window, FLUSH_SECONDS)
        for prompt in ("a red fox", "a blue fox"):
            answer = httpx.post(
                f"{url}/v1/chat/completions",
                json={
                    "model": "Qwen/Qwen-Image",
                    "messages": [{"role": "user", "content": prompt}],
                },
                headers={"authorization": "Bearer ms-test-token"},
                timeout=30.0,
            )
            assert answer.status_code == 200, answer.text
        # and Lambda shuts the instance down (SIGTERM, on leaving `booted_build`)

    # Then the table holds both samples of the model's run time
    found = dynamodb.get_item(
        TableName="e2e-shutdown-estimates",
        Key={"pk": {"S": "estimate#modelscope#Qwen/Qwen-Image#default/std"}},
    )
    assert found["Item"]["samples"] == {"N": "2"}, found.get("Item")


def _sections(path: Path) -> set[str]:
    """The section names of the ELF file at `path` (64-bit, little-endian: Lambda's)."""
    data = path.read_bytes()
    assert data[:4] == b"\x7fELF" and data[4] == 2 and data[5] == 1, path
    shoff = int.from_bytes(data[0x28:0x30], "little")
    size, count, names = (int.from_bytes(data[at : at + 2], "little") for at in (0x3A, 0x3C, 0x3E))

    def header(index: int) -> tuple[int, int]:  # (name offset, file offset of the section)
        at = shoff + index * size
        return int.from_bytes(data[at : at + 4], "little"), int.from_bytes(
            data[at + 0x18 : at + 0x20], "little"
        )

    table = header(names)[1]
    found = set()
    for index in range(count):
        start = table + header(index)[0]
        found.add(data[start : data.index(b"\0", start)].decode())
    return found


@pytest.mark.skipif(
    sys.platform != "linux" or not any(shutil.which(t) for t in ("llvm-strip", "strip")),
    reason="no strip here that reads Lambda's shared objects (layers/common/Makefile)",
)
def test_the_layers_compiled_modules_ship_without_debug_information() -> None:
    # Given the layer as `sam build` made it on a machine with a strip
    layer = _build_dir() / LAYER / "python"
    compiled = sorted(p for p in layer.rglob("*.so*") if p.is_file())
    assert any(p.parent.name == "uvloop" for p in compiled)
    # Then no compiled module carries debug information (uvloop's was 14 of its 16 MB), and
    # each keeps its symbol table (they still import: the other tests boot the build on them)
    for path in compiled:
        sections = _sections(path)
        assert not {s for s in sections if s.startswith(".debug_")}, path.name
        assert ".dynsym" in sections, path.name
