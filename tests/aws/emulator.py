"""The emulator level's harness: a local AWS emulator on loopback and the stack deployed on it.

- `start_emulator`: localstack-core (its own virtualenv: AWS_EMULATOR_PYTHON) in host mode on a
  free loopback port, its state under `.aws-emulator/` (ignored by git, emptied first), Lambda
  functions run as host processes by `executor/host_executor.py`, their X-Ray segments sent to
  a daemon stand-in (`fakes.xray`). Stopping it stops every process it started: they are one
  process group.
- `deploy_stack`: publishes a stub Web Adapter layer (`executor/web_adapter.py` on
  `lambdahost.adapter`; the public layer lives in another account, which the emulator's free
  edition cannot use), then deploys the `sam build` output for this machine's architecture with
  the project's SAM CLI (SAM_CLI) against the emulator's endpoint.

Nothing leaves loopback; the credentials are the emulator's dummies.
"""

from __future__ import annotations

import contextlib
import io
import os
import shutil
import signal
import subprocess
import time
import zipfile
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import boto3
import httpx
import pytest
import yaml  # type: ignore[import-untyped,unused-ignore]
from botocore.config import Config

from e2e.test_deployed_build import LAYER, _check_architecture, _fail_or_skip
from fakes.xray import XRayDaemon
from lambdahost.adapter import free_port

REPO_ROOT = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
EXECUTOR = HERE / "executor"
#: the Lambda-on-this-host package (`lambdahost`): the executor and the stub adapter use it
TOOLS = REPO_ROOT / "tools"
#: what of it the stub Web Adapter layer carries (standard library only)
ADAPTER_MODULES = ("__init__.py", "adapter.py", "events.py", "runtime.py")
STATE = REPO_ROOT / ".aws-emulator"
REGION = "us-east-1"
STACK_NAME = "imagegw-emulated"
#: the emulator's dummy credentials (its default account is 000000000000)
CREDENTIALS = {"AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test"}
READY_TIMEOUT = 60.0
DEPLOY_TIMEOUT = 300.0
#: resource types the emulator cannot make on this machine, and why. The template has none;
#: `deploy_stack` refuses one rather than deploy half a stack.
DYNAMODB_LOCAL = "its DynamoDB runs DynamoDB Local on Java, downloaded at first use"
CANNOT_MAKE = {"AWS::DynamoDB::Table": DYNAMODB_LOCAL, "AWS::DynamoDB::GlobalTable": DYNAMODB_LOCAL}
#: starts the emulator so that it is killed should the test process die without stopping it,
#: whatever killed that (Linux's parent-death signal, kept across exec); the functions' processes
#: then end with their input
LAUNCH = (
    "import ctypes, os, signal, sys\n"
    "if sys.platform == 'linux': ctypes.CDLL(None).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG\n"
    "os.execv(sys.executable, [sys.executable, '-m', 'localstack.runtime.main'])"
)
#: parameters of the deployment besides the architecture, the stub layer and the provider URL
PARAMETERS = {
    "JobPollInterval": "1",  # the fake provider finishes a task in 0.3 s
    "JobTimeout": "60",
    # open: no gateway-key table (the emulator cannot make DynamoDB tables) nor secret; gateway
    # keys are proven on moto's DynamoDB and Secrets Manager instead (tests/functional)
    "AccessMode": "open",
}
#: resource conditions that are false for PARAMETERS (those resources are not made)
FALSE_CONDITIONS = {"AccessEnabled"}


@dataclass
class Emulator:
    url: str
    daemon: XRayDaemon
    log: Path
    function_logs: Path

    def client(self, service: str) -> Any:
        return boto3.client(
            service,
            endpoint_url=self.url,
            region_name=REGION,
            config=Config(retries={"max_attempts": 2, "mode": "standard"}),
            aws_access_key_id=CREDENTIALS["AWS_ACCESS_KEY_ID"],
            aws_secret_access_key=CREDENTIALS["AWS_SECRET_ACCESS_KEY"],
        )

    def functions_output(self) -> str:
        """Everything the deployed functions printed (the host executor's log files)."""
        return "\n".join(p.read_text(errors="replace") for p in self.function_logs.glob("*.log"))

    def tail(self, chars: int = 4000) -> str:
        return self.log.read_text(errors="replace")[-chars:]


@dataclass
class Stack:
    template: dict[str, Any]
    parameters: dict[str, str]
    outputs: dict[str, str]
    resources: list[dict[str, Any]]
    emulator: Emulator

    def physical_id(self, logical_id: str) -> str:
        (resource,) = [r for r in self.resources if r["LogicalResourceId"] == logical_id]
        physical: str = resource["PhysicalResourceId"]
        return physical

    def function_url(self) -> httpx.Client:
        """A client of the Function URL. The emulator routes by the URL's host name, which needs
        DNS (*.localhost.localstack.cloud): the client connects to the emulator on loopback and
        sends that host name in the Host header instead."""
        host = urlsplit(self.outputs["FunctionUrl"]).netloc
        return httpx.Client(base_url=self.emulator.url, headers={"host": host}, timeout=60)


