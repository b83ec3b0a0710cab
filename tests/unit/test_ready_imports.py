"""What the API function imports before it answers `GET /v1/models` (docs/architecture.md "Cold
start and memory"): only what that answer needs. Each front end's module, httpx, the guarded
fetcher, the access table's code, the pydantic request models and boto3 are imported by the
first request that uses them.

Each case runs in a fresh interpreter (this test process has imported everything already): it
imports the API function's module as Lambda does (`functions/api/main.py`), sends it requests
over ASGI by hand (a test client would import httpx itself), and reports the answers and the
modules then imported.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
#: modules the first `GET /v1/models` must not have imported
NOT_BEFORE_USE = (
    "httpx._client",  # the provider client and the fetchers
    "httpcore",
    "imagegw.infra.fetcher",
    "imagegw.infra.clients",
    "boto3",
    "botocore.session",
    "imagegw.access.gate",  # gateway keys: `GET /v1/models` takes none
    "imagegw.frontends.schemas",  # the pydantic request models
    "difflib",  # the closest ids to a model a provider does not know
    "imagegw.frontends.web",  # the request reader of the routes that read requests
    "imagegw.frontends.routes.chat",
    "imagegw.frontends.routes.images",
    "imagegw.frontends.routes.jobs",
    "imagegw.frontends.routes.files",
    "imagegw.frontends.routes.batches",
    "imagegw.frontends.webpage",
    "imagegw.runners.stepfunctions.service",
    "anyio._backends._asyncio",  # anyio's event-loop backend: read bodies are timed with it
    "imagegw.infra.storage",  # the bucket's images
)

SERVE = """
import asyncio, json, sys

import main

async def get(path, headers=()):
    scope = {
        "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "GET",
        "scheme": "http", "path": path, "raw_path": path.encode(), "query_string": b"",
        "root_path": "", "headers": [(b"host", b"127.0.0.1:8000"), *headers],
        "client": ("127.0.0.1", 50000), "server": ("127.0.0.1", 8000),
    }
    sent = []

    async def receive():
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message):
        sent.append(message)

    await main.app(scope, receive, send)
    body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    return sent[0]["status"], json.loads(body)

async def run():
    answers = {path: await get(path) for path in sys.argv[1:]}
    return {"answers": answers, "modules": sorted(sys.modules)}

sys.stderr.write("RESULT " + json.dumps(asyncio.run(run())) + "\\n")
"""


def _serve(*paths: str, **env: str) -> dict[str, object]:
    """The answers to GET `paths` of a freshly imported API function, and its modules."""
    environment = {
        "PATH": os.environ.get("PATH", ""),
        "PYTHONPATH": os.pathsep.join(str(ROOT / p) for p in ("layers/common", "functions/api")),
        "AWS_REGION": "us-east-1",
        "POWERTOOLS_METRICS_NAMESPACE": "ImageGateway",
        **env,
    }
    done = subprocess.run(
        [sys.executable, "-c", SERVE, *paths],
        env=environment,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    (line,) = (row for row in done.stderr.splitlines() if row.startswith("RESULT "))
    result: dict[str, object] = json.loads(line.removeprefix("RESULT "))
    return result


def test_listing_models_imports_no_client_no_route_of_another_family_and_no_boto3() -> None:
    # When the freshly imported function lists its models, as the readiness check and the
    # bench's first request do
    result = _serve("/healthz", "/v1/models", "/modelscope/v1/models")

    # Then it answered them
    answers = result["answers"]
    assert isinstance(answers, dict)
    assert answers["/healthz"] == [200, {"status": "ok"}]
    status, listing = answers["/v1/models"]
    assert status == 200
    assert "Qwen/Qwen-Image" in [card["id"] for card in listing["data"]]
    assert answers["/modelscope/v1/models"] == answers["/v1/models"]
    # And nothing that only other requests need was imported
    modules = result["modules"]
    assert isinstance(modules, list)
    assert sorted(set(NOT_BEFORE_USE) & set(modules)) == []
    # (the route module that answered, the providers' registry: imported)
    assert "imagegw.frontends.routes.models" in modules


def test_an_unknown_provider_is_the_openai_404_without_the_route_modules() -> None:
    # When a provider that does not exist is asked for its models
    result = _serve("/nosuch/v1/models")

    # Then the answer is the OpenAI-shaped 404 naming the known ones
    answers = result["answers"]
    assert isinstance(answers, dict)
    status, body = answers["/nosuch/v1/models"]
    assert status == 404
    assert body["error"]["code"] == "unknown_provider"
    assert "modelscope" in body["error"]["message"]
    modules = result["modules"]
    assert isinstance(modules, list)
    assert sorted(set(NOT_BEFORE_USE) & set(modules)) == []
