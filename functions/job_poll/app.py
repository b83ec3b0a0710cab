"""Step Functions task `Poll` of the image-job state machine: ask the provider about the tasks
still running.

Thin: the work is `imagegw.runners.stepfunctions.steps.poll` in the shared layer. Raises
`TransientJobError` when the provider could not answer (the state machine retries it with
backoff).
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
    progress = steps.run(steps.poll, event)
    metrics.add_metric(name="JobPolls", unit=MetricUnit.Count, value=1)
    if progress["status"] == "failed":
        metrics.add_metric(name="JobsFailed", unit=MetricUnit.Count, value=1)
    return progress
