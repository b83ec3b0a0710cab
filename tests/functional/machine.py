"""The durable-job state machine (statemachine/image_job.asl.json) run whole under moto, for the
functional tests (`world` fixture in conftest.py).

moto's Step Functions interpreter (`execute_state_machine`) runs the ASL file; its Lambda tasks
are dispatched in-process to the real task handlers (`functions/job_*/app.py`) through the seam
moto 5.2 calls for a Lambda task (`lambda_eval_utils._invoke_lambda_function`, patched with
`imagegw.frontends.local.LocalLambdas`). S3 and KMS are moto's too; the providers are the fakes on
loopback. Jobs are started the way the API function starts them
(`imagegw.runners.stepfunctions.service`). The
state machine's waits (its Retry backoff, its Wait and Backoff states) are recorded, not slept.
"""

from __future__ import annotations

import json
import os
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import anyio
import boto3
import openai
import pytest
from moto.stepfunctions.parser.asl.component.common.retry import retrier_decl
from moto.stepfunctions.parser.asl.component.state.exec.state_task import lambda_eval_utils
from moto.stepfunctions.parser.asl.component.state.wait.wait_function import wait_function
from moto.stepfunctions.parser.asl.eval.event.event_manager import EventManager
from pydantic import SecretStr

from fakes.aws import BUCKET, REGION, MockedAws
from fakes.modelscope import FakeModelScope
from imagegw.frontends import job_answers
from imagegw.frontends.local import (
    LocalLambdas,
    function_arns,
    load_task_handlers,
    state_machine_definition,
)
from imagegw.infra.config import Settings
from imagegw.infra.executions import StepFunctionsRunner
from imagegw.infra.fetcher import Fetcher
from imagegw.infra.sealer import KeySealer
from imagegw.infra.storage import ImageStore
from imagegw.providers.base import GenerationRequest, ModelKind
from imagegw.runners.gateway import Clock
from imagegw.runners.stepfunctions import steps
from imagegw.runners.stepfunctions.service import Jobs, JobView

TOKEN = "ms-test-token"


@dataclass
class World:
    """The mocked account: a bucket, a KMS key, the state machine, and what happened."""

    settings: Settings
    sfn: Any
    s3: Any
    lambdas: LocalLambdas
    arns: dict[str, str]
    #: the waits of the state machine's Retry (seconds, as drawn), not slept
    retry_sleeps: list[float] = field(default_factory=list)
    #: the waits of its Wait and Backoff states (seconds), not slept
    waits: list[int] = field(default_factory=list)

    @property
    def jobs(self) -> Jobs:
        return Jobs(
            self.settings,
            ImageStore(self.settings),
            runner=StepFunctionsRunner(str(self.settings.job_state_machine_arn), REGION),
            sealer=KeySealer(self.settings.job_key_id, REGION),
        )

    def submit(
        self,
        n: int = 1,
        *,
        provider: str = "modelscope",
        model: str = "Qwen/Qwen-Image",
        token: str = TOKEN,
        response_format: Any = "url",
        prompt: str = "a lighthouse at dusk",
        **options: Any,
    ) -> str:
        request = GenerationRequest(
            provider=provider,
            model=model,
            kind=ModelKind.GENERATE,
            prompt=prompt,
            api_key=SecretStr(token),
            options=options,
            n=n,
        )
        view: JobView = anyio.run(
            lambda: self.jobs.submit(request, response_format=response_format)
        )
        return view.id

    def wait(self, job_id: str, timeout: float = 60.0) -> dict[str, Any]:
        """The execution once it ended (`timeout`: a bound for a machine under load, not a
        timing: a job whose trickled polls take 5 s was waited on 7.5 s at load 8)."""
        arn = StepFunctionsRunner(str(self.settings.job_state_machine_arn), REGION)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            answer: dict[str, Any] = self.sfn.describe_execution(
                executionArn=arn.execution_arn(job_id)
            )
            if answer["status"] != "RUNNING":
                return answer
            time.sleep(0.05)
        raise AssertionError(f"job {job_id} still running after {timeout} s")

    def status(self, job_id: str, token: str = TOKEN) -> JobView:
        return anyio.run(lambda: self.jobs.status(job_id, token))

    def render(self, job_id: str, token: str = TOKEN) -> dict[str, Any]:
        """The body `GET /v1/jobs/{id}` answers."""

        async def body() -> dict[str, Any]:
            service = self.jobs
            view = await service.status(job_id, token)
            fetcher = Fetcher.for_results(self.settings)
            try:
                return await job_answers.render(
                    service, view, base_url="https://gw", fetcher=fetcher
                )
            finally:
                await fetcher.aclose()

        return anyio.run(body)

    def history(self, job_id: str) -> list[dict[str, Any]]:
        arn = StepFunctionsRunner(str(self.settings.job_state_machine_arn), REGION)
        events: list[dict[str, Any]] = self.sfn.get_execution_history(
            executionArn=arn.execution_arn(job_id), maxResults=1000
        )["events"]
        return events

    def calls(self, task: str) -> list[dict[str, Any]]:
        return [event for arn, event in self.lambdas.calls if arn == self.arns[task]]


