"""The API function's metrics: what each request did, written as one CloudWatch EMF line (and
one line per error code) on stdout when the request is over.

Why not Powertools' `log_metrics` as the task functions use it (`imagegw.infra.telemetry`): the API
function is an ASGI app under the Lambda Web Adapter, with no handler to wrap, and one process
may serve requests concurrently (`make run`). So each request gathers its figures in a
`Recorder` of its own (a context variable the request's tasks inherit), and `RequestLog` writes
them after the answer's last byte: a stream is never held up by a flush, and no request flushes
another's half-counted figures. Code outside a request (the job tasks) records nothing.

Metrics (namespace POWERTOOLS_METRICS_NAMESPACE, dimension service): Requests; Errors (answers
with status >= 500); Failures with dimension ErrorCode (every error answer or streamed error,
by its `code`); Generations, ImagesGenerated, GenerationSeconds (a generation that made images);
DetectionLag (seconds between the last poll that saw a task running and the one that saw it end:
how late, at most, the gateway noticed); ColdStart (the first request of a process).
POWERTOOLS_METRICS_DISABLED=true (`make run`, the tests) turns them all off.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import sys
from collections import Counter
from contextvars import ContextVar, Token
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Final

from aws_lambda_powertools.metrics import Metrics, MetricUnit, single_metric

from imagegw.errors import GatewayError
from imagegw.infra.jsontext import encoder_of

SERVICE = os.environ.get("POWERTOOLS_SERVICE_NAME", "image-gateway")
NAMESPACE = os.environ.get("POWERTOOLS_METRICS_NAMESPACE", "ImageGateway")


@dataclass
class Recorder:
    """The figures of one request."""

    counts: Counter[str] = field(default_factory=Counter)
    seconds: dict[str, list[float]] = field(default_factory=dict)
    codes: Counter[str] = field(default_factory=Counter)


_current: ContextVar[Recorder | None] = ContextVar("imagegw_api_metrics", default=None)
_cold = True


def disabled() -> bool:
    return os.environ.get("POWERTOOLS_METRICS_DISABLED", "").strip().lower() in ("true", "1")


def count(name: str, value: int = 1) -> None:
    recorder = _current.get()
    if recorder is not None:
        recorder.counts[name] += value


def seconds(name: str, value: float) -> None:
    recorder = _current.get()
    if recorder is not None:
        recorder.seconds.setdefault(name, []).append(round(max(0.0, value), 3))


def failure(exc: BaseException) -> None:
    """An error a client is told about, counted by its code (`internal_error` when unknown)."""
    recorder = _current.get()
    if recorder is not None:
        code = exc.code if isinstance(exc, GatewayError) and exc.code else "internal_error"
        recorder.codes[str(code)] += 1


def begin() -> Token[Recorder | None]:
    """Start gathering a request's figures (in the request's task, before the app runs)."""
    return _current.set(Recorder())


def finish(token: Token[Recorder | None], status: int) -> Recorder | None:
    """End the request: write its figures (unless disabled); the recorder, for the tests."""
    global _cold
    recorder = _current.get()
    _current.reset(token)
    if recorder is None:
        return None
    recorder.counts["Requests"] += 1
    if status >= 500 or status == 0:  # 0: the app failed before answering
        recorder.counts["Errors"] += 1
    if _cold:
        recorder.counts["ColdStart"] += 1
        _cold = False
    if not disabled():
        write(recorder)
    return recorder


#: what Powertools' EMF flush passes json.dumps, built once (`jsontext.encoder_of`)
_encode = encoder_of(json.JSONEncoder(separators=(",", ":")), own_values=True)
#: values of one metric in one EMF line at most (CloudWatch's limit; Powertools flushes then)
MAX_VALUES: Final = 100


@lru_cache(maxsize=256)
def _declared(shape: tuple[tuple[str, str], ...], dimensions: tuple[str, ...]) -> str:
    """The `CloudWatchMetrics` part of an EMF line (the metrics' names and units, the
    dimensions' names), encoded once per shape: a request's lines mostly have the same few."""
    return _encode(
        [
            {
                "Namespace": NAMESPACE,
                "Dimensions": [list(dimensions)],
                "Metrics": [{"Name": name, "Unit": unit} for name, unit in shape],
            }
        ]
    )


def emf_line(metrics: list[tuple[str, str, list[float]]], dimensions: dict[str, str]) -> str:
    """One EMF line as Powertools' `Metrics.flush_metrics` prints it, to the byte: the metrics
    (name, unit, values) with `dimensions` (the service's first), stamped now. What it declares
    is encoded once per shape (`_declared`), its values at each line."""
    stamp = int(dt.datetime.now().timestamp() * 1000)
    declared = _declared(tuple((name, unit) for name, unit, _ in metrics), tuple(dimensions))
    said = _encode({**dimensions, **{name: values for name, _, values in metrics}})
    return f'{{"_aws":{{"Timestamp":{stamp},"CloudWatchMetrics":{declared}}},{said[1:]}'


def write(recorder: Recorder) -> None:
    """The figures as EMF lines on stdout (CloudWatch Logs turns them into metrics): Powertools'
    lines, written without building its metric set and validators for every request, all of
    them in one write (`print` writes a line's end apart: with PYTHONUNBUFFERED, as on Lambda,
    two writes to the pipe a line)."""
    figures = [(name, "Count", [float(value)]) for name, value in recorder.counts.items()]
    figures += [
        (name, "Seconds", [float(value) for value in values])
        for name, values in recorder.seconds.items()
    ]
    if any(len(values) > MAX_VALUES for _, _, values in figures):
        _write_through_powertools(recorder)  # lines split as Powertools splits them
        return
    lines = [emf_line(figures, {"service": SERVICE})] if figures else []
    lines += [
        emf_line([("Failures", "Count", [float(times)])], {"service": SERVICE, "ErrorCode": code})
        for code, times in recorder.codes.items()
    ]
    if lines:
        sys.stdout.write("".join(f"{line}\n" for line in lines))


def _write_through_powertools(recorder: Recorder) -> None:
    metrics = Metrics(namespace=NAMESPACE, service=SERVICE)
    for name, value in recorder.counts.items():
        metrics.add_metric(name=name, unit=MetricUnit.Count, value=value)
    for name, values in recorder.seconds.items():
        for figure in values:
            metrics.add_metric(name=name, unit=MetricUnit.Seconds, value=figure)
    metrics.flush_metrics()
    for code, times in recorder.codes.items():
        with single_metric(
            name="Failures",
            unit=MetricUnit.Count,
            value=times,
            namespace=NAMESPACE,
            default_dimensions={"service": SERVICE},
        ) as metric:
            metric.add_dimension(name="ErrorCode", value=code)
