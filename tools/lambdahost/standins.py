"""The AWS stand-ins `make invoke` runs functions against: `make run`'s moto server on loopback.

`stand_ins()` is the one way this package gets them: started on first use in this process
(`imagegw.frontends.local.start_s3_stand_in`: moto's server and a bucket), then reused, so a test
session starts them once. Besides the bucket they hold

- the job key: a KMS key whose id and key material are fixed (`LOCAL_JOB_KEY_ID`,
  `LOCAL_JOB_KEY_MATERIAL`), so a provider key sealed with it today (the sample events' `key`,
  written by `make events`) opens in any later stand-in. moto has no API to import key
  material, so it is set on moto's in-process KMS backend after `CreateKey`; a moto upgrade that
  moves it fails loudly here. The material is public: it seals only test tokens, never keep a
  real key sealed with it anywhere but on your machine;
- the job state machine (the repo's ASL file), whose executions are recorded but not run
  (moto's `execute_state_machine` off): the API function's async submissions start one, and the
  job functions are invoked one at a time with their events instead;
- the deployment's webhook secret (Secrets Manager, a fresh random value, as `make run` makes
  it), which the Notify functions sign with.

Every AWS service a function calls is pointed at them (`StandIns.aws_environment`): none is
reached on AWS, and a resource they do not hold is a quick not-found, not a retried connection.
"""

from __future__ import annotations

import hashlib
import logging
import secrets
import threading
from dataclasses import dataclass
from typing import Any, Final

import httpx

from imagegw.frontends.local import (
    LOCAL_ACCOUNT,
    TASKS,
    start_s3_stand_in,
    state_machine_definition,
)

REGION: Final = "us-east-1"
BUCKET: Final = "image-gateway-invoke"
CREDENTIALS: Final = {"AWS_ACCESS_KEY_ID": "local", "AWS_SECRET_ACCESS_KEY": "local"}
#: the sample events' provider key (the fakes' token): what `make events` seals
SAMPLE_TOKEN: Final = "ms-test-token"  # noqa: S105 (a test token, no secret)
LOCAL_JOB_KEY_ID: Final = "00000000-0000-4000-8000-00000000c0de"
LOCAL_JOB_KEY_MATERIAL: Final = hashlib.sha256(
    b"lambda-image-gateway: the local stand-in's job key (public; test tokens only)"
).digest()
STATE_MACHINE_NAME: Final = "image-gateway-invoke-jobs"
WEBHOOK_SECRET_NAME: Final = "image-gateway-invoke-webhooks"  # noqa: S105 (a name, no secret)


@dataclass(frozen=True)
class StandIns:
    """Where the stand-ins are, and the resources in them."""

    endpoint: str
    bucket: str
    key_arn: str
    state_machine_arn: str
    webhook_secret_arn: str = ""
    region: str = REGION

    def aws_environment(self) -> dict[str, str]:
        """What points a function at the stand-ins instead of AWS: its region, the stand-ins'
        dummy credentials, and the endpoints (the AWS SDKs' own variables, and the gateway's
        S3_ENDPOINT_URL), as `make run` sets them."""
        return {
            "AWS_REGION": self.region,
            "AWS_DEFAULT_REGION": self.region,
            **CREDENTIALS,
            "S3_ENDPOINT_URL": self.endpoint,
            "AWS_ENDPOINT_URL_KMS": self.endpoint,
            "AWS_ENDPOINT_URL_SFN": self.endpoint,
            "AWS_ENDPOINT_URL_SECRETS_MANAGER": self.endpoint,
            "AWS_ENDPOINT_URL_DYNAMODB": self.endpoint,
        }

    def client(self, service: str) -> Any:
        """A boto3 client of the stand-ins."""
        import boto3

        return boto3.client(
            service,
            endpoint_url=self.endpoint,
            region_name=self.region,
            aws_access_key_id=CREDENTIALS["AWS_ACCESS_KEY_ID"],
            aws_secret_access_key=CREDENTIALS["AWS_SECRET_ACCESS_KEY"],
        )


_lock = threading.Lock()
_running: StandIns | None = None


def stand_ins() -> StandIns:
    """The stand-ins of this process: started on the first call, the same ones after."""
    global _running
    with _lock:
        if _running is None:
            _running = _start()
        return _running


def _start() -> StandIns:
    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # moto's server: no line a request
    _, env = start_s3_stand_in(BUCKET)
    endpoint = env["S3_ENDPOINT_URL"]
    # executions are recorded, not run (moto's documented server-mode configuration call)
    config = {"stepfunctions": {"execute_state_machine": False}}
    httpx.post(f"{endpoint}/moto-api/config", json=config, timeout=10).raise_for_status()
    partial = StandIns(endpoint, env["BUCKET"], "", "")
    key_arn = _job_key(partial.client("kms"))
    arns = {
        name: f"arn:aws:lambda:{REGION}:{LOCAL_ACCOUNT}:function:invoke-{folder}"
        for name, folder in TASKS.items()
    }
    machine = partial.client("stepfunctions").create_state_machine(
        name=STATE_MACHINE_NAME,
        definition=state_machine_definition(arns),
        roleArn=f"arn:aws:iam::{LOCAL_ACCOUNT}:role/{STATE_MACHINE_NAME}",
        type="STANDARD",
    )
    webhook = partial.client("secretsmanager").create_secret(
        Name=WEBHOOK_SECRET_NAME, SecretString=secrets.token_urlsafe(48)
    )
    return StandIns(endpoint, env["BUCKET"], key_arn, machine["stateMachineArn"], webhook["ARN"])


def _job_key(kms: Any) -> str:
    """The job key with its fixed id and material in moto's (in-process) KMS; its ARN."""
    from moto.kms.models import kms_backends

    backend = kms_backends[LOCAL_ACCOUNT][REGION]
    if LOCAL_JOB_KEY_ID not in backend.keys:
        made = kms.create_key(Description="image-gateway local job key (make invoke)")
        key = backend.keys.pop(made["KeyMetadata"]["KeyId"])
        if not isinstance(getattr(key, "key_material", None), bytes):
            raise RuntimeError("this moto version keeps KMS key material elsewhere; see standins")
        key.id = LOCAL_JOB_KEY_ID
        key.arn = f"arn:aws:kms:{REGION}:{LOCAL_ACCOUNT}:key/{LOCAL_JOB_KEY_ID}"
        key.key_material = LOCAL_JOB_KEY_MATERIAL
        backend.keys[LOCAL_JOB_KEY_ID] = key
    arn: str = kms.describe_key(KeyId=LOCAL_JOB_KEY_ID)["KeyMetadata"]["Arn"]
    return arn
