"""The one structured logger (Powertools). Never log provider keys or Authorization headers.

As a second line of defence every line it writes is redacted of the secrets registered for the
current request or job step (`imagegw.redaction`), tracebacks included.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from collections.abc import Callable
from types import CodeType, FrameType
from typing import Any, Final

from aws_lambda_powertools import Logger
from aws_lambda_powertools.logging.formatter import (
    RESERVED_LOG_ATTRS,
    THREAD_LOCAL_KEYS,
    LambdaPowertoolsFormatter,
)

from imagegw import redaction
from imagegw.infra.jsontext import encoder_of

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


#: a record's attributes that are not extra fields, as Powertools tells them apart
_RESERVED: Final = frozenset(RESERVED_LOG_ATTRS)
#: the fields Powertools renders from a record by default, rendered here without `%`
_LEVEL: Final = "%(levelname)s"
_LOCATION: Final = "%(funcName)s:%(lineno)d"
_ASCTIME: Final = "%(asctime)s"

#: how a JSON text can begin (json.loads skips whitespace first)
_JSON_STARTS: Final = frozenset('{["-0123456789tfnNI')
#: JSON texts that begin with a letter: these words alone (json.loads takes Python's NaN and
#: Infinity too), whitespace around them aside
_JSON_WORDS: Final = frozenset({"true", "false", "null", "NaN", "Infinity"})
_JSON_SPACE: Final = " \t\n\r"


def json_or_text(message: str) -> Any:
    """A log message as Powertools reads one (the value, when it is JSON; else the text), without
    letting json.loads raise for every plain sentence: a message no JSON text begins like is
    given back as it is, which is what Powertools does when json.loads fails. So is one that
    begins with a letter and is not one of JSON's words alone ("tasks started")."""
    first = message.lstrip(_JSON_SPACE)[:1]
    if first not in _JSON_STARTS:
        return message
    if first.isalpha() and message.strip(_JSON_SPACE) not in _JSON_WORDS:
        return message
    return json.loads(message)


class JsonFormatter(LambdaPowertoolsFormatter):
    """Powertools' JSON formatter, its lines the same to the byte, at a lower cost a line: its
    documented options (`json_deserializer`: `json_or_text`) and public methods only
    (`serialize`, with one JSON encoder built once instead of one a line, and called without
    `json.JSONEncoder.encode`'s work at each call: `imagegw.infra.jsontext`; `formatTime`, whose
    default format is rendered once a second and the milliseconds added to it; `format`, which
    builds a line without copying the record, for a record with neither an exception nor
    %-arguments: the others, rare, through Powertools' own)."""

    def __init__(self, **options: Any) -> None:
        # Powertools types the option as giving a str; it takes what json.loads gives
        super().__init__(json_deserializer=json_or_text, **options)  # type: ignore[arg-type]
        # what Powertools' default serializer passes json.dumps, a line at a time (a line's
        # extra fields are anyone's values: checked for holding themselves, as json.dumps does)
        self._encode = encoder_of(
            json.JSONEncoder(
                default=self.json_default,
                separators=(",", ":"),
                indent=self.json_indent,
                ensure_ascii=False,
            )
        )
        self._second: tuple[int, str, str] = (-1, "", "")

    def serialize(self, log: dict[str, Any]) -> str:  # type: ignore[override]
        return self._encode(log)

    def format(self, record: logging.LogRecord) -> str:
        """Powertools' `format` (its fields, their order and values): the structure's keys
        (`log_format`, then the context's), `%`-fields rendered from the record, the extra
        fields, the message (JSON when it reads as JSON), the exception's fields, the trace id,
        and no field whose value is None. (Powertools gives the exception's fields None when
        absent, and leaves every None out at the end: here the keys given None are noted as
        they are, and those still None at the end left out, the others' order unchanged.)"""
        if record.args or record.exc_info is not None:
            return super().format(record)
        asctime = self.formatTime(record)
        log: dict[str, Any] = {}
        empty: list[str] = []  # the keys given None
        for keys in (self.log_format, THREAD_LOCAL_KEYS.get()):
            for key, value in keys.items():
                if value and key in _RESERVED:
                    if value == _LEVEL:
                        log[key] = record.levelname
                    elif value == _LOCATION:
                        log[key] = f"{record.funcName}:{record.lineno:d}"
                    elif value == _ASCTIME:
                        log[key] = asctime
                    else:  # rendered (or refused) as Powertools does
                        return super().format(record)
                else:
                    log[key] = value
                    if value is None:
                        empty.append(key)
        for key, value in record.__dict__.items():
            if key not in _RESERVED:
                log[key] = value
                if value is None:
                    empty.append(key)
        message = record.msg
        if isinstance(message, str):
            try:
                message = self.json_deserializer(message)
            except (TypeError, ValueError):  # json.JSONDecodeError included: the text
                message = record.msg
        log["message"] = message
        if message is None:
            empty.append("message")
        if self.serialize_stacktrace:
            log["stack_trace"] = None  # what Powertools makes of a record without exc_info
            empty.append("stack_trace")
        trace = log["xray_trace_id"] = self._get_latest_trace_id()
        if trace is None:
            empty.append("xray_trace_id")
        for key in empty:
            if key in log and log[key] is None:
                del log[key]
        return self._encode(log)

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        if datefmt or self.datefmt or self.use_rfc3339_iso8601:
            return super().formatTime(record, datefmt)
        second = int(record.created)
        cached = self._second
        if cached[0] != second:  # Powertools' default: "%Y-%m-%d %H:%M:%S,<ms>%z"
            moment = self.converter(second)
            cached = (
                second,
                time.strftime("%Y-%m-%d %H:%M:%S,", moment),
                time.strftime("%z", moment),
            )
            self._second = cached
        return f"{cached[1]}{int(record.msecs):03d}{cached[2]}"


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
    logger_formatter=ConsoleFormatter() if _CONSOLE else JsonFormatter(),
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


