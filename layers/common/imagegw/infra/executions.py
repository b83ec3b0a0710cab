"""`JobRunner`: where durable jobs run and are looked up; one execution per job, named by its id.

`StepFunctionsRunner` is the one backend: Step Functions on AWS, and on `make run` the same calls
against the embedded stand-in (moto's Step Functions, which runs the same ASL file and dispatches
its Lambda tasks to the real handlers in-process; see `imagegw.frontends.local`). The status
endpoint reads executions (DescribeExecution, GetExecutionHistory): there is no database of our
own. Calls are synchronous (botocore, `imagegw.infra.aws`); callers run them in a worker thread.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final, Protocol

#: the task state whose end means the provider has the job (before: queued)
SUBMIT_STATE: Final = "Submit"
#: the task states that leave the job's progress at $.progress
TASK_STATES: Final = frozenset({SUBMIT_STATE, "Poll"})
#: execution statuses that are over
ENDED: Final = frozenset({"SUCCEEDED", "FAILED", "TIMED_OUT", "ABORTED"})


@dataclass(frozen=True)
class Execution:
    """What the status endpoint needs of one execution."""

    name: str
    #: RUNNING | SUCCEEDED | FAILED | TIMED_OUT | ABORTED | PENDING_REDRIVE
    status: str
    started: float
    input: str | None = None
    output: str | None = None
    error: str | None = None
    cause: str | None = None


class JobRunner(Protocol):
    def start(self, name: str, payload: str) -> bool:
        """Start an execution named `name`; False when one of that name exists already."""

    def describe(self, name: str) -> Execution | None:
        """The execution named `name`, or None."""

    def submitted(self, name: str) -> bool:
        """Whether the running execution has left its submit step (the provider has the job)."""

    # optional: `progress(name) -> str | None`, the JSON of a running execution's `$.progress`
    # as its last task left it (the status endpoint shows it where the runner can tell it)


def _epoch(value: Any) -> float:
    return value.timestamp() if isinstance(value, datetime) else float(value or 0)


class StepFunctionsRunner:
    """Executions of one Standard state machine."""

    def __init__(self, state_machine_arn: str, region: str, client: Any = None) -> None:
        self.state_machine_arn = state_machine_arn
        self.region = region
        self._sfn = client

    @property
    def sfn(self) -> Any:
        if self._sfn is None:
            from botocore.config import Config

            from imagegw.infra import aws

            self._sfn = aws.client(
                "stepfunctions",
                region_name=self.region,
                config=Config(retries={"max_attempts": 3, "mode": "standard"}),
            )
        return self._sfn

    def execution_arn(self, name: str) -> str:
        # arn:aws:states:REGION:ACCOUNT:stateMachine:NAME -> ...:execution:NAME:EXECUTION
        return f"{self.state_machine_arn.replace(':stateMachine:', ':execution:', 1)}:{name}"

    def start(self, name: str, payload: str) -> bool:
        try:
            self.sfn.start_execution(
                stateMachineArn=self.state_machine_arn, name=name, input=payload
            )
        except Exception as exc:
            if type(exc).__name__ == "ExecutionAlreadyExists" or _error_code(exc) == (
                "ExecutionAlreadyExists"
            ):
                return False
            raise
        return True

    def describe(self, name: str) -> Execution | None:
        try:
            answer = self.sfn.describe_execution(executionArn=self.execution_arn(name))
        except Exception as exc:
            if _error_code(exc) == "ExecutionDoesNotExist":
                return None
            raise
        return Execution(
            name=name,
            status=str(answer["status"]),
            started=_epoch(answer.get("startDate")),
            input=answer.get("input"),
            output=answer.get("output"),
            error=answer.get("error"),
            cause=answer.get("cause"),
        )

    def submitted(self, name: str) -> bool:
        # the newest state event (newest first, but order by id anyway: moto ignores
        # reverseOrder); retries of a task add no such events
        answer = self.sfn.get_execution_history(
            executionArn=self.execution_arn(name),
            reverseOrder=True,
            maxResults=100,
            includeExecutionData=False,
        )
        moves = [
            event
            for event in answer.get("events", [])
            if "stateEnteredEventDetails" in event or "stateExitedEventDetails" in event
        ]
        if not moves:
            return False
        latest = max(moves, key=lambda event: int(event.get("id", 0)))
        entered = latest.get("stateEnteredEventDetails")
        return not (entered and entered.get("name") == SUBMIT_STATE)

    def progress(self, name: str) -> str | None:
        # the state's data as the newest task state left it: Submit and Poll keep the job's
        # progress at $.progress. A loop of the state machine is about a dozen events, so the
        # newest 30 hold the last task's exit (with its data: a few KiB each). moto ignores
        # reverseOrder: on `make run` this is the progress of the job's first polls.
        answer = self.sfn.get_execution_history(
            executionArn=self.execution_arn(name),
            reverseOrder=True,
            maxResults=30,
            includeExecutionData=True,
        )
        exits = [
            event
            for event in answer.get("events", [])
            if (event.get("stateExitedEventDetails") or {}).get("name") in TASK_STATES
        ]
        if not exits:
            return None
        latest = max(exits, key=lambda event: int(event.get("id", 0)))
        try:
            data = json.loads(latest["stateExitedEventDetails"].get("output") or "")
        except ValueError:
            return None
        progress = data.get("progress") if isinstance(data, dict) else None
        return json.dumps(progress) if isinstance(progress, dict) else None

    def history(self, name: str, pages: int = 5) -> list[dict[str, Any]]:
        """The execution's events with their data, oldest first (at most `pages` pages of
        1000: a job that retried its webhook for a day has a few hundred)."""
        events: list[dict[str, Any]] = []
        token: str | None = None
        for _ in range(pages):
            extra = {"nextToken": token} if token else {}
            answer = self.sfn.get_execution_history(
                executionArn=self.execution_arn(name),
                maxResults=1000,
                includeExecutionData=True,
                **extra,
            )
            events += answer.get("events", [])
            token = answer.get("nextToken")
            if not token:
                break
        return sorted(events, key=lambda event: int(event.get("id", 0)))


def _error_code(exc: Exception) -> str | None:
    code = getattr(exc, "response", {}).get("Error", {}).get("Code")
    return str(code) if code else None
