"""Tracer and metrics of the durable-job task functions (their logger is
`imagegw.infra.log.logger`).

Only the task functions import this module, so the API function does not load the X-Ray SDK.
Tracing is off outside Lambda (Powertools decides); metrics go out as CloudWatch EMF lines under
`POWERTOOLS_METRICS_NAMESPACE` (`POWERTOOLS_METRICS_DISABLED=true` turns them off, as `make run`
and the tests do).

What is traced: each handler call (Powertools' `## lambda_handler` subsegment), the AWS calls
(the X-Ray SDK's botocore patch: KMS, S3) and every HTTP request of the gateway's httpx clients
(the provider's API, result images) and of its uploads to the bucket (`imagegw.infra.storage`)
in a subsegment of its own, made by `TracedTransport`: when
tracing is on, importing this module adds it as a transport layer (`imagegw.infra.clients`), so
every client built afterwards has its transport wrapped in it at construction (no patch of
httpx).

Why not the X-Ray SDK's own httpx patch (what `Tracer()` applies by default): it keeps each
request's subsegment on the recorder's context stack, which in Lambda is one stack per thread.
A job with n > 1 starts and polls its tasks concurrently on one event loop (`asyncio.gather`),
so the requests' subsegments nest into one another, and the one that ends second finds its
parent ended: `AlreadyEndedException`, and the task fails, for every sampled job. botocore's
patch is safe: its calls are synchronous (in the event loop thread or a worker thread with its
own stack), so they never interleave on one stack.
"""

from __future__ import annotations

import os
import traceback
from typing import Any

import httpx
from aws_lambda_powertools import Metrics, Tracer
from aws_xray_sdk import global_sdk_config
from aws_xray_sdk.core import xray_recorder
from aws_xray_sdk.core.models import http
from aws_xray_sdk.core.models.segment import Segment
from aws_xray_sdk.core.models.subsegment import Subsegment

from imagegw.infra.clients import add_transport_layer

SERVICE = os.environ.get("POWERTOOLS_SERVICE_NAME", "image-gateway")
#: what the X-Ray SDK patches (not httpx: see the module's docstring)
PATCHED_MODULES = ("botocore",)


class TracedTransport(httpx.AsyncBaseTransport):
    """`wrapped`, with each request in an X-Ray subsegment that this class opens and closes.

    The subsegment hangs under the entity that is current when the request starts (the
    handler's subsegment) and is never pushed on the recorder's context stack, so concurrent
    requests are siblings and none can end another. It records the method, the URL without its
    query (presigned URLs carry credentials there) and the status; a request that fails records
    its exception and raises it unchanged. Nothing is recorded when the trace is not sampled.
    """

    def __init__(self, wrapped: httpx.AsyncBaseTransport, recorder: Any = xray_recorder) -> None:
        self.wrapped = wrapped
        self.recorder = recorder

    def _open(self, request: httpx.Request) -> Any:
        if not global_sdk_config.sdk_enabled():
            return None
        parent = self.recorder.get_trace_entity()
        if parent is None or not parent.sampled:
            return None
        segment = parent if isinstance(parent, Segment) else parent.parent_segment
        # the host as spelt (raw): a result URL's malformed IDNA label must not fail the call
        host = request.url.raw_host.decode("ascii", "replace")
        subsegment = Subsegment(host or "http", "remote", segment)
        parent.add_subsegment(subsegment)
        subsegment.put_http_meta(http.METHOD, request.method)
        subsegment.put_http_meta(http.URL, str(request.url.copy_with(query=None, fragment=None)))
        return subsegment

    def _end(self, subsegment: Any) -> None:
        subsegment.close()
        # sends the subsegments that have ended (in Lambda: at once)
        self.recorder.stream_subsegments()

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        subsegment = self._open(request)
        if subsegment is None:
            return await self.wrapped.handle_async_request(request)
        try:
            response = await self.wrapped.handle_async_request(request)
        except Exception as exc:
            subsegment.add_exception(exc, traceback.extract_tb(exc.__traceback__, limit=10))
            raise
        else:
            subsegment.put_http_meta(http.STATUS, response.status_code)
            return response
        finally:
            self._end(subsegment)

    async def aclose(self) -> None:
        await self.wrapped.aclose()


tracer = Tracer(service=SERVICE, patch_modules=PATCHED_MODULES)
if not tracer.disabled:
    add_transport_layer(TracedTransport)
metrics = Metrics(
    namespace=os.environ.get("POWERTOOLS_METRICS_NAMESPACE", "ImageGateway"), service=SERVICE
)
