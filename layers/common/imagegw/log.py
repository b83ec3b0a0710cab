"""The one structured logger (Powertools). Never log provider keys or Authorization headers."""

from __future__ import annotations

import os

from aws_lambda_powertools import Logger

logger = Logger(service=os.environ.get("POWERTOOLS_SERVICE_NAME", "image-gateway"))
