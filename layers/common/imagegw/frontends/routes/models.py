"""GET /v1/models (no auth) and GET /v1/models/{id}."""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from imagegw.errors import NotFoundError
from imagegw.frontends.common import gateway_of


async def list_models(request: Request) -> Response:
    provider = gateway_of(request).listing(request.path_params.get("provider"))
    return JSONResponse(model_list(provider.name, [m.id for m in provider.catalog]))


async def get_model(request: Request) -> Response:
    provider = gateway_of(request).listing(request.path_params.get("provider"))
    model = request.path_params["model"]
    if not any(m.id == model for m in provider.catalog):
        raise NotFoundError(
            f"The model '{model}' is not listed by {provider.title}.", param="model"
        )
    return JSONResponse(model_card(provider.name, model))


def model_list(provider: str, models: list[str]) -> dict[str, Any]:
    return {"object": "list", "data": [model_card(provider, m) for m in models]}


def model_card(provider: str, model: str) -> dict[str, Any]:
    return {"id": model, "object": "model", "created": 1700000000, "owned_by": provider}
