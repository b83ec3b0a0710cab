"""A route whose module does not import (a broken build: a dependency missing from the
artifact) answers a clear, stable 503 and is not imported again on every request."""

from __future__ import annotations

import importlib
import logging
import sys
from types import ModuleType

import httpx
import pytest

from imagegw.frontends import routes
from imagegw.frontends.app import create_app
from imagegw.infra.config import Settings

ROUTE_MODULE = "imagegw.frontends.routes.jobs"
MISSING = "imagegw.frontends.job_answers"  # a module the route's module imports


@pytest.mark.anyio
async def test_a_route_whose_module_fails_to_import_answers_503_once_logged(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # Given a build missing a module one route's module needs
    monkeypatch.delitem(sys.modules, ROUTE_MODULE, raising=False)
    monkeypatch.setitem(sys.modules, MISSING, None)  # type: ignore[arg-type]
    package, _, child = MISSING.rpartition(".")
    monkeypatch.delattr(sys.modules[package], child, raising=False)  # imported by other tests
    real = importlib.import_module
    tried: list[str] = []

    def counted(name: str, package: str | None = None) -> ModuleType:
        if name == ROUTE_MODULE:
            tried.append(name)
        return real(name, package)

    monkeypatch.setattr(importlib, "import_module", counted)
    monkeypatch.setattr(routes, "_BROKEN", set())  # this process's other apps: not broken
    app = create_app(Settings())
    # When that route is asked for, several times, with and without a provider prefix
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app, raise_app_exceptions=False), base_url="http://gw"
    ) as client:
        answers = [
            await client.get(path, headers={"Authorization": "Bearer ms-token"})
            for path in ("/v1/jobs/job-1", "/v1/usage", "/modelscope/v1/jobs/job-1", "/v1/usage")
        ]
        models = await client.get("/v1/models")
    # Then each answer is the same OpenAI-shaped 503 saying the deployment is broken, with no
    # traceback nor path, that SDKs do not retry
    for answer in answers:
        assert answer.status_code == 503
        assert answer.headers["x-should-retry"] == "false"
        error = answer.json()["error"]
        assert error["type"] == "server_error"
        assert error["code"] == "deployment_broken"
        assert "deployment is broken" in error["message"]
        assert "Traceback" not in answer.text
        assert "/" not in error["message"] and "job_answers" not in answer.text
    # and the module was tried once, its failure logged once with its cause
    assert tried == [ROUTE_MODULE]
    broken = [line for line in caplog.records if "failed to import" in line.getMessage()]
    assert len(broken) == 1
    assert broken[0].levelno == logging.ERROR
    assert broken[0].route_module == ROUTE_MODULE  # type: ignore[attr-defined]
    assert "job_answers" in broken[0].error  # type: ignore[attr-defined]
    # and the other routes still answer
    assert models.status_code == 200
