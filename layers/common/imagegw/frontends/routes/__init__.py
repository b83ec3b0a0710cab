"""Routes, one module per front end, and the route table that names them.

The table says each route's path, methods and endpoint (`module:function`) without importing
the module: a front end's module (and what it pulls in: httpx, botocore, the pydantic request
models, the job runners) is imported when one of its routes is first called, so the API function
is ready after importing only what `GET /healthz` and `GET /v1/models` need
(docs/architecture.md "Cold start and memory"). Every route but the page's is served at `/v1/...`
and at `/{provider}/v1/...`.

A module that fails to import (a broken build: a file or a dependency missing from the
artifact) is tried once: the failure is logged with its cause, and that module's routes answer
a 503 `deployment_broken` (`BrokenDeploymentError`) from then on, with no traceback or path,
and without importing it again on every request.
"""

from __future__ import annotations

import importlib
from collections.abc import Awaitable, Callable
from types import ModuleType
from typing import Final

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from imagegw.errors import BrokenDeploymentError
from imagegw.infra.log import logger

Endpoint = Callable[[Request], Awaitable[Response]]

#: the modules that failed to import (each tried once a process)
_BROKEN: set[str] = set()

#: the page to try the gateway and its assets (`imagegw.frontends.webpage`): no provider prefix
PAGE: Final = (
    ("/", ("GET", "HEAD"), "imagegw.frontends.webpage:page"),
    ("/page/{name}", ("GET", "HEAD"), "imagegw.frontends.webpage:asset"),
)
#: path after the prefix, methods, endpoint; in the order they are matched
API: Final = (
    ("/v1/models", ("GET",), "models:list_models"),
    ("/v1/models/{model:path}", ("GET",), "models:get_model"),
    ("/v1/chat/completions", ("POST",), "chat:chat_completions"),
    ("/v1/images/generations", ("POST",), "images:generations"),
    ("/v1/images/edits", ("POST",), "images:edits"),
    ("/v1/jobs/{job_id}", ("GET",), "jobs:get_job"),
    ("/v1/usage", ("GET",), "jobs:get_usage"),
    ("/v1/files", ("POST",), "files:create_file"),
    ("/v1/files", ("GET",), "files:list_files"),
    ("/v1/files/{name}", ("GET", "HEAD"), "files:get_file"),
    ("/v1/files/{name}", ("DELETE",), "files:delete_file"),
    ("/v1/files/{name}/content", ("GET",), "files:file_content"),
    ("/v1/webhooks/secret", ("GET",), "webhooks:get_secret"),
    ("/v1/batches", ("POST",), "batches:create_batch"),
    ("/v1/batches", ("GET",), "batches:list_batches"),
    ("/v1/batches/{batch_id}", ("GET",), "batches:get_batch"),
    ("/v1/batches/{batch_id}/cancel", ("POST",), "batches:cancel_batch"),
    ("/v1/uploads", ("POST",), "uploads:create_upload"),
    ("/v1/uploads/{upload_id}/parts", ("POST",), "uploads:add_part"),
    ("/v1/uploads/{upload_id}/complete", ("POST",), "uploads:complete_upload"),
    ("/v1/uploads/{upload_id}/cancel", ("POST",), "uploads:cancel_upload"),
)


def endpoint(target: str) -> Endpoint:
    """The endpoint `module:function` (a module of this package when not dotted), its module
    imported at the first request it answers."""
    module, _, name = target.partition(":")
    if "." not in module:
        module = f"{__name__}.{module}"
    loaded: list[Endpoint] = []

    async def lazy(request: Request) -> Response:
        if not loaded:
            loaded.append(getattr(_imported(module), name))
        return await loaded[0](request)

    lazy.__name__ = lazy.__qualname__ = name
    return lazy


def _imported(module: str) -> ModuleType:
    """`module`, imported; BrokenDeploymentError when it does not import, then or before."""
    if module not in _BROKEN:
        try:
            return importlib.import_module(module)
        except Exception as exc:
            logger.error(
                "a route's module failed to import: the deployment is broken",
                extra={"route_module": module, "error": f"{type(exc).__name__}: {exc}"},
                exc_info=True,
            )
            _BROKEN.add(module)
    raise BrokenDeploymentError(
        "This gateway's deployment is broken: a part it needs to answer this request failed "
        "to load. Its logs say why; it must be fixed and deployed again.",
        code="deployment_broken",
    )


def routes() -> list[Route]:
    """The app's routes: the page's, then every API route un-prefixed, then provider-prefixed."""
    table = [*PAGE, *((f"{p}{path}", m, t) for p in ("", "/{provider}") for path, m, t in API)]
    return [Route(path, endpoint(target), methods=list(methods)) for path, methods, target in table]
