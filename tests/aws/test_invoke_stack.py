"""`make invoke STACK=<name>`, `make events STACK=<name>` and `make env-json STACK=<name>` against
the stack deployed on the emulator (see aws/emulator.py): the stack read with boto3 as a user's
shell reads it (the emulator's endpoint in AWS_ENDPOINT_URL, its dummy credentials), a job
function of the build run on this host against the stack's resources.
"""

from __future__ import annotations

import json
from pathlib import Path

import boto3
import pytest
from pydantic import SecretStr

from aws.emulator import CREDENTIALS, REGION, STACK_NAME, Stack
from e2e.test_deployed_build import _build_dir
from fakes.modelscope import FakeModelScope
from imagegw.infra.sealer import KeySealer
from lambdahost.build import Template
from lambdahost.invoke import Request, invoke
from lambdahost.samples import seal
from lambdahost.stack import env_vars_file, job_key_arn, stack_target
from lambdahost.standins import SAMPLE_TOKEN

pytestmark = pytest.mark.aws

EVENTS = Path(__file__).resolve().parents[2] / "events"


def test_invoke_with_stack_runs_a_job_function_on_the_stacks_resources(
    stack: Stack,
    provider: FakeModelScope,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    # Given a shell pointed at the emulator, as a user's is at AWS
    shell = {"AWS_ENDPOINT_URL": stack.emulator.url, **CREDENTIALS, "AWS_DEFAULT_REGION": REGION}
    for name, value in shell.items():
        monkeypatch.setenv(name, value)
    build = _build_dir()
    template = Template(build)
    target = stack_target(STACK_NAME, template, boto3.session.Session(), shell)

    # When make env-json reads the stack
    entries = env_vars_file(template, target.resolver)

    # Then the job functions' variables name the stack's resources
    kms = stack.emulator.client("kms")
    key_arn = kms.describe_key(KeyId=stack.physical_id("JobKey"))["KeyMetadata"]["Arn"]
    assert entries["JobSubmitFunction"]["JOB_KEY_ID"] == key_arn
    assert entries["JobStoreFunction"]["BUCKET"] == stack.physical_id("UploadsBucket")
    provider_settings = stack.parameters["ProviderSettings"]
    assert entries["JobPollFunction"]["PROVIDER_SETTINGS"] == provider_settings
    assert "ApiFunction" not in entries

    # When make events seals the sample token with the stack's job key, and make invoke runs
    # the Submit function with that copy of its event
    folder = tmp_path_factory.mktemp("invoke-stack")
    sealer = KeySealer(job_key_arn(template, target.resolver), REGION, kms)
    copies = seal(EVENTS, folder / "events", sealer, SecretStr(SAMPLE_TOKEN), keep_current=False)
    (event,) = [p for p in copies if p.name == "job-submit.json"]
    writes: list[bytes] = []
    notes: list[str] = []
    spec = Request("JobSubmitFunction", event, build, runtime_cache=folder / "lambda-python")
    with (folder / "function.log").open("wb") as log:
        status = invoke(spec, target, writes.append, notes.append, log)

    # Then the key opened with the stack's KMS key and the job's task started at the stack's
    # provider
    progress = json.loads(b"".join(writes))
    assert status == 0, (folder / "function.log").read_text()[-3000:]
    assert progress["status"] == "running", progress
    (task,) = progress["tasks"]
    assert task["task_id"] in provider.tasks
    assert STACK_NAME in notes[0]