def make_world(
    aws: MockedAws, monkeypatch: pytest.MonkeyPatch, fake_ms: FakeModelScope
) -> Callable[..., World]:
    """A factory of state machines in the mocked account, their tasks dispatched to the real
    handlers; keyword arguments override the API side's settings."""
    # a handler that raises flushes no metric, and Powertools warns so; under pytest's
    # "error" filter that warning would replace the handler's own error (TransientJobError)
    warnings.filterwarnings("ignore", "No application metrics to publish", UserWarning)
    sfn = boto3.client("stepfunctions", region_name=REGION)
    arns = function_arns(REGION)
    handlers = load_task_handlers()
    lambdas = LocalLambdas({arns[name]: handler for name, handler in handlers.items()})
    monkeypatch.setattr(lambda_eval_utils, "_invoke_lambda_function", lambdas.moto_invoke)

    def make(**overrides: Any) -> World:
        machine = sfn.create_state_machine(
            name=f"image-job-{len(sfn.list_state_machines()['stateMachines'])}",
            definition=state_machine_definition(arns),
            roleArn="arn:aws:iam::123456789012:role/image-job",
            type="STANDARD",
        )
        values: dict[str, Any] = {
            "bucket": BUCKET,
            "s3_endpoint_url": os.environ["S3_ENDPOINT_URL"],  # the `aws` fixture's
            "modelscope_base_url": fake_ms.base_url,  # type: ignore[attr-defined]
            "job_state_machine_arn": machine["stateMachineArn"],
            "job_key_id": aws.key_id,
            "job_poll_interval": 0,
            "job_timeout": 600,
        }
        values.update(overrides)
        world = World(Settings(**values), sfn, aws.s3, lambdas, arns)
        # the Retry waits: recorded (and not slept) to see the backoff
        monkeypatch.setattr(
            retrier_decl, "time", type("Clock", (), {"sleep": world.retry_sleeps.append})
        )

        def wait_interval(self: Any, env: Any, wait_seconds: int) -> None:
            world.waits.append(wait_seconds)

        monkeypatch.setattr(wait_function.WaitFunction, "_wait_interval", wait_interval)
        return world

    return make


def function_env(world: World, task: str, **variables: str) -> None:
    """The function of `task` (its ARN's name in the ASL: `JobPollFunctionArn`) runs with
    `variables` in its environment, set for each of its calls only, as a Lambda function's
    configuration is its own (the other tasks keep the test's)."""
    handler = world.lambdas.handlers[world.arns[task]]

    def configured(event: dict[str, Any], context: Any) -> Any:
        with pytest.MonkeyPatch.context() as scoped:
            for name, value in variables.items():
                scoped.setenv(name, value)
            return handler(event, context)

    world.lambdas.handlers[world.arns[task]] = configured


@dataclass
class SimulatedClock:
    """Seconds on a clock that moves only when the state machine waits."""

    now: float = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now


def simulate_time(
    world: World, monkeypatch: pytest.MonkeyPatch, fake_ms: FakeModelScope
) -> SimulatedClock:
    """Run the fake's tasks, the job steps' clock and the state machine's Wait states on one
    simulated clock: a wait of N s moves it N s at once (recorded, not slept), so a 30-s job
    runs in moments with the polls and state transitions it would have."""
    clock = SimulatedClock()
    fake_ms.clock = clock
    monkeypatch.setattr(steps, "CLOCK", Clock(now=clock))

    def wait_interval(self: Any, env: Any, wait_seconds: int) -> None:
        world.waits.append(wait_seconds)
        clock.now += wait_seconds

    monkeypatch.setattr(wait_function.WaitFunction, "_wait_interval", wait_interval)
    return clock


def transitions(history: list[dict[str, Any]]) -> int:
    """State transitions as Step Functions Standard bills them: each state entered."""
    return sum(1 for event in history if str(event["type"]).endswith("StateEntered"))


def entered_states(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The names of the states entered from now on, in every execution and in the child
    workflows of a Distributed Map (whose histories moto keeps nowhere it lists): the state
    transitions Step Functions Standard bills."""
    entered: list[str] = []
    add_event = EventManager.add_event

    def recording(self: Any, context: Any, event_type: Any, *args: Any, **kwargs: Any) -> int:
        details = args[0] if args else kwargs.get("event_details")
        if str(getattr(event_type, "value", event_type)).endswith("StateEntered") and details:
            entered.append(details["stateEnteredEventDetails"]["name"])
        return add_event(self, context, event_type, *args, **kwargs)

    monkeypatch.setattr(EventManager, "add_event", recording)
    return entered


def verified(delivery: Any, secret: str) -> dict[str, Any]:
    """A webhook delivery's event, its signature checked by the official SDK."""
    client = openai.OpenAI(api_key="unused")
    client.webhooks.verify_signature(delivery.body, delivery.headers, secret=secret)
    event: dict[str, Any] = json.loads(delivery.body)
    return event
