"""Lambda HTTP events and the app's HTTP exchanges, mapped both ways as the AWS Lambda Web
Adapter maps them (standard library only: the emulator level's stub adapter runs it on the
Lambda runtime's Python).

Event to request:

The adapter (awslabs/aws-lambda-web-adapter, `src/lib.rs` `fetch_response`) parses the event
with the `lambda_http` crate and forwards it to `http://127.0.0.1:$PORT`:

- path: the event's *raw* path (`RawHttpPath`), i.e. `rawPath` for payload 2.0 (Function URL,
  HTTP API) and `path` for payload 1.0 (API Gateway REST). For REST that path carries no stage
  (`/modelscope/v1/models`, not `/Prod/modelscope/v1/models`): the stage is only added to the
  URI that the adapter does not use. Nothing is stripped unless `AWS_LWA_REMOVE_BASE_PATH` is set.
- query: `rawQueryString` (2.0); for 1.0 `multiValueQueryStringParameters` when present, else
  `queryStringParameters`, form-encoded.
- headers: 2.0 `headers` (already lower-case, repeated values comma-joined) plus a `cookie`
  header made of the `cookies` array joined with ";" (as `lambda_http` does); 1.0
  `multiValueHeaders` preferred over `headers`. The adapter adds `x-amzn-request-context`
  (the event's request context as JSON) and `x-amzn-lambda-context`; only the first is known
  from the event alone.
- body: base64-decoded when `isBase64Encoded`, else the UTF-8 bytes of the string.

Response to Lambda's answer (`response_head`, `lambda_response`): the status, the headers
without hop-by-hop ones, and for payload 2.0 `headers` (repeated values comma-joined) plus
`cookies` (the `set-cookie` values), for 1.0 `multiValueHeaders`. A streamed answer (the
adapter's `response_stream` mode) starts with that head, and the body follows as it comes.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlencode

REQUEST_CONTEXT_HEADER = "x-amzn-request-context"
#: hop-by-hop headers the adapter does not hand back
HOP_BY_HOP = frozenset({"connection", "keep-alive", "transfer-encoding"})


@dataclass(frozen=True)
class HttpRequest:
    """An HTTP request as the app receives it from the Web Adapter."""

    method: str
    path: str
    query_string: str = ""
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""

    @property
    def target(self) -> str:
        """Path plus ``?query`` when there is one: the request target on the wire."""
        return f"{self.path}?{self.query_string}" if self.query_string else self.path

    def json(self) -> Any:
        """The body parsed as JSON."""
        return json.loads(self.body)


def to_http_request(event: Mapping[str, Any]) -> HttpRequest:
    """The request the Web Adapter forwards for ``event`` (payload format 2.0 or 1.0).

    Raises ``ValueError`` for an event that is not an HTTP event of either format.
    """
    if event.get("version") == "2.0" and "rawPath" in event:
        return _from_v2(event)
    if "httpMethod" in event and "path" in event:
        return _from_v1(event)
    raise ValueError("not a Lambda HTTP event (payload format 2.0 or 1.0)")


def _from_v2(event: Mapping[str, Any]) -> HttpRequest:
    """Function URL / HTTP API payload 2.0."""
    headers = {str(k).lower(): str(v) for k, v in (event.get("headers") or {}).items()}
    cookies = event.get("cookies")
    if cookies:
        headers["cookie"] = ";".join(str(c) for c in cookies)
    _add_request_context(headers, event)
    return HttpRequest(
        method=str(event["requestContext"]["http"]["method"]).upper(),
        path=str(event["rawPath"]),
        query_string=str(event.get("rawQueryString") or ""),
        headers=headers,
        body=_body(event),
    )


def _from_v1(event: Mapping[str, Any]) -> HttpRequest:
    """API Gateway REST (and HTTP API payload 1.0) proxy event."""
    headers: dict[str, str] = {
        str(k).lower(): str(v) for k, v in (event.get("headers") or {}).items()
    }
    for name, values in (event.get("multiValueHeaders") or {}).items():
        if name and values:  # the AWS docs' sample carries an empty name; the adapter skips it
            headers[str(name).lower()] = ", ".join(str(v) for v in values)
    _add_request_context(headers, event)

    multi = event.get("multiValueQueryStringParameters") or {}
    single = event.get("queryStringParameters") or {}
    query = urlencode(multi, doseq=True) if multi else urlencode(single)
    return HttpRequest(
        method=str(event["httpMethod"]).upper(),
        path=str(event["path"]),
        query_string=query,
        headers=headers,
        body=_body(event),
    )


def _add_request_context(headers: dict[str, str], event: Mapping[str, Any]) -> None:
    context = event.get("requestContext")
    if context is not None:
        headers[REQUEST_CONTEXT_HEADER] = json.dumps(context, separators=(",", ":"))


def _body(event: Mapping[str, Any]) -> bytes:
    body = event.get("body")
    if body is None:
        return b""
    if event.get("isBase64Encoded"):
        return base64.b64decode(body, validate=True)
    return str(body).encode("utf-8")


def response_head(
    event: Mapping[str, Any], status: int, headers: Iterable[tuple[str, str]]
) -> dict[str, Any]:
    """Lambda's answer for ``event`` without its body: the status and the app's headers in the
    event's payload format (what a streamed answer starts with)."""
    pairs = [(k.lower(), v) for k, v in headers if k.lower() not in HOP_BY_HOP]
    head: dict[str, Any] = {"statusCode": status}
    if event.get("version") == "2.0":  # Function URL / HTTP API: payload format 2.0
        joined: dict[str, str] = {}
        for name, value in pairs:
            if name != "set-cookie":
                joined[name] = f"{joined[name]},{value}" if name in joined else value
        head["headers"] = joined
        head["cookies"] = [value for name, value in pairs if name == "set-cookie"]
    else:  # REST API: payload format 1.0
        multi: dict[str, list[str]] = {}
        for name, value in pairs:
            multi.setdefault(name, []).append(value)
        head["multiValueHeaders"] = multi
    return head


def lambda_response(
    event: Mapping[str, Any], status: int, headers: Iterable[tuple[str, str]], body: bytes
) -> dict[str, Any]:
    """Lambda's whole (buffered) answer for ``event``: the head and the body, base64."""
    return {
        **response_head(event, status, headers),
        "body": base64.b64encode(body).decode(),
        "isBase64Encoded": True,
    }
