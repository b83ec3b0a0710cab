"""Step Functions task `Submit` of the image-job state machine: open the sealed provider key and
start the provider's tasks (a synchronous provider finishes here).

Thin: the work is `imagegw.runners.stepfunctions.steps.submit` in the shared layer. Raises
`TransientJobError` when nothing started and a later attempt may succeed (the state machine
retries it).
"""

from __future__ import annotations

from typing import Any

from aws_lambda_powertools.metrics import MetricUnit
from aws_lambda_powertools.utilities.typing import LambdaContext

from imagegw.infra.log import logger
from imagegw.infra.telemetry import metrics, tracer
from imagegw.runners.stepfunctions import steps


@logger.inject_lambda_context(correlation_id_path="job.id")
@tracer.capture_lambda_handler(capture_response=False)
@metrics.log_metrics
def lambda_handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    progress = steps.run(steps.submit, event)
    metrics.add_metric(name="JobsSubmitted", unit=MetricUnit.Count, value=1)
    if progress["status"] == "failed":
        metrics.add_metric(name="JobsRefused", unit=MetricUnit.Count, value=1)
    return progress
