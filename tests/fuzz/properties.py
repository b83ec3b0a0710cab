"""The properties every answer of the gateway must have, as pure checks.

Each check returns `Problem`s (a property's name and what was seen); `World.exchange` runs them
on every request of the fuzz and fails the example on the first one (or records them all in
survey mode). Property names group the failures in reports:

- `5xx`: a 5xx that is not a provider's genuine failure (a 502/504 of type provider_error or
  timeout_error after the provider was called, or that failure answered again to the same
  request: `x-gateway-replayed`);
- `error-shape`: an error body not exactly `{"error":{"message","type","param","code"}}`;
- `should-retry`: an error without `x-should-retry: true|false`;
- `sse`: an event stream not ending with `data: [DONE]`, or an in-stream error not in shape;
- `key-leak`: 8 or more characters of the key in an answer (status line, headers, body);
- `log-key-leak`, `log-error`: the key in a log line; an ERROR record or a traceback;
- `ssrf`: the gateway connected to an address on a client's behalf (not a provider's);
- `stored-for-refused`: a request refused before any provider saw it uploaded an image or
  started a job;
- `key-shape`: a key that is not printable ASCII (or absurdly long) not refused before any
  provider call, upload or job;
- `no-answer`: no complete answer to a request sent whole (or to a stalled one in time);
- `hung`: an abandoned request still running long after its client left;
- `result` (checked by `World`): a lasting link of a 200 answer that does not give its image,
  a `b64_json` item that is not an image;
- `jobs` (checked by the jobs test): the submitter cannot read its job, a stranger can, a
  retried submission starts another job, a reused Idempotency-Key is not a 409.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from fuzz.wire import RawResponse

#: error types of a provider's genuine failure (the gateway's 502 and 504)
PROVIDER_FAILURE_TYPES = frozenset({"provider_error", "timeout_error"})
ERROR_KEYS = frozenset({"message", "type", "param", "code"})


@dataclass(frozen=True)
class Problem:
    prop: str
    detail: str
    #: what tells one defect from another within a property (for a logged error: the
    #: exception and the gateway function it came from)
    cause: str = ""

    def __str__(self) -> str:
        return f"[{self.prop}] {self.detail}"


def key_windows(key: str, width: int = 8) -> tuple[bytes, ...]:
    """Every run of `width` characters of `key` that holds at least one of its secret
    characters (the fixed `sk-FUZZ-` prefix alone is no secret)."""
    prefix = key.index("-", 3) + 1  # "sk-FUZZ-"
    return tuple(
        key[i : i + width].encode() for i in range(len(key) - width + 1) if i + width > prefix
    )


def leaks(blob: bytes, windows: Iterable[bytes]) -> bytes | None:
    """The first window found in `blob` (case-sensitive), or None."""
    return next((w for w in windows if w in blob), None)


def is_protocol_refusal(response: RawResponse) -> bool:
    """uvicorn's own answer to bytes that are not HTTP (the app never saw the request; on
    Lambda the Function URL refuses such requests before the function runs)."""
    return (
        response.status == 400
        and response.header("x-request-id") is None
        and response.content_type == "text/plain"
    )


def error_shape(body: Any) -> str | None:
    """What is wrong with an OpenAI-shaped error body, or None."""
    if not isinstance(body, dict) or set(body) != {"error"}:
        return f"not {{'error': ...}}: {str(body)[:200]}"
    error = body["error"]
    if not isinstance(error, dict) or set(error) != ERROR_KEYS:
        return f"error keys are {sorted(error) if isinstance(error, dict) else type(error)}"
    if not isinstance(error["message"], str) or not error["message"]:
        return "message is not a non-empty string"
    if not isinstance(error["type"], str):
        return "type is not a string"
    for name in ("param", "code"):
        if error[name] is not None and not isinstance(error[name], str):
            return f"{name} is {type(error[name]).__name__}, not a string or null"
    return None


def check_answer(response: RawResponse, *, method: str, provider_called: bool) -> list[Problem]:
    """Status, error shape, retry hint and event-stream framing of one answer."""
    problems: list[Problem] = []
    if is_protocol_refusal(response):
        return problems
    status = response.status
    body: Any = None
    parsed = False
    if response.content_type == "application/json" and method.upper() != "HEAD":
        try:
            body = json.loads(response.body)
            parsed = True
        except ValueError:
            problems.append(Problem("error-shape", f"{status} JSON body does not parse"))
    error_type = None
    if status >= 400:
        if method.upper() != "HEAD":
            shape = error_shape(body) if parsed else f"content type {response.content_type!r}"
            if shape:
                problems.append(Problem("error-shape", f"{status}: {shape}"))
            elif isinstance(body, dict):
                error_type = body["error"]["type"]
        retry = response.header("x-should-retry")
        if retry not in ("true", "false"):
            problems.append(Problem("should-retry", f"{status} has x-should-retry {retry!r}"))
    if status >= 500:
        # a provider's genuine failure: the provider was called (it failed by itself, or the
        # fuzz told the fake to fail) and the gateway says so as a 502/504 of a provider type;
        # or such a failure of the same request moments ago, answered again without a new
        # submission (`x-gateway-replayed`: its task polled again at most; a retrying client
        # must not pay twice)
        replayed = response.header("x-gateway-replayed") == "true"
        genuine = (
            (provider_called or replayed)
            and status in (502, 504)
            and error_type in PROVIDER_FAILURE_TYPES
        )
        if not genuine:
            message = body["error"]["message"] if error_type else response.body[:200]
            problems.append(Problem("5xx", f"{status} {error_type or ''}: {message!r}"))
    if response.content_type == "text/event-stream":
        problems += check_stream(response.body)
    return problems


def check_stream(body: bytes) -> list[Problem]:
    """An SSE body: ends with `data: [DONE]`; every `data: {"error":...}` in shape."""
    problems: list[Problem] = []
    events = [e for e in body.replace(b"\r\n", b"\n").split(b"\n\n") if e.strip()]
    data = [e[5:].strip() for e in events if e.startswith(b"data:")]
    if not data or data[-1] != b"[DONE]":
        problems.append(Problem("sse", f"stream does not end with [DONE]: {body[-200:]!r}"))
    for item in data[:-1]:
        try:
            payload = json.loads(item)
        except ValueError:
            problems.append(Problem("sse", f"event is not JSON: {item[:200]!r}"))
            continue
        if isinstance(payload, dict) and "error" in payload:
            shape = error_shape(payload)
            if shape:
                problems.append(Problem("sse", f"in-stream error: {shape}"))
    return problems


_BEARER = re.compile(r"^\s*Bearer\s+(\S+)\s*$", re.IGNORECASE)
#: longer than any provider's key: a key this long is refused before anything starts
MAX_KEY_CHARS = 4096
#: the routes that take the client's key
KEYED = ("/chat/completions", "/images/generations", "/images/edits", "/jobs/")


def unshapely_key(authorization: bytes | None) -> str | None:
    """Why the bearer token of `authorization` cannot be a key (not printable ASCII, or too
    long), or None (no token, or a token of a key's shape)."""
    if authorization is None:
        return None
    match = _BEARER.match(authorization.decode("latin-1"))
    if match is None:
        return None
    token = match.group(1)
    if len(token) > MAX_KEY_CHARS:
        return f"a key of {len(token)} characters"
    odd = next((c for c in token if not "!" <= c <= "~"), None)
    return None if odd is None else f"a key holding {odd!r}"


def check_leak(response: RawResponse, windows: tuple[bytes, ...]) -> list[Problem]:
    found = leaks(response.raw, windows)
    if found is None:
        return []
    at = response.raw.find(found)
    context = response.raw[max(0, at - 80) : at + 40]
    return [Problem("key-leak", f"{found.decode()!r} in the answer: ...{context!r}...")]


def check_logs(lines: Iterable[tuple[int, str, str]], windows: tuple[bytes, ...]) -> list[Problem]:
    """Log lines (level, logger, text) logged meanwhile: no key, no error, no traceback."""
    problems: list[Problem] = []
    for level, name, text in lines:
        blob = text.encode("utf-8", "backslashreplace")
        found = leaks(blob, windows)
        if found is not None:
            problems.append(Problem("log-key-leak", f"{found.decode()!r} in {name}: {text[:300]}"))
        if level >= 40 or "Traceback" in text:
            summary, cause = traceback_summary(text)
            problems.append(Problem("log-error", f"{name}: {summary}", cause))
    return problems


def traceback_summary(text: str) -> tuple[str, str]:
    """A logged error in one line (its message, the innermost frame of the gateway's own code,
    the exception), and its cause: the exception's class and that frame's function."""
    try:
        record = json.loads(text)  # the gateway's Powertools line
        message, trace = str(record.get("message", "")), str(record.get("exception") or "")
    except (ValueError, AttributeError):
        message, trace = text.split("\n", 1)[0], text
    lines = [line.strip() for line in trace.splitlines() if line.strip()]
    frames = [line for line in lines if line.startswith("File ") and "/imagegw/" in line]
    exception = next(
        (line for line in reversed(lines) if not line.startswith(("File ", "^", "~"))), ""
    )
    where = frames[-1].split("/imagegw/")[-1] if frames else "no gateway frame"
    function = where.rsplit(" in ", 1)[-1] if frames else "unknown"
    named = re.match(r"[\w.]+", exception)
    kind = named.group(0).rsplit(".", 1)[-1] if named and "Traceback" in trace else ""
    codec = re.search(r"'([\w-]+)' codec", exception)
    if codec:
        kind += "_" + codec.group(1).replace("-", "")
    summary = f"{message[:120]} | {where} | {exception[:200]}"
    return summary, f"{kind}_in_{function}" if kind else ""
