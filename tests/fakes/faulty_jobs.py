"""Faults for the durable-job fault matrix (tests/functional/test_faults_jobs.py) and the
interactive bucket faults: a ModelScope that refuses, fails, talks garbage or dies, and a
bucket that cannot be reached.

`FaultyModelScope` is the shared fake (`fakes.modelscope`), wire-faithful, with knobs for
faults that last: every knob is off by default, so it behaves as `FakeModelScope` does.
`BucketOutage` wraps the boto3 S3 client of every `ImageStore` made while it is installed, and
raises for the calls it names what botocore raises when the endpoint cannot be reached.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterable
from typing import Any, Final, Literal

import httpx
import pytest
from botocore.exceptions import EndpointConnectionError
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.types import Receive, Scope, Send

from fakes.faulty import huge, trickle
from fakes.modelscope import RATE_LIMITED, FakeModelScope, _errors, _headers_without_auth
from imagegw.infra.storage import ImageStore

PollFault = Literal["503", "garbage", "cut", "huge", "trickle"]
#: a count that does not run out within a test
ALWAYS: Final = 10**9


class _CutResponse(Response):
    """The provider dying mid-answer: headers and half a body, then the connection closes."""

    def __init__(self) -> None:
        super().__init__(b'{"task_status": "RUN', media_type="application/json")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"content-type", b"application/json"), (b"content-length", b"400")],
            }
        )
        await send({"type": "http.response.body", "body": self.body, "more_body": True})
        # returning without the rest: the server closes the connection mid-body


class FaultyModelScope(FakeModelScope):
    """`FakeModelScope` with lasting faults.

    - ``refuse_submits``: the next N submissions answer 429 (ModelScope's rate limit, nothing
      started); ``ALWAYS`` for a provider that keeps refusing.
    - ``poll_fault`` and ``poll_faults``: the next N polls answer the fault instead of the
      task's status: ``"503"`` (ModelScope's own 503 body), ``"garbage"`` (200 with an HTML
      page, as a proxy in front of it might answer), ``"cut"`` (the connection drops mid-answer:
      the provider dying), ``"huge"`` (a 200 whose body is 200 MB, streamed as it is made),
      ``"trickle"`` (a 200 whose body comes a byte every 0.2 s). The task itself runs on
      meanwhile, on wall time.

    - ``result_links``: the links a succeeded task's status names instead of its files (a
      provider linking to a host no URL parser takes, say).

    Records as the base does; a faulted poll is recorded in ``polls`` with its fault.
    """

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.refuse_submits: int = 0
        self.poll_fault: PollFault = "503"
        self.poll_faults: int = 0
        self.result_links: list[str] | None = None

    async def _submit(self, request: Request) -> Response:
        with self.lock:
            refuse = self.refuse_submits > 0
            if refuse:
                self.refuse_submits -= 1
        if not refuse:
            return await super()._submit(request)
        raw = await request.body()
        response = _errors(429, RATE_LIMITED)
        with self.lock:
            self.submissions.append(
                {
                    "body": json.loads(raw) if raw else None,
                    "headers": _headers_without_auth(request.headers),
                    "time": time.monotonic(),
                    "status": response.status_code,
                }
            )
        return response

    async def _poll(self, request: Request) -> Response:
        with self.lock:
            faulted = self.poll_faults > 0
            if faulted:
                self.poll_faults -= 1
        if not faulted:
            return await super()._poll(request)
        fault = self.poll_fault
        with self.lock:
            self.polls.append((request.path_params["task_id"], time.monotonic(), fault))
        if fault == "503":
            return _errors(503, "Service temporarily unavailable, please retry later.")
        if fault == "garbage":
            return Response(
                "<html><body><h1>502 Bad Gateway</h1></body></html>", media_type="text/html"
            )
        if fault == "huge":
            return huge()
        if fault == "trickle":
            return trickle(interval=0.2)
        return _CutResponse()

    def _poll_answer(
        self, request: Request, task_id: str, now: float, transient: bool
    ) -> tuple[Response, str]:
        response, answered = super()._poll_answer(request, task_id, now, transient)
        if answered != "SUCCEED" or self.result_links is None:
            return response, answered
        payload = json.loads(bytes(response.body))
        payload["output_images"] = list(self.result_links)
        return JSONResponse(payload), answered

    def faulted_polls(self) -> list[str]:
        """The fault (or the status) each poll got, in order."""
        with self.lock:
            return [answered for _, _, answered in self.polls]


class _UnreachableS3:
    """A boto3 S3 client whose calls named by the outage fail as an unreachable endpoint."""

    def __init__(self, client: Any, outage: BucketOutage) -> None:
        self._client = client
        self._outage = outage

    def __getattr__(self, name: str) -> Any:
        real = getattr(self._client, name)
        if name not in self._outage.operations:
            return real

        def call(*args: Any, **kwargs: Any) -> Any:
            if self._outage.take(name):
                raise EndpointConnectionError(endpoint_url="https://s3.us-east-1.amazonaws.com")
            return real(*args, **kwargs)

        return call


class BucketOutage:
    """The bucket unreachable for the S3 operations named (boto3 names: ``put_object``,
    ``head_object``, ``get_object``), for the next ``times`` calls of them (default: all).
    `install` makes every `ImageStore` use it; ``refused`` records each call it failed,
    ``down = False`` ends the outage. An upload (``put_object``: the store's POST of a signed
    form, not a boto3 call) and a check that an object is there (``head_object``: the store's
    GET of its first byte by a presigned URL) fail as a refused connection does, once their
    tries are spent."""

    def __init__(self, operations: Iterable[str] = ("put_object",), times: int = ALWAYS) -> None:
        self.operations = frozenset(operations)
        self.times = times
        self.down = True
        self.refused: list[str] = []
        self._lock = threading.Lock()

    def take(self, operation: str) -> bool:
        """Whether this call of `operation` fails (and it is counted)."""
        with self._lock:
            if not self.down or self.times <= 0:
                return False
            self.times -= 1
            self.refused.append(operation)
            return True

    def install(self, monkeypatch: pytest.MonkeyPatch) -> BucketOutage:
        build = ImageStore._client

        def client(store: ImageStore) -> Any:
            return _UnreachableS3(build(store), self)

        monkeypatch.setattr(ImageStore, "_client", client)
        put = ImageStore._put

        async def unreachable(store: ImageStore, *args: Any) -> None:
            if self.take("put_object"):
                raise httpx.ConnectError("All connection attempts failed")
            await put(store, *args)

        if "put_object" in self.operations:
            monkeypatch.setattr(ImageStore, "_put", unreachable)
        present = ImageStore._present

        async def unanswered(store: ImageStore, url: str) -> bool:
            if self.take("head_object"):
                raise httpx.ConnectError("All connection attempts failed")
            return await present(store, url)

        if "head_object" in self.operations:
            monkeypatch.setattr(ImageStore, "_present", unanswered)
        return self
