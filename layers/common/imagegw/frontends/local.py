"""`make run`: serve the gateway on http://127.0.0.1:8000 with AWS stand-ins in their own process.

Without `BUCKET` (and AWS credentials), a moto server is started on loopback and a bucket is
made in it, so uploads and presigned URLs work with no AWS account. With `BUCKET` set, the real
bucket is used. `HOST` and `PORT` choose where to listen.

Durable jobs (docs/jobs.md "Async jobs") run too, unless `JOB_STATE_MACHINE_ARN` names a real state
machine: the same moto server runs the repo's ASL file (`statemachine/image_job.asl.json`) on
moto's Step Functions interpreter (`execute_state_machine`), seals provider keys with moto's
KMS, and its Lambda tasks are dispatched to the real task handlers (`functions/job_*/app.py`)
by `LocalLambdas`, in place of moto's own Lambda (which needs Docker). The gateway reaches the
stand-ins through the AWS SDKs' standard `AWS_ENDPOINT_URL_SFN` and `AWS_ENDPOINT_URL_KMS`
variables.

The stand-ins (moto, and the task handlers it runs, as Lambda would run them elsewhere) live in a
child process (`python -m imagegw.frontends.local --stand-ins`), so the gateway's process holds
only what it holds on Lambda: its memory and CPU figures are its own. The child prints the
environment that points at the stand-ins as one JSON line, then serves until the gateway closes
its stdin (the gateway exits, however it exits).
"""

from __future__ import annotations

import functools
import importlib.util
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

import httpx

if TYPE_CHECKING:
    from imagegw.infra.localstate import LocalState

#: the repository's root, where `make run` runs (the functions and the ASL file live there)
REPO_ROOT: Final = Path(__file__).resolve().parents[4]
ASL_FILE: Final = REPO_ROOT / "statemachine" / "image_job.asl.json"
#: the Batch API's state machine: a Distributed Map whose items run the job's states
BATCH_ASL_FILE: Final = REPO_ROOT / "statemachine" / "image_batch.asl.json"
FUNCTIONS_DIR: Final = REPO_ROOT / "functions"
#: the ASL file's DefinitionSubstitutions -> the function folder of each task
TASKS: Final = {
    "JobSubmitFunctionArn": "job_submit",
    "JobPollFunctionArn": "job_poll",
    "JobStoreFunctionArn": "job_store",
    "BatchStepFunctionArn": "batch_step",
    "JobNotifyFunctionArn": "job_notify",
}
LOCAL_ACCOUNT: Final = "123456789012"
LOCAL_REGION: Final = "us-east-1"
Handler = Callable[[dict[str, Any], Any], Any]


class MotoServer:
    """moto's server app (every mocked service, as `moto_server` serves them) under uvicorn on
    a loopback port, in a daemon thread.

    Not moto's `ThreadedMotoServer`: that runs werkzeug's development server, which answers
    every request with `Connection: close` and starts a thread per connection, where AWS's
    endpoints keep HTTP/1.1 connections alive (the AWS SDKs reuse them by default). A gateway
    that pools its connections to the bucket would otherwise pay a connect per upload and the
    stand-in a thread per request: costs a real bucket does not have (issue 25). moto's WSGI
    app runs in a2wsgi's worker threads; uvicorn keeps the connections (5 s idle)."""

    def __init__(self) -> None:
        import uvicorn
        from a2wsgi import WSGIMiddleware
        from moto.moto_server.werkzeug_app import DomainDispatcherApplication, create_backend_app

        # IPPROTO_TCP, not 0: asyncio sets TCP_NODELAY on accepted connections only then;
        # without it a kept connection's answer can wait ~40 ms for a delayed ACK
        self._socket = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        self._socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._socket.bind(("127.0.0.1", 0))
        self.port: int = self._socket.getsockname()[1]
        moto_app: Any = DomainDispatcherApplication(create_backend_app)  # WSGI, typed loosely
        app = WSGIMiddleware(moto_app, workers=16)
        config = uvicorn.Config(
            app,
            interface="asgi3",
            log_level="warning",
            access_log=False,
            ws="none",
            lifespan="off",
            timeout_graceful_shutdown=1,
        )
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(
            target=self._server.run,
            kwargs={"sockets": [self._socket]},
            name=f"moto-{self.port}",
            daemon=True,
        )

    def start(self, timeout: float = 10.0) -> None:
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the moto server did not start")
            time.sleep(0.005)

    def stop(self) -> None:
        self._server.should_exit = True
        self._thread.join(5.0)
        self._socket.close()


