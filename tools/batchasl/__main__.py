"""Write statemachine/image_batch.asl.json from statemachine/image_job.asl.json:
`python tools/batchasl` (`make asl` checks the file is current: tests/unit/test_batch_asl.py).

A batch is a Distributed Map over its items (the checked lines, a JSON array in the bucket);
each item's child workflow is one durable job of the one lifecycle: the job state machine's
own states, copied here, changed only where an item starts and ends, so that an item takes no
more state transitions than the job alone (docs/batches.md "Cost"):

- Submit runs the batch step `submit`: the item made a job's input (or skipped: the batch was
  cancelled or is past its window), then the job's own Submit, in one task;
- Store runs the batch step `store`: the job's own Store, then the item's line written; the
  item ends there (where the job goes on to Done);
- where the job fails (Check's `failed`, TimedOut, a step failing beyond its retries), or the
  item was not submitted (no progress), the item goes on to Record, which writes its error;
  so an item never fails its child workflow and the map tolerates every item's failure;
- items have no webhook_url: the job's Notify branches, and states no item reaches, are left
  out.

Around the map (the outer machine): Validate first (the batch step that reads the input file,
checks every line and writes the items; nothing is paid before it passes), then the map, or
the batch's end as `failed` (or, for a batch cancelled while its lines were checked, straight
to Finalize, which writes its items skipped); after the map, Finalize writes the output and
error files; and, for a batch with a `webhook_url`, a Notify state posting its signed
`batch.*` event (the job's Notify function and Retry) before the execution ends.
"""

from __future__ import annotations

import copy
import json
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
JOB_ASL = ROOT / "statemachine" / "image_job.asl.json"
BATCH_ASL = ROOT / "statemachine" / "image_batch.asl.json"
STEP = "${BatchStepFunctionArn}"
LAMBDA_ERRORS = [
    "Lambda.ServiceException",
    "Lambda.AWSLambdaException",
    "Lambda.SdkClientException",
    "Lambda.TooManyRequestsException",
]
RETRY = [{"ErrorEquals": LAMBDA_ERRORS, "IntervalSeconds": 2, "BackoffRate": 2, "MaxAttempts": 5}]
#: an item's outcome when a step failed beyond its retries: recorded, never the map's failure
TO_RECORD = {"ErrorEquals": ["States.ALL"], "ResultPath": "$.failure", "Next": "Record"}
#: what an item's child workflow is given (the map's ItemSelector), passed on to its Submit
ITEM_INPUT = ("item", "batch", "key", "wait_seconds", "max_polls")
#: the Check rule an item that was not submitted takes (Submit gave it no progress)
NOT_SUBMITTED = {"Variable": "$.progress", "IsPresent": False, "Next": "Record"}
WEBHOOK = "$.job.webhook"


def _params(step: str, *fields: str) -> dict[str, Any]:
    return {"step": step, **{f"{field}.$": f"$.{field}" for field in fields}}


def _for_webhooks(rule: dict[str, Any]) -> bool:
    return any(term.get("Variable") == WEBHOOK for term in rule.get("And", []))


def _reachable(states: dict[str, Any], start: str) -> dict[str, Any]:
    """`states` less those no path from `start` enters."""
    seen: set[str] = set()
    pending = [start]
    while pending:
        name = pending.pop()
        if name in seen:
            continue
        seen.add(name)
        state = states[name]
        targets = [state.get("Next"), state.get("Default")]
        targets += [rule["Next"] for rule in state.get("Choices", [])]
        targets += [catch["Next"] for catch in state.get("Catch", [])]
        pending += [target for target in targets if target]
    return {name: state for name, state in states.items() if name in seen}


