"""A traced job with concurrent provider calls: the task functions with X-Ray tracing on.

Each task function runs from source in a process of its own, as Lambda runs it: LAMBDA_TASK_ROOT
set (Powertools then turns tracing on and the X-Ray SDK uses its Lambda context), a sampled
`_X_AMZN_TRACE_ID`, and AWS_XRAY_DAEMON_ADDRESS pointing at a stand-in daemon on loopback
(`fakes.xray`), with moto's server for S3 and KMS and the fake ModelScope for the provider. A job
with n=2 makes its two submissions, its polls and its result downloads concurrently
(`asyncio.gather`), which is what failed with the X-Ray SDK's httpx patch
(`AlreadyEndedException`: see `imagegw.infra.telemetry`). The deployed version of this is in
tests/aws (the emulator level).
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
from pydantic import SecretStr

from fakes.modelscope import FakeModelScope
from fakes.xray import XRayDaemon, handler_subsegments, http_subsegments
from imagegw.infra.sealer import KeySealer
from imagegw.infra.storage import RESULTS
from lambdahost.invoke import RUNTIME
from lambdahost.process import RuntimeProcess, invoke_once

pytestmark = pytest.mark.e2e

REPO_ROOT = Path(__file__).resolve().parents[2]
TOKEN = "ms-test-token"
TRACE_ROOT = "1-67a1b2c3-0123456789abcdef01234567"
#: Lambda's segment for the invocation; the handler's subsegment hangs under it
LAMBDA_SEGMENT = "53995c3f42cd8ad8"
EVENTS = REPO_ROOT / "events"


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


@pytest.fixture
def daemon() -> Iterator[XRayDaemon]:
    with XRayDaemon() as stand_in_daemon:
        yield stand_in_daemon


def invoke(
    folder: str, event: dict[str, Any], env: dict[str, str], daemon: XRayDaemon, log: Path
) -> tuple[dict[str, Any], str]:
    """Run functions/<folder>/app.py's handler on `event` under Lambda's bootstrap as `make
    invoke` runs it (`lambdahost.runtime`), the invocation sampled; its result and output."""
    root = REPO_ROOT / "functions" / folder
    process_env = {
        **env,
        "_HANDLER": "app.lambda_handler",
        "LAMBDA_TASK_ROOT": str(root),
        "PYTHONPATH": f"{root}:{REPO_ROOT / 'layers' / 'common'}",
        "AWS_XRAY_DAEMON_ADDRESS": daemon.address,
    }
    with log.open("wb") as output:
        runtime = RuntimeProcess([sys.executable, str(RUNTIME)], process_env, root, output)
        ok, result = invoke_once(
            runtime,
            event,
            f"arn:aws:lambda:us-east-1:123456789012:function:{folder}",
            60,
            trace_id=f"Root={TRACE_ROOT};Parent={LAMBDA_SEGMENT};Sampled=1",
        )
    text = log.read_text(errors="replace")
    assert ok, f"{result}\n{text[-4000:]}"
    return result, text


def test_traced_job_with_two_images_succeeds(
    s3_env: dict[str, str], fake_ms: FakeModelScope, daemon: XRayDaemon, tmp_path: Path
) -> None:
    # Given the task functions in Lambda's environment with tracing on, and a job for 2 images
    kms = stand_in("kms", s3_env)
    key_id = kms.create_key()["KeyMetadata"]["Arn"]
    env = {
        "PATH": "/usr/local/bin:/usr/bin:/bin",
        "AWS_REGION": "us-east-1",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_ACCESS_KEY_ID": s3_env["AWS_ACCESS_KEY_ID"],
        "AWS_SECRET_ACCESS_KEY": s3_env["AWS_SECRET_ACCESS_KEY"],
        "AWS_ENDPOINT_URL_KMS": s3_env["S3_ENDPOINT_URL"],
        "AWS_LAMBDA_FUNCTION_NAME": "image-gateway-job",
        "BUCKET": s3_env["BUCKET"],
        "S3_ENDPOINT_URL": s3_env["S3_ENDPOINT_URL"],
        "MODELSCOPE_BASE_URL": fake_ms.base_url,  # type: ignore[attr-defined]
        "ALLOW_PRIVATE_URLS": "true",  # the fake provider's result links are on loopback
        "JOB_KEY_ID": key_id,
        "POWERTOOLS_SERVICE_NAME": "image-gateway",
        "POWERTOOLS_METRICS_DISABLED": "true",
        "PYTHONNOUSERSITE": "1",
        "PYTHONDONTWRITEBYTECODE": "1",
    }
    job = load("job-submit.json")["job"]
    job["n"] = 2
    sealed = KeySealer(key_id, "us-east-1", kms).seal(SecretStr(TOKEN), job["id"])
    outputs: list[str] = []

    # When Submit, Poll (until the tasks end) and Store run it
    progress, output = invoke(
        "job_submit", {"job": job, "key": sealed}, env, daemon, tmp_path / "submit.log"
    )
    outputs.append(output)
    assert progress["status"] == "running", progress
    deadline = time.monotonic() + 20
    while progress["status"] == "running" and time.monotonic() < deadline:
        time.sleep(0.3)
        poll = {"job": job, "key": sealed, "progress": progress}
        progress, output = invoke("job_poll", poll, env, daemon, tmp_path / "poll.log")
        outputs.append(output)
    assert progress["status"] == "succeeded", progress
    result, output = invoke(
        "job_store", {"job": job, "progress": progress}, env, daemon, tmp_path / "store.log"
    )
    outputs.append(output)

    # Then the job made both images, stored in the bucket
    assert len(result["images"]) == 2, result
    s3 = stand_in("s3", s3_env)
    for image in result["images"]:
        stored = s3.get_object(Bucket=s3_env["BUCKET"], Key=RESULTS + image["name"])
        assert stored["Body"].read().startswith(b"\x89PNG")
    assert not any("AlreadyEndedException" in output for output in outputs)

    # And the daemon got each call's trace: the two submissions side by side under Submit's
    # handler subsegment, each poll's requests under its own, the downloads under Store's
    daemon.settle()
    entities = daemon.entities()
    handlers = handler_subsegments(entities)
    assert len(handlers) == len(outputs)
    assert all(h["parent_id"] == LAMBDA_SEGMENT and h["trace_id"] == TRACE_ROOT for h in handlers)
    handler_ids = {h["id"] for h in handlers}
    submits = http_subsegments(entities, "/v1/images/generations")
    assert len(submits) == 2
    assert len({s["parent_id"] for s in submits}) == 1
    assert submits[0]["parent_id"] in handler_ids
    assert all(s["http"]["response"]["status"] == 200 for s in submits)
    polls = http_subsegments(entities, "/v1/tasks/")
    assert len(polls) >= 2
    assert {p["parent_id"] for p in polls} <= handler_ids
    downloads = http_subsegments(entities, "/files/")
    assert len(downloads) == 2
    assert {d["parent_id"] for d in downloads} <= handler_ids
    # the AWS calls too: the key opened with KMS (botocore's), the two images posted to the
    # bucket (plain HTTP requests, each in its own subsegment under Store's handler)
    assert any(e.get("name") == "kms" for e in entities)
    uploads = [
        u
        for u in http_subsegments(entities, f"/{s3_env['BUCKET']}")
        if u["http"]["request"]["method"] == "POST"
    ]
    assert len(uploads) == 2
    assert {u["parent_id"] for u in uploads} <= handler_ids
    assert all(u["http"]["response"]["status"] == 204 for u in uploads)
    # and the provider key is in none of it
    assert TOKEN not in daemon.raw()
