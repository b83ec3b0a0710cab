"""Per-request overhead with an instantly answering provider.

The fake finishes every task at once (task_duration 0, pending_seconds 0) and the gateway polls
after 1 ms (poll_interval 0.001 s, NOT the default 0.75 s: this measures the gateway's own work,
not the poll wait). Sequential requests from one keep-alive client; a no-op Starlette app served
the same way gives the floor of uvicorn + loopback HTTP + the client.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import httpx
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from bench.common import (
    AUTH,
    MODEL,
    Report,
    Table,
    chat_body,
    fake_modelscope,
    fmt_ms,
    gateway_in_process,
    gateway_settings,
    mean,
    percentile,
    s3_stand_in,
)
from fakes.server import ServerThread

REQUESTS = 200
WARMUP = 10
POLL_INTERVAL = 0.001


def _noop_app() -> Starlette:
    """Answers chat completions and the model list with canned bodies, doing nothing else."""
    canned = {
        "id": "chatcmpl-noop",
        "object": "chat.completion",
        "created": 0,
        "model": MODEL,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": "![image 1](http://x/y.png)"},
                "finish_reason": "stop",
            }
        ],
    }
    models = {"object": "list", "data": [{"id": MODEL, "object": "model", "created": 0}]}

    async def chat(request: Request) -> Response:
        await request.body()
        return JSONResponse(canned)

    async def listing(request: Request) -> Response:
        return JSONResponse(models)

    return Starlette(
        routes=[
            Route("/v1/chat/completions", chat, methods=["POST"]),
            Route("/v1/models", listing, methods=["GET"]),
        ]
    )


def _chat_ok(response: httpx.Response) -> bool:
    if response.status_code != 200:
        return False
    content = response.json()["choices"][0]["message"]["content"]
    return isinstance(content, str) and content.startswith("![")


def _models_ok(response: httpx.Response) -> bool:
    return response.status_code == 200 and bool(response.json().get("data"))


def _time(
    send: Callable[[], httpx.Response], check: Callable[[httpx.Response], bool]
) -> tuple[list[float], int]:
    """Latencies (seconds) of REQUESTS sequential calls after WARMUP untimed ones; errors."""
    for _ in range(WARMUP):
        send()
    latencies: list[float] = []
    errors = 0
    for _ in range(REQUESTS):
        began = time.perf_counter()
        response = send()
        latencies.append(time.perf_counter() - began)
        if not check(response):
            errors += 1
    return latencies, errors


def _measure(url: str, *, models: bool = True) -> dict[str, tuple[list[float], int]]:
    body = chat_body("bench overhead", stream=False)
    results: dict[str, tuple[list[float], int]] = {}
    with httpx.Client(base_url=url, timeout=30.0) as client:
        results["chat"] = _time(
            lambda: client.post("/v1/chat/completions", json=body, headers=AUTH), _chat_ok
        )
        if models:
            results["models"] = _time(lambda: client.get("/v1/models"), _models_ok)
    return results


def _stats(latencies: list[float], errors: int) -> dict[str, Any]:
    return {
        "p50_ms": percentile(latencies, 50) * 1000,
        "p95_ms": percentile(latencies, 95) * 1000,
        "p99_ms": percentile(latencies, 99) * 1000,
        "mean_ms": mean(latencies) * 1000,
        "errors": errors,
        "requests": len(latencies),
    }


LABELS = {"chat": "POST /v1/chat/completions", "models": "GET /v1/models"}


def run() -> Report:
    with (
        s3_stand_in() as s3,
        fake_modelscope(task_duration=0.0, pending_seconds=0.0) as (fake, base),
    ):
        settings = gateway_settings(s3, base, poll_interval=POLL_INTERVAL)
        with gateway_in_process(settings) as url:
            stored = _measure(url)
        chats = len(fake.submissions)
        polls_per_chat = len(fake.polls) / chats if chats else float("nan")
        direct_settings = gateway_settings(
            s3, base, poll_interval=POLL_INTERVAL, image_links="provider"
        )
        with gateway_in_process(direct_settings) as url:
            direct = _measure(url, models=False)
    with ServerThread(_noop_app()) as noop_server:
        noop = _measure(noop_server.url)

    targets = (
        ("gateway", f"gateway (IMAGE_LINKS={settings.image_links}, default)", stored),
        ("gateway_provider_links", "gateway (IMAGE_LINKS=provider)", direct),
        ("noop", "no-op app", noop),
    )
    rows: list[list[str]] = []
    data: dict[str, Any] = {
        "requests": REQUESTS,
        "warmup": WARMUP,
        "poll_interval_s": POLL_INTERVAL,
        "polls_per_chat": polls_per_chat,
    }
    for key, name, results in targets:
        for kind, (latencies, errors) in results.items():
            data[f"{key}_{kind}"] = _stats(latencies, errors)
            rows.append(
                [
                    f"{name}: {LABELS[kind]}",
                    fmt_ms(percentile(latencies, 50)),
                    fmt_ms(percentile(latencies, 95)),
                    fmt_ms(percentile(latencies, 99)),
                    fmt_ms(mean(latencies)),
                    str(errors),
                ]
            )
    chat_p50 = percentile(stored["chat"][0], 50)
    direct_p50 = percentile(direct["chat"][0], 50)
    models_p50 = percentile(stored["models"][0], 50)
    noop_chat_p50 = percentile(noop["chat"][0], 50)
    table = Table(
        f"Latency of {REQUESTS} sequential requests (after {WARMUP} warm-up)",
        ["target: request", "p50", "p95", "p99", "mean", "errors"],
        rows,
    )
    return Report(
        name="overhead",
        title="per-request overhead, instantly answering provider",
        tables=[table],
        notes=[
            f"poll_interval = {POLL_INTERVAL:g} s here (not the default 0.75 s): the figure is "
            "the gateway's own work, not the poll wait. Tasks finish at once "
            "(task_duration 0, pending_seconds 0).",
            "A non-stream chat completion = parse + validate, a submit and "
            f"{polls_per_chat:.2f} poll(s) on average to the fake over loopback HTTP, then (with "
            "IMAGE_LINKS=stored) a download of the 1024x1024 PNG from the fake and a put into "
            "the S3 stand-in, then the JSON answer. The fake and moto run in this process.",
            "Servers in threads get TCP_NODELAY (tests/fakes/server.py).",
            "The no-op app (same uvicorn server thread, same client) answers canned bodies: "
            f"gateway chat p50 − no-op chat p50 = {fmt_ms(chat_p50 - noop_chat_p50)} "
            f"({fmt_ms(direct_p50 - noop_chat_p50)} with IMAGE_LINKS=provider).",
        ],
        data=data,
        summary=[
            (
                "Overhead: non-stream chat, instant provider (p50 / p99)",
                f"{fmt_ms(chat_p50)} / {fmt_ms(percentile(stored['chat'][0], 99))} "
                f"(IMAGE_LINKS=provider {fmt_ms(direct_p50)}; no-op app {fmt_ms(noop_chat_p50)})",
                "—",
            ),
            (
                "Overhead: GET /v1/models (p50 / p99)",
                f"{fmt_ms(models_p50)} / {fmt_ms(percentile(stored['models'][0], 99))}",
                "—",
            ),
        ],
    )
