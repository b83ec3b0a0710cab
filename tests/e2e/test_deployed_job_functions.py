"""Run the `sam build` output of the job task functions the way Lambda runs them.

Like `test_deployed_build.py` (whose build and runtime helpers this uses): a clean Python 3.13
whose site-packages holds only what the Lambda runtime ships, the built layer where /opt/python
would be, and the function's own folder as the task root. Each handler gets its events/ file
(with the dynamic parts filled in) on stdin, with moto's server on loopback standing in for S3
and KMS and the fake ModelScope for the provider. So it catches what the in-process tests cannot:
a dependency of the task functions missing from the layer (aws-xray-sdk for the Tracer), a
handler that does not import outside the source tree, a build without the job functions.
"""

from __future__ import annotations

import json
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3
import pytest
from pydantic import SecretStr

from e2e.test_deployed_build import LAYER, _build_dir, _check_architecture, _lambda_python
from fakes.modelscope import FakeModelScope
from fakes.png import make_png
from imagegw.jobs.keys import KeySealer
from imagegw.storage import RESULTS

pytestmark = pytest.mark.e2e

TOKEN = "ms-test-token"
EVENTS = Path(__file__).resolve().parents[2] / "events"
MARK = "RESULT:"
# the Lambda runtime's part: import the task root's handler and call it with a context
DRIVER = f"""
import json, sys
from app import lambda_handler

class Context:
    function_name = "image-gateway-job"
    memory_limit_in_mb = 256
    invoked_function_arn = "arn:aws:lambda:us-east-1:123456789012:function:image-gateway-job"
    aws_request_id = "e2e-request"

print("{MARK}" + json.dumps(lambda_handler(json.load(sys.stdin), Context())))
"""


@dataclass(frozen=True)
class BuiltFunctions:
    build: Path
    python: Path
    env: dict[str, str]

    def invoke(self, function: str, event: dict[str, Any]) -> dict[str, Any]:
        root = self.build / function
        answer = subprocess.run(
            [str(self.python), "-c", DRIVER],
            cwd=root,
            env={**self.env, "LAMBDA_TASK_ROOT": str(root), "PYTHONPATH": self._path(root)},
            input=json.dumps(event),
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        lines = [line for line in answer.stdout.splitlines() if line.startswith(MARK)]
        assert answer.returncode == 0 and lines, answer.stdout[-3000:] + answer.stderr[-3000:]
        result: dict[str, Any] = json.loads(lines[-1].removeprefix(MARK))
        return result

    def _path(self, root: Path) -> str:
        return f"{root}:{self.build / LAYER / 'python'}"


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory, s3_env: dict[str, str]) -> BuiltFunctions:
    build = _build_dir()
    _check_architecture(build / LAYER / "python")
    for function in ("JobSubmitFunction", "JobPollFunction", "JobStoreFunction"):
        if not (build / function / "app.py").exists():
            pytest.fail(f"{build} has no {function}: the build lacks the job task functions")
    python = _lambda_python(tmp_path_factory.mktemp("job-lambda")) / "python"
    endpoint = s3_env["S3_ENDPOINT_URL"]
    env = {
        "PATH": "/usr/local/bin:/usr/bin:/bin",
        "AWS_REGION": "us-east-1",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_ACCESS_KEY_ID": s3_env["AWS_ACCESS_KEY_ID"],
        "AWS_SECRET_ACCESS_KEY": s3_env["AWS_SECRET_ACCESS_KEY"],
        "AWS_ENDPOINT_URL_KMS": endpoint,
        "AWS_EXECUTION_ENV": "AWS_Lambda_python3.13",
        "AWS_LAMBDA_FUNCTION_NAME": "image-gateway-job",
        "BUCKET": s3_env["BUCKET"],
        "S3_ENDPOINT_URL": endpoint,
        "JOB_KEY_ID": stand_in("kms", s3_env).create_key()["KeyMetadata"]["Arn"],
        "POWERTOOLS_SERVICE_NAME": "image-gateway",
        "POWERTOOLS_METRICS_NAMESPACE": "ImageGateway",
        # no X-Ray daemon here (the SDK is still imported: the Tracer is built)
        "POWERTOOLS_TRACE_DISABLED": "true",
        "PYTHONNOUSERSITE": "1",
        "PYTHONDONTWRITEBYTECODE": "1",
    }
    return BuiltFunctions(build, python, env)


def load(name: str) -> dict[str, Any]:
    event: dict[str, Any] = json.loads((EVENTS / name).read_text())
    return event


def stand_in(service: str, s3_env: dict[str, str]) -> Any:
    """A client of the session's moto server (it serves KMS as well as S3)."""
    return boto3.client(
        service,
        endpoint_url=s3_env["S3_ENDPOINT_URL"],
        region_name="us-east-1",
        aws_access_key_id=s3_env["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=s3_env["AWS_SECRET_ACCESS_KEY"],
    )


def sealed(built: BuiltFunctions, event: dict[str, Any], s3_env: dict[str, str]) -> dict[str, Any]:
    sealer = KeySealer(built.env["JOB_KEY_ID"], "us-east-1", stand_in("kms", s3_env))
    return {**event, "key": sealer.seal(SecretStr(TOKEN), event["job"]["id"])}


def test_submit_and_poll_functions_run_a_task(
    built: BuiltFunctions, s3_env: dict[str, str], fake_ms: FakeModelScope
) -> None:
    # Given the built Submit and Poll functions, pointed at the fake ModelScope
    env = {**built.env, "MODELSCOPE_BASE_URL": fake_ms.base_url}  # type: ignore[attr-defined]
    functions = BuiltFunctions(built.build, built.python, env)

    # When Submit runs its sample event, then Poll until the task is over
    progress = functions.invoke("JobSubmitFunction", sealed(built, load("job-submit.json"), s3_env))
    assert progress["status"] == "running", progress
    (task,) = progress["tasks"]
    assert task["task_id"] in fake_ms.tasks
    poll = sealed(built, load("job-poll.json"), s3_env)
    deadline = time.monotonic() + 20
    while progress["status"] == "running" and time.monotonic() < deadline:
        time.sleep(0.3)
        progress = functions.invoke("JobPollFunction", {**poll, "progress": progress})

    # Then the task succeeded with the provider's image
    assert progress["status"] == "succeeded", progress
    assert progress["tasks"][0]["images"][0]["url"]


def test_store_function_copies_the_image(
    built: BuiltFunctions, s3_env: dict[str, str], fake_ms: FakeModelScope
) -> None:
    # Given the Store event, its image served by the fake provider
    png = make_png(40, 30)
    path = fake_ms.add_file("built.png", png)
    event = load("job-store.json")
    base = fake_ms.base_url.removesuffix("/v1")  # type: ignore[attr-defined]
    event["progress"]["tasks"][0]["images"] = [{"name": None, "url": f"{base}{path}"}]

    # When the built Store function runs it (the provider's host is the configured one: its
    # result links are trusted though on loopback)
    env = {**built.env, "MODELSCOPE_BASE_URL": fake_ms.base_url}  # type: ignore[attr-defined]
    output = BuiltFunctions(built.build, built.python, env).invoke("JobStoreFunction", event)

    # Then the image is in the bucket under images/
    (image,) = output["images"]
    s3 = stand_in("s3", s3_env)
    stored = s3.get_object(Bucket=s3_env["BUCKET"], Key=RESULTS + image["name"])["Body"].read()
    assert stored == png