def item_states(job: dict[str, Any]) -> dict[str, Any]:
    """The job's states as an item's: Submit and Store the batch step's (each wrapping the
    job's own), every failure rerouted to Record, the webhook branches left out."""
    states = copy.deepcopy(job["States"])
    states["Submit"].update(
        Comment="The item as a durable job (its key sealed for the job, a gateway key's quota "
        "reserved, input images placed), submitted by the job's own Submit in the same task; "
        "or not submitted: the batch was cancelled (read again right before the provider is "
        "called) or is past its window, or the gateway refused the item (its key revoked, its "
        "quota spent). Retried as the job's Submit; a retry reserves anew (the failed attempt "
        "gave its reservation back).",
        Resource=STEP,
        Parameters=_params("submit", *ITEM_INPUT),
        ResultPath="$",
        Catch=[TO_RECORD],
    )
    check = states["Check"]
    check["Comment"] = (
        "Not submitted (Record), every task ended with an image (Store), every task ended "
        "and none made one (Record), polls exhausted, the last poll failed (Backoff), the end "
        "predicted (Predicted), or still running."
    )
    rules = [rule for rule in check["Choices"] if not _for_webhooks(rule)]
    for rule in rules:
        if rule["Next"] == "Failed":
            rule["Next"] = "Record"
    check["Choices"] = [NOT_SUBMITTED, *rules]
    states["Poll"]["Catch"] = [*states["Poll"].get("Catch", []), TO_RECORD]
    store = states["Store"]
    store.update(
        Comment="The job's Store (the result images copied into the bucket, the quota "
        "settled), then the item's line written to the bucket (results/): the body a single "
        "request answers. The item ends here.",
        Resource=STEP,
        Parameters=_params("store", "job", "progress", "item", "batch"),
        ResultPath="$",
        Catch=[*store.get("Catch", []), TO_RECORD],
        End=True,
    )
    store.pop("Next")
    timed_out = job["States"]["TimedOut"]
    states["TimedOut"] = {
        "Type": "Pass",
        "Comment": "The job's deadline passed: the item's failure.",
        "Result": {"Error": timed_out["Error"], "Cause": timed_out["Cause"]},
        "ResultPath": "$.failure",
        "Next": "Record",
    }
    states["Record"] = {
        "Type": "Task",
        "Comment": "Write the outcome of an item that ended without images to the bucket "
        "(results/): the provider's reason, the gateway's refusal, or why it was skipped; the "
        "item's child workflow ends.",
        "Resource": STEP,
        "Parameters": {"step": "record", "state.$": "$"},
        "ResultPath": "$.recorded",
        "OutputPath": "$.recorded",
        "Retry": RETRY,
        "End": True,
    }
    return _reachable(states, job["StartAt"])


#: a batch's webhook_url is set (a Choice rule)
HAS_WEBHOOK = {
    "And": [
        {"Variable": "$.batch.webhook", "IsPresent": True},
        {"Variable": "$.batch.webhook", "IsNull": False},
    ]
}


def notify_state(
    job: dict[str, Any], kind: dict[str, str], comment: str, then: str
) -> dict[str, Any]:
    """A batch's Notify state: the job's Notify function and its Retry (the same delivery
    schedule), then `then` whether it was delivered or not."""
    template = job["States"]["NotifySucceeded"]
    return {
        "Type": "Task",
        "Comment": comment,
        "Resource": template["Resource"],
        "Parameters": {
            "batch_id.$": "$.batch.id",
            "owner.$": "$.batch.owner",
            "webhook.$": "$.batch.webhook",
            **kind,
            "attempt.$": "$$.State.RetryCount",
            "entered.$": "$$.State.EnteredTime",
        },
        "ResultPath": None,
        "Retry": copy.deepcopy(template["Retry"]),
        "Catch": [{"ErrorEquals": ["States.ALL"], "ResultPath": None, "Next": then}],
        "Next": then,
    }


