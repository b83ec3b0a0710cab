"""Step Functions tasks of the batch state machine (statemachine/image_batch.asl.json):
`Validate` (the input file checked), an item's `Submit` (the item as a job, submitted) and
`Store` (the job's images stored, the item's line written), `Record` (an item that ended
without images) and `Finalize`; the event's `step` names which. One function for the five:
they share the bucket's permissions.

Thin: the work is `imagegw.frontends.batch_steps` in the shared layer, around the image-job
steps (`imagegw.runners.stepfunctions.steps`) every durable job runs; an item's Polls run on
functions/job_poll.
"""

from __future__ import annotations

from typing import Any

from aws_lambda_powertools.metrics import MetricUnit
from aws_lambda_powertools.utilities.typing import LambdaContext

from imagegw.frontends.batch_steps import STEPS
from imagegw.infra.log import logger
from imagegw.infra.telemetry import metrics, tracer
from imagegw.runners.stepfunctions import steps


@logger.inject_lambda_context(correlation_id_path="batch.id")
@tracer.capture_lambda_handler(capture_response=False)
@metrics.log_metrics
def lambda_handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    step = str(event.get("step"))
    answer = steps.run_step(STEPS[step], event)
    if step in ("store", "record"):
        name = "BatchItemsSucceeded" if answer.get("ok") else "BatchItemsFailed"
        metrics.add_metric(name=name, unit=MetricUnit.Count, value=1)
    return answer
