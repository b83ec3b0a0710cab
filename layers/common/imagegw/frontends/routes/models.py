"""GET /v1/models (no auth) and GET /v1/models/{id}."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from imagegw.errors import NotFoundError
from imagegw.frontends.schemas import model_card, model_list
from imagegw.frontends.web import gateway_of


async def list_models(request: Request) -> Response:
    provider = gateway_of(request).provider(request.path_params.get("provider"))
    return JSONResponse(model_list(provider.name, [m.id for m in provider.catalog]))


async def get_model(request: Request) -> Response:
    provider = gateway_of(request).provider(request.path_params.get("provider"))
    model = request.path_params["model"]
    if not any(m.id == model for m in provider.catalog):
        raise NotFoundError(
            f"The model '{model}' is not listed by {provider.title}.", param="model"
        )
    return JSONResponse(model_card(provider.name, model))


def routes(prefix: str) -> list[Route]:
    return [
        Route(f"{prefix}/v1/models", list_models, methods=["GET"]),
        Route(f"{prefix}/v1/models/{{model:path}}", get_model, methods=["GET"]),
    ]
