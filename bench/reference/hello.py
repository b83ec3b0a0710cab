"""The fixed reference of the benchmarks: a plain Starlette hello-world app (no project code),
served by the same uvicorn command line as the API function (bench/artifact.py)."""

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route


async def hello(request: Request) -> Response:
    return PlainTextResponse("hello")


app = Starlette(routes=[Route("/", hello), Route("/healthz", hello)])
