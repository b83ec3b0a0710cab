"""Step Functions tasks `Notify*` of the image-job state machine: one attempt at POSTing a
job's (or a batch's) signed event to its `webhook_url` (README "Webhooks"); the state machine
retries it.

Thin: the work is `imagegw.runners.stepfunctions.notify.notify` in the shared layer. It needs
no provider key, and reads only the deployment's webhook secret.
"""

from __future__ import annotations

from typing import Any

from aws_lambda_powertools.metrics import MetricUnit
from aws_lambda_powertools.utilities.typing import LambdaContext

from imagegw.infra.log import logger
from imagegw.infra.telemetry import metrics, tracer
from imagegw.runners.stepfunctions import notify, steps


@logger.inject_lambda_context(correlation_id_path="job_id || batch_id")
@tracer.capture_lambda_handler(capture_response=False)
@metrics.log_metrics
def lambda_handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    try:
        delivered = steps.run_step(notify.notify, event)
    except notify.WebhookDeliveryError:
        metrics.add_metric(name="WebhookAttemptsFailed", unit=MetricUnit.Count, value=1)
        raise
    metrics.add_metric(name="WebhooksDelivered", unit=MetricUnit.Count, value=1)
    return delivered
