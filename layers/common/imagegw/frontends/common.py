"""What the app and every route need, kept light: the app's `Gateway` and the one error answer.

The app imports this before it is ready (`imagegw.frontends.app`), so it imports nothing heavy
(the `Gateway` type only for the type checker).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from starlette.requests import Request
from starlette.responses import JSONResponse

from imagegw.errors import render
from imagegw.infra import apimetrics

if TYPE_CHECKING:
    from imagegw.runners.gateway import Gateway


def gateway_of(request: Request) -> Gateway:
    gateway: Gateway = request.app.state.gateway
    return gateway


def error_response(exc: BaseException) -> JSONResponse:
    apimetrics.failure(exc)
    status, body, headers = render(exc)
    return JSONResponse(body, status_code=status, headers=headers)
