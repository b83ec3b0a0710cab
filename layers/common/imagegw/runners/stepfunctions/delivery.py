"""A job's webhook delivery as the status endpoint shows it, read from its execution's history
(there is no database of our own): `webhook: {status, attempts, last_status_code}`.

- `status`: `pending` (the job runs, or its first attempt does), `retrying` (an attempt failed;
  the state machine tries again), `delivered` (answered 2xx) or `failed` (the retries ran out,
  or the execution was stopped before);
- `attempts`: the POSTs made (each `Notify*` invocation is one);
- `last_status_code`: the receiver's last answer (null: no answer, e.g. a timeout).

While the delivery goes on the execution still runs, but the job has ended: its outcome is read
from the `Notify*` state (its input holds the output; its parameters the error) so the job
already shows `succeeded` or `failed`, as the event just said.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import replace
from typing import TYPE_CHECKING, Any, Final, TypeVar

from imagegw.runners.stepfunctions.schema import JobOutput, error_body

if TYPE_CHECKING:
    from _typeshed import DataclassInstance

NOTIFY_PREFIX: Final = "Notify"
ENDED: Final = frozenset({"SUCCEEDED", "FAILED", "TIMED_OUT", "ABORTED"})
Call = Callable[..., Awaitable[Any]]
#: `service.JobView` (a dataclass with `id`, `status`, `webhook`, `output`, `error`, `progress`)
View = TypeVar("View", bound="DataclassInstance")


def _json(text: Any) -> Any:
    try:
        return json.loads(text) if isinstance(text, str) else None
    except ValueError:
        return None


def _code_of_failure(details: Mapping[str, Any]) -> int | None:
    """The status code a failed attempt reported (its error message is JSON, wrapped in the
    Lambda error payload that is the failure's cause)."""
    cause = _json(details.get("cause"))
    message = cause.get("errorMessage") if isinstance(cause, dict) else details.get("cause")
    outcome = _json(message)
    code = outcome.get("last_status_code") if isinstance(outcome, dict) else None
    return code if isinstance(code, int) else None


def read_delivery(events: Sequence[Mapping[str, Any]], running: bool) -> dict[str, Any]:
    """What the history says of the delivery: `webhook` (as shown), and, once the job ended,
    `state` (the Notify state's input) and `params` (its task's input)."""
    entered: Mapping[str, Any] | None = None
    params: Any = None
    attempts, code, delivered, exited = 0, None, False, False
    for event in events:
        kind = str(event.get("type", ""))
        if kind == "TaskStateEntered":
            details = event.get("stateEnteredEventDetails") or {}
            if str(details.get("name", "")).startswith(NOTIFY_PREFIX):
                entered, params = details, None
                attempts, code, delivered, exited = 0, None, False, False
            continue
        if entered is None:
            continue
        if kind == "LambdaFunctionScheduled":
            attempts += 1
            if params is None:
                params = _json(
                    (event.get("lambdaFunctionScheduledEventDetails") or {}).get("input")
                )
        elif kind == "LambdaFunctionSucceeded":
            output = _json((event.get("lambdaFunctionSucceededEventDetails") or {}).get("output"))
            found = output.get("last_status_code") if isinstance(output, dict) else None
            code, delivered = (found if isinstance(found, int) else code), True
        elif kind == "LambdaFunctionFailed":
            code = _code_of_failure(event.get("lambdaFunctionFailedEventDetails") or {})
        elif kind == "LambdaFunctionTimedOut":
            code = None
        elif kind == "TaskStateExited":
            exited = True
    if entered is None:  # not yet; or never, when the execution ended first (stopped)
        status = "pending" if running else "failed"
    elif delivered:
        status = "delivered"
    elif exited or not running:
        status = "failed"
    else:
        status = "retrying" if attempts > 1 or code is not None else "pending"
    return {
        "webhook": {"status": status, "attempts": attempts, "last_status_code": code},
        "state": _json(entered.get("input")) if entered is not None else None,
        "params": params if isinstance(params, dict) else None,
    }


async def notified(view: View, execution: Any, runner: Any, call: Call) -> View:
    """`view` with its webhook's delivery; a job whose event is being delivered shows how it
    ended. A history that cannot be read leaves the view as it is."""
    read = getattr(runner, "history", None)
    if read is None:
        return view
    running = execution.status not in ENDED
    try:
        events = await call("history", read, getattr(view, "id"))  # noqa: B009
    except Exception:  # the status stands without it
        return view
    found = read_delivery(events, running)
    view = replace(view, webhook=found["webhook"])
    state, params = found["state"], found["params"]
    if not running or state is None:
        return view
    if params is not None and params.get("type") == "job.failed":
        error = error_body(params.get("error"), params.get("cause"))
        return replace(view, status="failed", error=error, progress=None)
    output = state.get("output") if isinstance(state, dict) else None
    if isinstance(output, dict):
        try:
            done = JobOutput.model_validate(output)
        except ValueError:
            return view
        return replace(view, status="succeeded", output=done, progress=None)
    return view