def start_moto() -> tuple[MotoServer, str]:
    """Start a moto server on loopback; the server and its endpoint URL."""
    server = MotoServer()
    # where moto's Step Functions reaches its own services from a Distributed Map's ItemReader
    # and ResultWriter (`moto.settings.moto_server_port`; else port 5000)
    os.environ["MOTO_PORT"] = str(server.port)
    server.start()
    return server, f"http://127.0.0.1:{server.port}"


def start_s3_stand_in(bucket: str = "image-gateway-local") -> tuple[Any, dict[str, str]]:
    """Start moto's S3 server on loopback with one bucket; the server and the env to use it."""
    import boto3

    server, endpoint = start_moto()
    env = {
        "BUCKET": bucket,
        "S3_ENDPOINT_URL": endpoint,
        "AWS_ACCESS_KEY_ID": "local",
        "AWS_SECRET_ACCESS_KEY": "local",
        "AWS_REGION": "us-east-1",
    }
    boto3.client(
        "s3",
        endpoint_url=env["S3_ENDPOINT_URL"],
        region_name="us-east-1",
        aws_access_key_id="local",
        aws_secret_access_key="local",  # noqa: S106
    ).create_bucket(Bucket=bucket)
    return server, env


def state_machine_definition(arns: Mapping[str, str], path: Path = ASL_FILE) -> str:
    """The ASL file with its `DefinitionSubstitutions` filled in, as SAM does on deploy."""
    text = path.read_text()
    for name, value in arns.items():
        text = text.replace("${" + name + "}", value)
    if "${" in text:
        raise ValueError(f"{path} has a substitution no value was given for")
    return text


