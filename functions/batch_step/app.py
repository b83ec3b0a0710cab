"""Step Functions tasks `Validate`, `Prepare`, `Record` and `Finalize` of the batch state machine
(statemachine/image_batch.asl.json): the event's `step` names which. One function for the
four: each is small, and they share the bucket's permissions.

Thin: the work is `imagegw.frontends.batch_steps` in the shared layer; an item's job itself runs
on the image-job steps (functions/job_*), as every durable job does.
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
    if step == "record":
        name = "BatchItemsSucceeded" if answer.get("ok") else "BatchItemsFailed"
        metrics.add_metric(name=name, unit=MetricUnit.Count, value=1)
    return answer
