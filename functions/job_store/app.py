"""Step Functions tasks `Store` and `Release` of the image-job state machine.

`Store`: copy the result images into the bucket under images/; the execution's output names
them (lasting /v1/files links); a gateway key's job settles its quota here. `Release` (an event
with `release: true`): Submit's retries ran out with nothing started, so a gateway key's job
gives its quota reservation back. One function for both: Release is rare and small.

Thin: the work is `imagegw.runners.stepfunctions.steps.store` / `release` in the shared layer;
it needs no provider key.
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
    if event.get("release") is True:
        released = steps.run(steps.release, event)
        metrics.add_metric(name="JobsReleased", unit=MetricUnit.Count, value=1)
        return released
    output = steps.run(steps.store, event)
    metrics.add_metric(name="JobsSucceeded", unit=MetricUnit.Count, value=1)
    metrics.add_metric(name="ImagesStored", unit=MetricUnit.Count, value=len(output["images"]))
    return output