# ------------------------------------------------------------------------------ emulator


def emulator_python() -> Path:
    value = os.environ.get("AWS_EMULATOR_PYTHON")
    if not value:
        _fail_or_skip(
            "AWS_EMULATOR_PYTHON is not set: run `make test-aws` (it installs the emulator "
            "into .venv-aws and builds the stack for this machine)"
        )
    python = Path(value)
    return python if python.is_absolute() else REPO_ROOT / python


def _environment(port: int, runtime_python: Path, daemon: XRayDaemon) -> dict[str, str]:
    for folder in ("filesystem", "cache", "tmp", "home", "functions"):
        (STATE / folder).mkdir(parents=True)
    return {
        "PATH": "/usr/local/bin:/usr/bin:/bin",
        "HOME": str(STATE / "home"),
        "LANG": "C.UTF-8",
        # host mode, with every file under STATE (else it writes to system folders)
        "OVERRIDE_IN_DOCKER": "0",
        "FILESYSTEM_ROOT": str(STATE / "filesystem"),
        "XDG_CACHE_HOME": str(STATE / "cache"),
        "TMPDIR": str(STATE / "tmp"),
        # loopback only (its default server binds 0.0.0.0 whatever GATEWAY_LISTEN says), no DNS
        # server, no analytics events, no certificate download
        "GATEWAY_SERVER": "hypercorn",
        "GATEWAY_LISTEN": f"127.0.0.1:{port}",
        "DNS_ADDRESS": "0",
        "DISABLE_EVENTS": "1",
        "SKIP_SSL_CERT_DOWNLOAD": "1",
        # Lambda functions as host processes (executor/host_executor.py)
        "PYTHONPATH": f"{EXECUTOR}:{TOOLS}",
        "LAMBDA_RUNTIME_EXECUTOR": "host",
        "HOST_EXECUTOR_PYTHON": str(runtime_python),
        "HOST_EXECUTOR_LOG_DIR": str(STATE / "functions"),
        "HOST_EXECUTOR_XRAY_DAEMON": daemon.address,
    }


