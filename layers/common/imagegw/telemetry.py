"""Tracer and metrics of the durable-job task functions (their logger is `imagegw.log.logger`).

Only the task functions import this module, so the API function does not load the X-Ray SDK.
Tracing is off outside Lambda (Powertools decides); metrics go out as CloudWatch EMF lines under
`POWERTOOLS_METRICS_NAMESPACE` (`POWERTOOLS_METRICS_DISABLED=true` turns them off, as `make run`
and the tests do).
"""

from __future__ import annotations

import os

from aws_lambda_powertools import Metrics, Tracer

SERVICE = os.environ.get("POWERTOOLS_SERVICE_NAME", "image-gateway")

tracer = Tracer(service=SERVICE)
metrics = Metrics(
    namespace=os.environ.get("POWERTOOLS_METRICS_NAMESPACE", "ImageGateway"), service=SERVICE
)
