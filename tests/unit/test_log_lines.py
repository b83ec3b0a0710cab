"""The gateway's JSON log lines (`imagegw.infra.log.JsonFormatter`) are Powertools' own lines to
the byte: the same fields, in the same order, with the same values, for every kind of line (plain
and JSON messages, %-arguments, extra fields, request keys, errors with their tracebacks),
only cheaper to make."""

from __future__ import annotations

import io
import json
import logging
import sys
import time
from collections.abc import Callable

import pytest
from aws_lambda_powertools import Logger

from imagegw.infra.log import JsonFormatter, json_or_text, logger

Write = Callable[[Logger], None]


def boom() -> None:
    raise ValueError("the bucket failed")


def failing(log: Logger) -> None:
    try:
        boom()
    except ValueError:
        log.exception("result lost", extra={"error": "bucket"})


LINES: dict[str, Write] = {
    "plain": lambda log: log.info("request", extra={"method": "POST", "status": 200, "ms": 12}),
    "json object": lambda log: log.info('{"a": 1, "b": [1, 2]}'),
    "json after spaces": lambda log: log.info('  \n [1, "x"]'),
    "a number, true, null": lambda log: [log.info(m) for m in ("-12.5", "true", "null")],
    "not quite json": lambda log: log.info("{broken"),
    "empty": lambda log: log.info(""),
    "arguments": lambda log: log.warning("%s tasks of %d", "two", 3),
    "unicode and objects": lambda log: log.info(
        "café ✓", extra={"ids": ("a", "b"), "at": time.gmtime(0), "n": None}
    ),
    "error": failing,
    "extra fields named like later ones": lambda log: log.info(
        "x", extra={"exception_name": "mine", "stack_trace": "s", "xray_trace_id": "t"}
    ),
    "a dict message": lambda log: log.info({"a": 1}, extra={"b": 2}),
    "sentences that begin like JSON words": lambda log: [
        log.info(m) for m in ("tasks started", "null and void", " NaN", "Infinity\n", "fals")
    ],
}


Pair = tuple[Logger, io.StringIO, Logger, io.StringIO]


@pytest.fixture
def pair(request: pytest.FixtureRequest) -> Pair:
    """Two Loggers writing to two buffers: with Powertools' formatter and with ours (a
    Powertools Logger is one per service name, so each has its own)."""
    stock_out, ours_out = io.StringIO(), io.StringIO()
    name = request.node.name
    stock = Logger(service=f"stock-{name}", stream=stock_out)
    ours = Logger(service=f"ours--{name}", stream=ours_out, logger_formatter=JsonFormatter())
    return stock, stock_out, ours, ours_out


@pytest.mark.parametrize("kind", sorted(LINES))
def test_a_line_is_powertools_own_line(kind: str, pair: Pair) -> None:
    stock, stock_out, ours, ours_out = pair
    for log in (stock, ours):
        log.thread_safe_append_keys(request_id="r-1")
        log.append_keys(job_id="j-1")
    try:
        # When each writes the same line at the same moment (the records' clock: time_ns on
        # 3.13, time before)
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(time, "time_ns", lambda: 1_765_000_000_250_000_000)
            patch.setattr(time, "time", lambda: 1_765_000_000.25)
            LINES[kind](stock)
            LINES[kind](ours)
    finally:
        stock.thread_safe_remove_keys(["request_id"])
    # Then the lines are the same to the byte (but for the service names, of the same length)
    written = stock_out.getvalue().replace(f'"{stock.service}"', f'"{ours.service}"')
    assert written.count('"level"') >= 1
    assert ours_out.getvalue() == written


def test_a_structure_of_the_owners_is_rendered_as_powertools_renders_it() -> None:
    # Given a Logger whose fields render other record attributes (and one that is not text)
    outs = io.StringIO(), io.StringIO()
    for out, formatter in zip(outs, (None, JsonFormatter()), strict=True):
        log = Logger(
            service=f"structure-{len(out.getvalue())}-{formatter is None}",
            stream=out,
            logger_formatter=formatter,
        )
        log.append_keys(location="%(module)s", level="%(levelno)d", sampled=3)
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(time, "time_ns", lambda: 1_765_000_000_250_000_000)
            patch.setattr(time, "time", lambda: 1_765_000_000.25)
            log.info("structured", extra={"n": 1})
    # Then ours writes Powertools' line
    stock, ours = (out.getvalue() for out in outs)
    assert '"location":"test_log_lines"' in stock
    assert ours.replace('-False"', '-True"') == stock


def test_the_gateways_logger_uses_it() -> None:
    assert isinstance(logger.registered_handler.formatter, JsonFormatter)


def test_a_message_is_read_as_json_when_it_is_json() -> None:
    assert json_or_text('{"a": 1}') == {"a": 1}
    assert json_or_text(" 7") == 7
    assert json_or_text("request") == "request"
    assert json_or_text("tasks started") == "tasks started"
    assert json_or_text(" false\n") is False
    with pytest.raises(ValueError, match="Expecting"):
        json_or_text("{broken")


def test_the_timestamp_follows_the_clock_across_seconds() -> None:
    formatter = JsonFormatter()
    reference = Logger(service="timestamps", stream=io.StringIO()).registered_handler.formatter
    assert reference is not None
    for created in (10.999, 11.0, 11.5, 3600.001, 86399.999):
        record = logging.LogRecord("x", logging.INFO, __file__, 1, "m", None, None)
        record.created, record.msecs = created, (created - int(created)) * 1000 // 1
        assert formatter.formatTime(record) == reference.formatTime(record)


def two_sites(lines: list[int]) -> None:
    """Logs from two places, three times each (the line of each call noted just before it)."""
    for _ in range(3):
        lines.append(sys._getframe().f_lineno + 1)
        logger.info("first site")
        lines.append(sys._getframe().f_lineno + 1)
        logger.info("second site", extra={"n": 2})


def test_each_line_says_where_it_was_written(monkeypatch: pytest.MonkeyPatch) -> None:
    # Given the gateway's logger writing to a buffer
    out = io.StringIO()
    handler = logger.registered_handler
    assert isinstance(handler, logging.StreamHandler)
    monkeypatch.setattr(handler, "stream", out)
    lines: list[int] = []

    # When a function logs from two places, again and again, untraced (as deployed) and traced
    previous = sys.gettrace()
    sys.settrace(None)
    try:
        two_sites(lines)
    finally:
        sys.settrace(previous)
    two_sites(lines)

    # Then every line's location is its own call's: function and line
    written = [json.loads(line)["location"] for line in out.getvalue().splitlines()]
    assert written == [f"two_sites:{line}" for line in lines]
    assert len(set(written)) == 2
