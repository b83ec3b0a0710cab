"""The one structured logger (Powertools). Never log provider keys or Authorization headers.

As a second line of defence every line it writes is redacted of the secrets registered for the
current request or job step (`imagegw.redaction`), tracebacks included.
"""

from __future__ import annotations

import logging
import os

from aws_lambda_powertools import Logger

from imagegw import redaction

logger = Logger(service=os.environ.get("POWERTOOLS_SERVICE_NAME", "image-gateway"))


def _redact_lines(handler: logging.Handler) -> None:
    formatter = handler.formatter
    if formatter is None or getattr(formatter, "_imagegw_redacts", False):
        return
    original = formatter.format

    def format_redacted(record: logging.LogRecord) -> str:
        line = original(record)
        return redaction.redact(line, limit=None) if redaction.protected() else line

    formatter.format = format_redacted  # type: ignore[method-assign]
    formatter._imagegw_redacts = True  # type: ignore[attr-defined]


_redact_lines(logger.registered_handler)
