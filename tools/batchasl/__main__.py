"""Write statemachine/image_batch.asl.json from statemachine/image_job.asl.json:
`python tools/batchasl` (`make asl` checks the file is current: tests/unit/test_batch_asl.py).

A batch is a Distributed Map over its items (the checked lines, a JSON array in the bucket);
each item's child workflow is one durable job of the one lifecycle: Prepare (the batch step
that turns the item into the job's input, or skips it once the batch is cancelled or past its
window), then the job state machine's own states, copied here unchanged except at their ends:
where a job ends, an item goes on to Record (its outcome written to the bucket), so an item
never fails its child workflow and the map tolerates every item's failure. Finalize writes the
output and error files once the map is over.

Around the map (the outer machine): Validate first (the batch step that reads the input file,
checks every line and writes the items; nothing is paid before it passes), then the map, or
the batch's end as `failed`; and, for a batch with a `webhook_url`, a Notify state posting its
signed `batch.*` event (the job's Notify function and Retry) before the execution ends.
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


def item_states(job: dict[str, Any]) -> dict[str, Any]:
    """The job's states as an item's: each end rerouted to Record."""
    states = copy.deepcopy(job["States"])
    for state in states.values():
        if state["Type"] == "Task":
            state["Catch"] = [*state.get("Catch", []), TO_RECORD]
    states["Store"]["ResultPath"] = "$.output"  # the item's own fields stay beside the output
    states["Store"]["Next"] = "Record"
    states["Store"].pop("End", None)
    states["Failed"] = {
        "Type": "Pass",
        "Comment": "The job failed (the provider's reason): the item's failure.",
        "Parameters": {"Error.$": "$.progress.error", "Cause.$": "$.progress.cause"},
        "ResultPath": "$.failure",
        "Next": "Record",
    }
    timed_out = job["States"]["TimedOut"]
    states["TimedOut"] = {
        "Type": "Pass",
        "Comment": "The job's deadline passed: the item's failure.",
        "Result": {"Error": timed_out["Error"], "Cause": timed_out["Cause"]},
        "ResultPath": "$.failure",
        "Next": "Record",
    }
    states["SubmitFailed"] = {
        "Type": "Pass",
        "Comment": "Submit's retries ran out with nothing started: the item's failure.",
        "Parameters": {"Error.$": "$.caught.Error", "Cause.$": "$.caught.Cause"},
        "ResultPath": "$.failure",
        "Next": "Record",
    }
    del states["Done"]
    if "Delivered" in states:  # after a job's webhook (items have none: never reached)
        states["Delivered"] = {
            "Type": "Pass",
            "Comment": "A job's end after its webhook: the item's outcome is recorded.",
            "Next": "Record",
        }
    return states


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
            "Comment": "A batch with a bad line ends failed (telling its webhook_url first).",
            "Choices": [
                {
                    "And": [
                        {"Variable": "$.validated.status", "StringEquals": "failed"},
                        HAS_WEBHOOK,
                    ],
                    "Next": "NotifyInvalid",
                },
                {"Variable": "$.validated.status", "StringEquals": "failed", "Next": "Invalid"},
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
    prepare = {
        "Type": "Task",
        "Comment": "The item as a durable job's input (its key sealed for the job, a gateway "
        "key's quota reserved for it), or a skip: the batch was cancelled or its window passed.",
        "Resource": STEP,
        "Parameters": {
            "step": "prepare",
            "item.$": "$.item",
            "batch.$": "$.batch",
            "key.$": "$.key",
            "wait_seconds.$": "$.wait_seconds",
            "max_polls.$": "$.max_polls",
        },
        "ResultPath": "$",
        "Retry": RETRY,
        "Catch": [TO_RECORD],
        "Next": "Skip",
    }
    skip = {
        "Type": "Choice",
        "Comment": "A skipped item (cancelled, expired) or one the gateway refused (its key "
        "revoked, its quota spent) is recorded as such; any other is submitted.",
        "Choices": [
            {"Variable": "$.skip", "IsPresent": True, "Next": "Record"},
            {"Variable": "$.failure", "IsPresent": True, "Next": "Record"},
        ],
        "Default": "Submit",
    }
    record = {
        "Type": "Task",
        "Comment": "Write the item's outcome to the bucket (results/): the response body a "
        "single request answers, or the provider's reason; the item's child workflow ends.",
        "Resource": STEP,
        "Parameters": {"step": "record", "state.$": "$"},
        "ResultPath": "$.recorded",
        "OutputPath": "$.recorded",
        "Retry": RETRY,
        "End": True,
    }
    outer = outer_states(job)
    processor = {
        "ProcessorConfig": {"Mode": "DISTRIBUTED", "ExecutionType": "STANDARD"},
        "StartAt": "Prepare",
        "States": {"Prepare": prepare, "Skip": skip, **item_states(job), "Record": record},
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
