"""The one structured logger (Powertools). Never log provider keys or Authorization headers.

As a second line of defence every line it writes is redacted of the secrets registered for the
current request or job step (`imagegw.redaction`), tracebacks included.
"""

from __future__ import annotations

import logging
import os
import time
from typing import Any, Final

from aws_lambda_powertools import Logger
from aws_lambda_powertools.logging.formatter import LambdaPowertoolsFormatter

from imagegw import redaction

#: the keys every line carries, left out of a console line
_BOILERPLATE: Final = frozenset(
    {
        "level",
        "location",
        "message",
        "timestamp",
        "service",
        "xray_trace_id",
        "cold_start",
        "function_name",
        "function_memory_size",
        "function_arn",
        "function_request_id",
        "exception",
        "exception_name",
        "exception_notes",
        "stack_trace",
        "request_id",
        "correlation_id",
        "taskName",
    }
)


class ConsoleFormatter(LambdaPowertoolsFormatter):
    """Short human lines for a console (`make run`: IMAGEGW_LOG_FORMAT=text), where a deployed
    function writes JSON: one line a request,
    `12:00:01 POST /v1/images/generations 502 1234 ms provider_unreachable`; of the other lines
    only warnings and errors (`console_filter`), as the time, the level, the message and its
    fields as `name=value`."""

    def serialize(self, log: dict[str, Any]) -> str:  # type: ignore[override]
        stamp = time.strftime("%H:%M:%S")
        message = str(log.get("message", ""))
        if message == "request" and "path" in log:
            line = f"{stamp} {log.get('method', '')} {log['path']} {log.get('status', '')} "
            line += f"{log.get('ms', '')} ms"
            if log.get("error"):
                line += f" {log['error']}"
        else:
            fields = " ".join(
                f"{name}={value}" for name, value in log.items() if name not in _BOILERPLATE
            )
            level = str(log.get("level", "INFO"))
            line = f"{stamp} {level.lower() + ' ' if level != 'INFO' else ''}{message}"
            line += f" ({fields})" if fields else ""
        if log.get("exception"):
            line += "\n" + str(log["exception"])
        return line


def console_filter(record: logging.LogRecord) -> bool:
    """On a console: the request lines, warnings and errors (the rest is in the JSON lines,
    IMAGEGW_LOG_FORMAT=json)."""
    return record.levelno >= logging.WARNING or record.msg == "request"


_CONSOLE: Final = os.environ.get("IMAGEGW_LOG_FORMAT") == "text"
logger = Logger(
    service=os.environ.get("POWERTOOLS_SERVICE_NAME", "image-gateway"),
    logger_formatter=ConsoleFormatter() if _CONSOLE else None,
)
if _CONSOLE:
    logger.registered_handler.addFilter(console_filter)


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