def _wait_ready(process: subprocess.Popen[bytes], url: str, log: Path) -> None:
    deadline = time.monotonic() + READY_TIMEOUT
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"the emulator exited ({process.returncode}):\n{log.read_text()[-4000:]}")
        try:
            if httpx.get(f"{url}/_localstack/health", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    pytest.fail(f"the emulator was not ready in {READY_TIMEOUT:.0f} s:\n{log.read_text()[-4000:]}")


def _stop(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM the emulator's process group (the emulator, the functions' processes and what
    they started), wait for the emulator, then SIGKILL what is left of the group. (A group's id
    is not given to a new process while a member of the group lives.)"""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    with contextlib.suppress(subprocess.TimeoutExpired):
        process.wait(timeout=10)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
    process.wait(timeout=5)


@contextmanager
def start_emulator(runtime_python: Path) -> Iterator[Emulator]:
    """The emulator, ready; stopped with all it started on leaving, whatever happened."""
    python = emulator_python()
    shutil.rmtree(STATE, ignore_errors=True)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log = STATE / "emulator.log"
    with XRayDaemon() as daemon:
        env = _environment(port, runtime_python, daemon)
        with log.open("wb") as out:
            process = subprocess.Popen(
                [str(python), "-c", LAUNCH],
                cwd=STATE,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        try:
            _wait_ready(process, url, log)
            yield Emulator(url, daemon, log, STATE / "functions")
        finally:
            _stop(process)


# ------------------------------------------------------------------------------ stack


def publish_stub_layer(emulator: Emulator, architecture: str) -> str:
    """Publish the stub Web Adapter layer (`bootstrap` and what it imports); its ARN."""
    archive = io.BytesIO()
    with zipfile.ZipFile(archive, "w") as layer:
        bootstrap = zipfile.ZipInfo("bootstrap")
        bootstrap.external_attr = 0o755 << 16
        layer.writestr(bootstrap, (EXECUTOR / "web_adapter.py").read_text())
        for name in ADAPTER_MODULES:
            layer.write(TOOLS / "lambdahost" / name, f"lambdahost/{name}")
    answer = emulator.client("lambda").publish_layer_version(
        LayerName="web-adapter-stub",
        Description="Stand-in for the Lambda Web Adapter (tests/aws/executor/web_adapter.py)",
        Content={"ZipFile": archive.getvalue()},
        CompatibleRuntimes=["python3.13"],
        CompatibleArchitectures=[architecture],
    )
    arn: str = answer["LayerVersionArn"]
    return arn


def _sam() -> Path:
    sam = Path(os.environ.get("SAM_CLI", REPO_ROOT / ".venv-sam" / "bin" / "sam"))
    sam = sam if sam.is_absolute() else REPO_ROOT / sam
    if not sam.exists():
        pytest.fail(f"no SAM CLI at {sam}: run `make test-aws` (it installs it into .venv-sam)")
    return sam


class DeployError(Exception):
    """`sam deploy` failed; the message says what SAM, CloudFormation and the emulator said."""


def _sam_deploy(
    emulator: Emulator, build: Path, stack_name: str, parameters: Mapping[str, str]
) -> None:
    bucket = "sam-artifacts"
    emulator.client("s3").create_bucket(Bucket=bucket)  # (the same again answers 200 here)
    command = [
        str(_sam()),
        "deploy",
        "--config-file",
        str(HERE / "samconfig.toml"),
        "--template-file",
        str(build / "template.yaml"),
        "--stack-name",
        stack_name,
        "--s3-bucket",
        bucket,
        "--region",
        REGION,
        "--no-progressbar",
        "--parameter-overrides",
        *(f"{key}={value}" for key, value in parameters.items()),
    ]
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(STATE / "home"),
        "LANG": "C.UTF-8",
        "AWS_ENDPOINT_URL": emulator.url,
        "AWS_DEFAULT_REGION": REGION,
        "AWS_EC2_METADATA_DISABLED": "true",
        "SAM_CLI_TELEMETRY": "0",
        **CREDENTIALS,
    }
    answer = subprocess.run(
        command,
        cwd=REPO_ROOT,
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=DEPLOY_TIMEOUT,
        check=False,
    )
    if answer.returncode != 0:
        raise DeployError(
            f"sam deploy failed ({answer.returncode}):\n{answer.stdout[-3000:]}\n"
            f"{answer.stderr[-3000:]}\nfailed resources: {_failures(emulator, stack_name)}\n"
            f"{emulator.tail()}"
        )


def _failures(emulator: Emulator, stack_name: str) -> list[str]:
    try:
        events = emulator.client("cloudformation").describe_stack_events(StackName=stack_name)
    except Exception as exc:  # no stack at all: the change set was refused
        return [str(exc)]
    return [
        f"{e['LogicalResourceId']} {e['ResourceStatus']}: {e.get('ResourceStatusReason')}"
        for e in events["StackEvents"]
        if e["ResourceStatus"].endswith("FAILED")
    ]


def _check_supported(template: Mapping[str, Any]) -> None:
    unsupported = {
        name: CANNOT_MAKE[resource["Type"]]
        for name, resource in template["Resources"].items()
        if resource["Type"] in CANNOT_MAKE and resource.get("Condition") not in FALSE_CONDITIONS
    }
    if unsupported:
        pytest.fail(
            f"the emulator cannot make {sorted(unsupported)} here ({set(unsupported.values())}): "
            "deploy a template without them, and say what this level then does not prove"
        )


def _allow_loopback_fetches(emulator: Emulator, functions: list[str]) -> None:
    """ALLOW_PRIVATE_URLS=true on the functions: the fake provider's result links are on
    loopback, which the gateway refuses by default (a real provider's links are public)."""
    client = emulator.client("lambda")
    for name in functions:
        config = client.get_function_configuration(FunctionName=name)
        variables = {**config.get("Environment", {}).get("Variables", {})}
        variables["ALLOW_PRIVATE_URLS"] = "true"
        client.update_function_configuration(
            FunctionName=name, Environment={"Variables": variables}
        )
        client.get_waiter("function_updated_v2").wait(
            FunctionName=name, WaiterConfig={"Delay": 1, "MaxAttempts": 60}
        )


def local_architecture() -> str:
    return "arm64" if os.uname().machine in ("aarch64", "arm64") else "x86_64"


def deploy_stack(
    emulator: Emulator,
    build: Path,
    provider_url: str,
    stack_name: str = STACK_NAME,
    overrides: Mapping[str, str] | None = None,
) -> Stack:
    """Deploy `build` (a `sam build` output for this machine) as `stack_name`, its ModelScope
    base URL `provider_url`, PARAMETERS and `overrides` its parameters; the stack as
    CloudFormation describes it. Raises DeployError when `sam deploy` fails."""
    _check_architecture(build / LAYER / "python")
    template: dict[str, Any] = yaml.safe_load((build / "template.yaml").read_text())
    _check_supported(template)
    architecture = local_architecture()
    parameters = {
        "Architecture": architecture,
        "WebAdapterLayerArn": publish_stub_layer(emulator, architecture),
        "ProviderSettings": f"MODELSCOPE_BASE_URL={provider_url}",
        **PARAMETERS,
        **(overrides or {}),
    }
    _sam_deploy(emulator, build, stack_name, parameters)
    cloudformation = emulator.client("cloudformation")
    (described,) = cloudformation.describe_stacks(StackName=stack_name)["Stacks"]
    resources = cloudformation.list_stack_resources(StackName=stack_name)["StackResourceSummaries"]
    _allow_loopback_fetches(
        emulator,
        [
            r["PhysicalResourceId"]
            for r in resources
            if r["ResourceType"] == "AWS::Lambda::Function"
        ],
    )
    return Stack(
        template=template,
        parameters=parameters,
        outputs={o["OutputKey"]: o["OutputValue"] for o in described.get("Outputs", [])},
        resources=resources,
        emulator=emulator,
    )