def load_task_handlers(functions_dir: Path = FUNCTIONS_DIR) -> dict[str, Handler]:
    """The real task handlers (`functions/job_*/app.py`), by the ASL substitution that names
    each task's function."""
    handlers: dict[str, Handler] = {}
    for substitution, folder in TASKS.items():
        path = functions_dir / folder / "app.py"
        spec = importlib.util.spec_from_file_location(f"imagegw_local_{folder}", path)
        if spec is None or spec.loader is None:
            raise FileNotFoundError(path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        handlers[substitution] = module.lambda_handler
    return handlers


@dataclass
class LocalContext:
    """The Lambda context a handler gets (what Powertools reads of it)."""

    function_name: str
    invoked_function_arn: str
    memory_limit_in_mb: int = 256
    function_version: str = "$LATEST"
    aws_request_id: str = field(default_factory=lambda: str(uuid.uuid4()))
    log_group_name: str = "/aws/lambda/local"
    log_stream_name: str = "local"
    deadline: float = field(default_factory=lambda: time.monotonic() + 900)

    def get_remaining_time_in_millis(self) -> int:
        return max(0, int((self.deadline - time.monotonic()) * 1000))


class LocalLambdas:
    """Lambda's synchronous Invoke, in this process, for the state machine's tasks: each
    function ARN runs its real handler, and a handler's exception becomes a function error
    whose type is the exception's class name, as the Lambda Python runtime reports it (so the
    ASL `Retry` sees `TransientJobError`)."""

    def __init__(self, handlers: Mapping[str, Handler]) -> None:
        self.handlers = dict(handlers)
        self.calls: list[tuple[str, dict[str, Any]]] = []

    def invoke(self, function_arn: str, payload: bytes | str | None) -> dict[str, Any]:
        handler = self.handlers.get(function_arn)
        if handler is None:
            raise LookupError(f"no local handler for {function_arn}")
        event = json.loads(payload or "{}")
        self.calls.append((function_arn, event))
        context = LocalContext(function_arn.rsplit(":", 1)[-1], function_arn)
        try:
            result = handler(event, context)
        except Exception as exc:
            error = {"errorMessage": str(exc), "errorType": type(exc).__name__, "stackTrace": []}
            return {"StatusCode": 200, "FunctionError": "Unhandled", "Payload": error}
        return {"StatusCode": 200, "Payload": json.loads(json.dumps(result))}

    def moto_invoke(
        self, parameters: Mapping[str, Any], region: str, state_credentials: Any
    ) -> dict[str, Any]:
        """The seam moto's Step Functions interpreter calls for a Lambda task (moto 5.2:
        `...state_task.lambda_eval_utils._invoke_lambda_function`); it answers like Invoke,
        with the payload already parsed."""
        return self.invoke(str(parameters["FunctionName"]), parameters.get("Payload"))


def function_arns(region: str = LOCAL_REGION) -> dict[str, str]:
    """Made-up function ARNs of the tasks, by ASL substitution."""
    return {
        name: f"arn:aws:lambda:{region}:{LOCAL_ACCOUNT}:function:image-gateway-{folder}"
        for name, folder in TASKS.items()
    }


def install_lambda_dispatch(lambdas: LocalLambdas) -> None:
    """Make moto's Step Functions run Lambda tasks through `lambdas` (for the whole process)."""
    from moto.stepfunctions.parser.asl.component.state.exec.state_task import lambda_eval_utils

    if not hasattr(lambda_eval_utils, "_invoke_lambda_function"):
        raise RuntimeError("this moto version has no Lambda task seam to dispatch in-process")
    lambda_eval_utils._invoke_lambda_function = lambdas.moto_invoke


def start_jobs_stand_in(endpoint: str, region: str = LOCAL_REGION) -> dict[str, str]:
    """Durable jobs on the moto server at `endpoint`: its Step Functions runs the ASL file
    (tasks dispatched in-process to the real handlers) and its KMS seals provider keys. The
    env that points the gateway and the handlers at them."""
    import secrets

    import boto3

    # moto's parser warns that its interpreter ignores the batch map's ToleratedFailurePercentage
    # (its items never fail: docs/batches.md "Running locally"): no news on make run's console
    logging.getLogger("moto.stepfunctions.parser.asl.parse.preprocessor").setLevel(logging.ERROR)
    config = {"stepfunctions": {"execute_state_machine": True}, "lambda": {"use_docker": False}}
    # moto's documented server-mode configuration call
    httpx.post(f"{endpoint}/moto-api/config", json=config, timeout=10).raise_for_status()
    arns = function_arns(region)
    handlers = load_task_handlers()
    install_lambda_dispatch(LocalLambdas({arns[name]: h for name, h in handlers.items()}))
    credentials = {
        "region_name": region,
        "endpoint_url": endpoint,
        "aws_access_key_id": os.environ.get("AWS_ACCESS_KEY_ID") or "local",
        "aws_secret_access_key": os.environ.get("AWS_SECRET_ACCESS_KEY") or "local",
    }
    key = boto3.client("kms", **credentials).create_key(Description="image-gateway local job key")
    sfn = boto3.client("stepfunctions", **credentials)
    machine = sfn.create_state_machine(
        name="image-gateway-jobs",
        definition=state_machine_definition(arns),
        roleArn=f"arn:aws:iam::{LOCAL_ACCOUNT}:role/image-gateway-jobs",
        type="STANDARD",
    )
    batches = sfn.create_state_machine(
        name="image-gateway-batches",
        definition=state_machine_definition(
            {**arns, "BatchBucket": os.environ.get("BUCKET", "")}, BATCH_ASL_FILE
        ),
        roleArn=f"arn:aws:iam::{LOCAL_ACCOUNT}:role/image-gateway-batches",
        type="STANDARD",
    )
    # the deployment's webhook secret (README "Webhooks"), fresh for each run
    webhook = boto3.client("secretsmanager", **credentials).create_secret(
        Name=f"image-gateway-webhooks-{uuid.uuid4().hex[:8]}",
        SecretString=secrets.token_urlsafe(48),
    )
    return {
        "JOB_STATE_MACHINE_ARN": machine["stateMachineArn"],
        "BATCH_STATE_MACHINE_ARN": batches["stateMachineArn"],
        "JOB_KEY_ID": key["KeyMetadata"]["Arn"],
        "WEBHOOK_SECRET": webhook["ARN"],
        "AWS_ENDPOINT_URL_SECRETS_MANAGER": endpoint,
        "AWS_ENDPOINT_URL_SFN": endpoint,
        "AWS_ENDPOINT_URL_KMS": endpoint,
    }


#: where `make run` tells the owner commands (`python -m imagegw.frontends.admin`) its stand-ins are
#: (IMAGEGW_LOCAL_ACCESS_FILE elsewhere)
LOCAL_ACCESS_FILE: Final = Path(
    os.environ.get("IMAGEGW_LOCAL_ACCESS_FILE") or REPO_ROOT / ".aws-sam" / "local-access.json"
)


def create_access_table(dynamodb: Any, table: str) -> None:
    """The access table as the template declares it (key `pk`, on demand, TTL `expires_at`),
    with the DynamoDB client `dynamodb` (moto's here and in the tests)."""
    dynamodb.create_table(
        TableName=table,
        AttributeDefinitions=[{"AttributeName": "pk", "AttributeType": "S"}],
        KeySchema=[{"AttributeName": "pk", "KeyType": "HASH"}],
        BillingMode="PAY_PER_REQUEST",
    )
    dynamodb.update_time_to_live(
        TableName=table,
        TimeToLiveSpecification={"Enabled": True, "AttributeName": "expires_at"},
    )


#: the moto DynamoDB calls that change items, one at a time (`serialize_dynamodb_writes`)
_WRITES: Final = (
    "put_item",
    "update_item",
    "delete_item",
    "transact_write_items",
    "batch_write_item",
)


def serialize_dynamodb_writes() -> None:
    """Make moto's DynamoDB run its writes one at a time, as DynamoDB runs the writes to one
    item: moto's server answers each request in a thread of its own, and its `update_item`
    reads, checks the condition and writes without a lock, so concurrent conditional updates
    (a key's quota reserved by 50 requests at once) could all pass the check. One lock for
    every write of the process; idempotent."""
    from moto.dynamodb.models import DynamoDBBackend

    if getattr(DynamoDBBackend, "_imagegw_serialized", False):
        return
    lock = threading.RLock()

    def serialized(write: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(write)
        def one_at_a_time(*args: Any, **kwargs: Any) -> Any:
            with lock:
                return write(*args, **kwargs)

        return one_at_a_time

    for name in _WRITES:
        setattr(DynamoDBBackend, name, serialized(getattr(DynamoDBBackend, name)))
    DynamoDBBackend._imagegw_serialized = True  # type: ignore[attr-defined]


def start_access_stand_in(
    endpoint: str, region: str = LOCAL_REGION, kept: LocalState | None = None
) -> dict[str, str]:
    """Gateway keys on the moto server at `endpoint` (README "Sharing a deployment"): its
    DynamoDB holds the key table, its Secrets Manager the secret (a fresh pepper, no tokens;
    or what `kept` kept of an earlier run, with the table's items: the same keys and tokens).
    The env that points the gateway at them (the gateway writes it to `LOCAL_ACCESS_FILE` for
    the owner commands once it listens: `claim_access_file`)."""
    import secrets

    import boto3

    serialize_dynamodb_writes()  # the server runs in this process
    credentials = {
        "region_name": region,
        "endpoint_url": endpoint,
        "aws_access_key_id": os.environ.get("AWS_ACCESS_KEY_ID") or "local",
        "aws_secret_access_key": os.environ.get("AWS_SECRET_ACCESS_KEY") or "local",
    }
    table = "image-gateway-access"
    dynamodb = boto3.client("dynamodb", **credentials)
    create_access_table(dynamodb, table)
    value = kept.kept_secret() if kept is not None else None
    fresh = json.dumps({"pepper": secrets.token_urlsafe(36), "tokens": {}})
    manager = boto3.client("secretsmanager", **credentials)
    secret = manager.create_secret(Name="image-gateway-access", SecretString=value or fresh)["ARN"]
    if kept is not None:
        kept.restore_access(dynamodb, table, manager, secret)
    return {
        "ACCESS_TABLE": table,
        "ACCESS_SECRET": secret,
        "AWS_ENDPOINT_URL_DYNAMODB": endpoint,
        "AWS_ENDPOINT_URL_SECRETS_MANAGER": endpoint,
    }


def _alive(pid: object) -> bool:
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def claim_access_file(env: Mapping[str, str], region: str) -> str | None:
    """Point the owner commands at this run's stand-ins (`LOCAL_ACCESS_FILE`, with this
    process's id); what the file held for another run still alive (put back at exit by
    `release_access_file`), else None."""
    previous = None
    try:
        held = json.loads(LOCAL_ACCESS_FILE.read_text())
        if isinstance(held, dict) and held.get("pid") != os.getpid() and _alive(held.get("pid")):
            previous = json.dumps(held)
    except (OSError, ValueError):
        pass
    shared = (
        "BUCKET",
        "S3_ENDPOINT_URL",
        "JOB_STATE_MACHINE_ARN",
        "AWS_ENDPOINT_URL_SFN",
        "WEBHOOK_SECRET",
    )
    known = {name: os.environ[name] for name in shared if os.environ.get(name)}
    LOCAL_ACCESS_FILE.parent.mkdir(parents=True, exist_ok=True)
    mine = {**known, **env, "AWS_REGION": region, "pid": os.getpid()}
    LOCAL_ACCESS_FILE.write_text(json.dumps(mine))
    return previous


def release_access_file(previous: str | None) -> None:
    """At exit: the owner commands' pointer goes with this run's stand-ins, back to the run
    it pointed at before when that one still runs; a file another run wrote since is left."""
    try:
        held = json.loads(LOCAL_ACCESS_FILE.read_text())
    except (OSError, ValueError):
        return
    if not isinstance(held, dict) or held.get("pid") != os.getpid():
        return  # another run's now
    if previous is not None and _alive(json.loads(previous).get("pid")):
        LOCAL_ACCESS_FILE.write_text(previous)
    else:
        LOCAL_ACCESS_FILE.unlink(missing_ok=True)


def port_taken(host: str, port: int) -> bool:
    """Whether `host:port` cannot be listened on (another server, e.g. another `make run`,
    holds it), asked before anything is started."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn binds
        try:
            sock.bind((host, port))
        except OSError:
            return True
    return False


STAND_INS_FLAG = "--stand-ins"


def serve_stand_ins() -> None:
    """The child: start the stand-ins the environment lacks, print the environment that points
    at them (one JSON line on stdout), then serve until stdin closes."""
    # Ctrl-C reaches the whole process group: the gateway stops first, then closes our stdin
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # moto's line per request
    server = None
    env: dict[str, str] = {}
    kept = None  # stored images and ended jobs across restarts (`imagegw.infra.localstate`)
    if not os.environ.get("BUCKET"):
        import boto3

        from imagegw.infra.localstate import LocalState, default_dir

        server, env = start_s3_stand_in()
        os.environ.update(env)
        s3 = boto3.client("s3", endpoint_url=env["S3_ENDPOINT_URL"], region_name=LOCAL_REGION)
        kept = LocalState(default_dir(REPO_ROOT), s3, env["BUCKET"])
        restored = f"{kept.restore_images()} stored images"
    if not os.environ.get("JOB_STATE_MACHINE_ARN"):
        if server is None:
            server, endpoint = start_moto()
        else:
            endpoint = env["S3_ENDPOINT_URL"]
        # the task handlers run here: no EMF metric lines on the console
        os.environ.setdefault("POWERTOOLS_METRICS_DISABLED", "true")
        region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
        jobs = start_jobs_stand_in(endpoint, region or LOCAL_REGION)
        os.environ.update(jobs)
        env.update(jobs)
        if kept is not None:
            sfn = boto3.client("stepfunctions", endpoint_url=endpoint, region_name=region)
            arn = jobs["JOB_STATE_MACHINE_ARN"]
            count = kept.restore_jobs(sfn, arn, LOCAL_ACCOUNT, region or LOCAL_REGION)
            restored += f" and {count} ended jobs"
    if not os.environ.get("ACCESS_TABLE") and os.environ.get("ACCESS_MODE", "mixed") != "open":
        if server is None:
            server, endpoint = start_moto()
        else:
            endpoint = os.environ.get("AWS_ENDPOINT_URL_SFN") or os.environ["S3_ENDPOINT_URL"]
        region = os.environ.get("AWS_REGION") or LOCAL_REGION
        access = start_access_stand_in(endpoint, region, kept)
        os.environ.update(access)
        env.update(access)
    if kept is not None:
        kept.keep()
        # a SIGTERM to the process group (a supervisor, a test) still saves on the way out
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
        if kept.access is not None:
            restored += f", {kept.restored_keys} gateway keys and the token pools"
        print(f"kept from earlier runs ({kept.folder}): {restored}", file=sys.stderr)
    print(json.dumps(env), flush=True)
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())  # the handlers' log lines: the console
    try:
        sys.stdin.read()
    finally:
        if kept is not None:
            kept.close()
        if server is not None:
            server.stop()


def spawn_stand_ins() -> tuple[subprocess.Popen[str], dict[str, str]]:
    """Start the stand-ins' process; it and the environment that points at its stand-ins."""
    process = subprocess.Popen(  # noqa: S603 (this interpreter, this module)
        [sys.executable, "-m", "imagegw.frontends.local", STAND_INS_FLAG],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert process.stdout is not None
    line = process.stdout.readline()
    process.stdout.close()
    if not line:
        raise RuntimeError(f"the AWS stand-ins did not start (exit status {process.wait()})")
    env: dict[str, str] = json.loads(line)
    return process, env


def stop_stand_ins(process: subprocess.Popen[str]) -> None:
    """Close the child's stdin (it stops its servers and exits); kill it if it lingers."""
    if process.stdin is not None:
        process.stdin.close()
    try:
        process.wait(10)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def main() -> None:
    if sys.argv[1:] == [STAND_INS_FLAG]:
        serve_stand_ins()
        return

    # one short line per request on a console (`imagegw.infra.log`, read as it is imported),
    # here and in the stand-ins' process; JSON where deployed
    os.environ.setdefault("IMAGEGW_LOG_FORMAT", "text")
    import uvicorn

    from imagegw.frontends.app import create_app
    from imagegw.frontends.demo_routing import serves_tokenless
    from imagegw.infra.config import Settings

    # as on the stand-ins' side: no EMF metric lines on the console (imagegw.infra.apimetrics)
    os.environ.setdefault("POWERTOOLS_METRICS_DISABLED", "true")
    # the demo provider (offline pictures) is on here unless turned off: something to try
    # with no token at all (imagegw.frontends.demo_routing)
    os.environ.setdefault("DEMO_PROVIDER", "enabled")
    host = os.environ.get("HOST", "127.0.0.1")
    port = int(os.environ.get("PORT", "8000"))
    if port_taken(host, port):  # before anything starts: another run's files stay as they are
        print(
            f"error: {host}:{port} is in use (another `make run`?): stop it, or choose another "
            f"port, e.g. make run PORT={port + 1}",
            file=sys.stderr,
        )
        raise SystemExit(1)
    stand_ins = None
    env: dict[str, str] = {}
    where = f"bucket {os.environ['BUCKET']}" if os.environ.get("BUCKET") else ""
    wants_access = os.environ.get("ACCESS_MODE", "mixed") != "open"
    if (
        not os.environ.get("BUCKET")
        or not os.environ.get("JOB_STATE_MACHINE_ARN")
        or (wants_access and not os.environ.get("ACCESS_TABLE"))
    ):
        stand_ins, env = spawn_stand_ins()
        os.environ.update(env)
        if "S3_ENDPOINT_URL" in env:
            where = f"S3 stand-in at {env['S3_ENDPOINT_URL']}, bucket {env['BUCKET']}"
        if "JOB_STATE_MACHINE_ARN" in env:
            where += "; async jobs and batches on the Step Functions stand-in"
        if "ACCESS_TABLE" in env:
            where += "; gateway keys on the DynamoDB and Secrets Manager stand-ins"
        where += f" (stand-ins in process {stand_ins.pid})"
    previous = None
    if "ACCESS_TABLE" in env:
        region = os.environ.get("AWS_REGION") or LOCAL_REGION
        previous = claim_access_file(env, region)  # for the owner commands, while this runs
    settings = Settings.from_env()
    print(
        f"lambda-image-gateway on http://{host}:{port}/v1 ({settings.access_mode} access; "
        f"default provider {settings.default_provider}; {where})",
        file=sys.stderr,
    )
    if serves_tokenless(settings):
        print(
            "no provider token needed to try it: requests without an Authorization header are "
            "served by the demo provider (offline pictures; also at /demo/v1). The page: "
            f"http://{host}:{port}/ (DEMO_PROVIDER=disabled turns the demo off)",
            file=sys.stderr,
        )
    try:
        uvicorn.run(
            create_app(settings),
            host=host,
            port=port,
            log_level="info",
            access_log=False,
            use_colors=False,  # plain lines in any terminal or log file
        )
    finally:
        if stand_ins is not None:
            stop_stand_ins(stand_ins)
        if "ACCESS_TABLE" in env:
            release_access_file(previous)  # the owner commands' pointer: gone with them


if __name__ == "__main__":
    main()