#: (a code object's id, the offset of an instruction in it) -> (that code, the instruction's
#: line): the line of a call site that logs, worked out once. A frame's `f_lineno` reads its
#: code's line table from the start at every call (~8,000 instructions, 2-3 us, for a long
#: function such as a route's): three lines a request. The code is kept beside its line, so an
#: id in the table is never another code's; the table is emptied when full.
_LINES: dict[tuple[int, int], tuple[CodeType, int]] = {}
_LINES_MAX: Final = 4096
#: how `logging` tells its own frames (and importlib's) from the caller's (Python 3.11+)
_internal: Callable[[FrameType], bool] | None = getattr(logging, "_is_internal_frame", None)


def line_of(frame: FrameType) -> int:
    """`frame.f_lineno`, from the table when the frame's code and instruction are known (a
    traced frame's line, which its tracer may set, is always read)."""
    if frame.f_trace is not None or sys.gettrace() is not None:
        return frame.f_lineno
    code = frame.f_code
    key = (id(code), frame.f_lasti)
    known = _LINES.get(key)
    if known is not None and known[0] is code:
        return known[1]
    line = frame.f_lineno
    if len(_LINES) >= _LINES_MAX:
        _LINES.clear()
    _LINES[key] = (code, line)
    return line


def _locate_lines_once(target: logging.Logger) -> None:
    """The logger's `findCaller` (the `location` field: function and line), the line read from
    `line_of`: the standard library's walk up the stack, the same frame found (a stack asked
    for, or a `logging` without `_is_internal_frame`: its own)."""
    original = target.findCaller
    internal = _internal
    if internal is None:
        return

    def find_caller(
        stack_info: bool = False, stacklevel: int = 1
    ) -> tuple[str, int, str, str | None]:
        if stack_info:
            return original(stack_info, stacklevel)
        frame = sys._getframe(0)
        while stacklevel > 0:
            above = frame.f_back
            if above is None:
                break
            frame = above
            if not internal(frame):
                stacklevel -= 1
        code = frame.f_code
        return code.co_filename, line_of(frame), code.co_name, None

    target.findCaller = find_caller  # type: ignore[method-assign]


_locate_lines_once(logger._logger)