def outer_states(job: dict[str, Any]) -> dict[str, Any]:
    """The batch's own states before and after the map (Items, given by the caller)."""
    transient = {
        "ErrorEquals": ["TransientJobError"],
        "IntervalSeconds": 5,
        "BackoffRate": 2,
        "MaxAttempts": 6,
    }
    return {
        "Validate": {
            "Type": "Task",
            "Comment": "Read the input file and check every line as the single request would be "
            "checked (nothing is paid before): the items written as a JSON array for the map, or "
            "the batch failed with errors.data[] (line numbers). The batch shows validating until "
            "this ends.",
            "Resource": STEP,
            "Parameters": {"step": "validate", "batch.$": "$.batch"},
            "ResultPath": "$.validated",
            "Retry": [*RETRY, transient],
            "Next": "Valid",
        },
        "Valid": {
            "Type": "Choice",
            "Comment": "A batch with a bad line ends failed (telling its webhook_url first); "
            "one cancelled while its lines were checked runs no item: Finalize writes them "
            "skipped.",
            "Choices": [
                {
                    "And": [
                        {"Variable": "$.validated.status", "StringEquals": "failed"},
                        HAS_WEBHOOK,
                    ],
                    "Next": "NotifyInvalid",
                },
                {"Variable": "$.validated.status", "StringEquals": "failed", "Next": "Invalid"},
                {
                    "Variable": "$.validated.status",
                    "StringEquals": "cancelled",
                    "Next": "Finalize",
                },
            ],
            "Default": "Items",
        },
        "NotifyInvalid": notify_state(
            job,
            {"type": "batch.failed"},
            "POST the batch's signed batch.failed event to its webhook_url (the JobNotify "
            "function, the job's Notify Retry); delivered or not, the batch has failed.",
            "Invalid",
        ),
        "Invalid": {
            "Type": "Succeed",
            "Comment": "The batch failed validation: nothing was started (its status says so).",
            "OutputPath": "$.validated",
        },
        "Finalize": {
            "Type": "Task",
            "Comment": "Write the output file (succeeded items) and the error file (failed, "
            "cancelled or expired items) and the batch's end: completed, cancelled or expired.",
            "Resource": STEP,
            "Parameters": {
                "step": "finalize",
                "batch.$": "$.batch",
                "total.$": "$.validated.total",
                "validated.$": "$.validated.status",
            },
            "ResultPath": "$.final",
            "Retry": [*RETRY, transient],
            "Next": "Ended",
        },
        "Ended": {
            "Type": "Choice",
            "Comment": "A batch with a webhook_url tells how it ended before the execution ends.",
            "Choices": [{**HAS_WEBHOOK, "Next": "NotifyEnded"}],
            "Default": "Done",
        },
        "NotifyEnded": notify_state(
            job,
            {"type.$": "$.final.event"},
            "POST the batch's signed batch.completed, batch.expired or batch.cancelled event "
            "(as NotifyInvalid, same Retry); delivered or not, the batch has ended.",
            "Done",
        ),
        "Done": {"Type": "Succeed", "OutputPath": "$.final"},
    }


def batch_machine(job: dict[str, Any]) -> dict[str, Any]:
    outer = outer_states(job)
    processor = {
        "ProcessorConfig": {"Mode": "DISTRIBUTED", "ExecutionType": "STANDARD"},
        "StartAt": job["StartAt"],
        "States": item_states(job),
    }
    return {
        "Comment": "A Batch API batch (docs/batches.md): a Distributed Map over the batch's "
        "checked items (a JSON array in the bucket), at most BATCH_CONCURRENCY at once, each "
        "item one durable job of the image-job lifecycle (generated from image_job.asl.json "
        "by tools/batchasl), after Validate checked every line; then Finalize writes the output "
        "and error files, and a batch with a webhook_url gets its batch.* event. Standard child "
        "workflows: an item's job may wait on its provider up to JOB_TIMEOUT (an hour by "
        "default), past Express's 5 minutes.",
        "StartAt": "Validate",
        "States": {
            **{name: outer[name] for name in ("Validate", "Valid", "NotifyInvalid", "Invalid")},
            "Items": {
                "Type": "Map",
                "Comment": "Items read from S3; an item records its own failure, so none fails "
                "the map (ToleratedFailurePercentage 100 says so to Step Functions too).",
                "ItemReader": {
                    "Resource": "arn:aws:states:::s3:getObject",
                    "ReaderConfig": {"InputType": "JSON"},
                    "Parameters": {"Bucket.$": "$.items.Bucket", "Key.$": "$.items.Key"},
                },
                "ItemSelector": {
                    "item.$": "$$.Map.Item.Value",
                    "batch.$": "$.batch",
                    "key.$": "$.key",
                    "wait_seconds.$": "$.wait_seconds",
                    "max_polls.$": "$.max_polls",
                },
                "MaxConcurrencyPath": "$.concurrency",
                "ToleratedFailurePercentage": 100.0,
                "ItemProcessor": processor,
                "ResultWriter": {
                    "Resource": "arn:aws:states:::s3:putObject",
                    "Parameters": {"Bucket": "${BatchBucket}", "Prefix": "batches/map-runs"},
                },
                "ResultPath": "$.map",
                "Next": "Finalize",
            },
            **{name: outer[name] for name in ("Finalize", "Ended", "NotifyEnded", "Done")},
        },
    }


def render() -> str:
    job = json.loads(JOB_ASL.read_text())
    return json.dumps(batch_machine(job), indent=2) + "\n"


if __name__ == "__main__":
    text = render()
    if "--check" in sys.argv:
        sys.exit(0 if BATCH_ASL.exists() and BATCH_ASL.read_text() == text else 1)
    BATCH_ASL.write_text(text)
