"""The original approach, written for the benchmarks: a FastAPI + aiohttp proxy from OpenAI chat
completions to ModelScope's task API, shaped like the script the gateway grew from (seeds 000
and 002): submit the task with `X-ModelScope-Async-Mode: true`, poll `GET /tasks/{id}` at once and
then every 2 s, and answer the provider's image link as markdown (no copy, no progress, no
retries), streamed (a role chunk, the image chunk, a stop chunk, `[DONE]`) or as one JSON body.

It is not project code: the benchmarks boot it beside the built gateway, against the same fake
provider, in the same run, so ratios compare like with like (bench/versus.py). It runs in its own
virtualenv (`.venv-bench`, bench/seedref/requirements.txt), as FastAPI pins its own Starlette.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import JSONResponse, StreamingResponse

BASE_URL = os.environ.get("MODELSCOPE_BASE_URL", "https://api-inference.modelscope.cn/v1")
POLL_SECONDS = 2.0
TIMEOUT_SECONDS = 300.0
MODELS = ["Qwen/Qwen-Image", "Tongyi-MAI/Z-Image-Turbo", "Qwen/Qwen-Image-Edit"]

app = FastAPI()


@app.get("/v1/models")
async def models() -> dict[str, Any]:
    cards = [{"id": m, "object": "model", "created": 0, "owned_by": "modelscope"} for m in MODELS]
    return {"object": "list", "data": cards}


def _prompt(messages: list[dict[str, Any]]) -> tuple[str, str | None]:
    """The last user message's text, and its image URL if any (the seed's rule)."""
    for message in reversed(messages):
        if message.get("role") != "user":
            continue
        content = message.get("content")
        if isinstance(content, str):
            return content, None
        text, image = "", None
        for part in content or []:
            if part.get("type") == "text":
                text = part.get("text", "")
            elif part.get("type") == "image_url":
                image = (part.get("image_url") or {}).get("url")
        return text, image
    raise HTTPException(400, "no user message")


async def _generate(token: str, model: str, prompt: str, image: str | None, extra: dict) -> str:
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
    body: dict[str, Any] = {"model": model, "prompt": prompt, **extra}
    if image:
        body["image_url"] = image
    async with aiohttp.ClientSession() as session:
        async with session.post(
            f"{BASE_URL}/images/generations",
            headers={**headers, "X-ModelScope-Async-Mode": "true"},
            data=json.dumps(body, ensure_ascii=False).encode(),
        ) as response:
            if response.status != 200:
                raise HTTPException(response.status, await response.text())
            task_id = (await response.json())["task_id"]
        began = time.monotonic()
        while time.monotonic() - began < TIMEOUT_SECONDS:
            async with session.get(
                f"{BASE_URL}/tasks/{task_id}",
                headers={**headers, "X-ModelScope-Task-Type": "image_generation"},
            ) as response:
                data = await response.json()
            status = data.get("task_status")
            if status == "SUCCEED":
                return str(data["output_images"][0])
            if status == "FAILED":
                raise HTTPException(500, f"generation failed: {data.get('errors')}")
            await asyncio.sleep(POLL_SECONDS)
    raise HTTPException(504, "timed out")


def _chunk(cid: str, model: str, delta: dict[str, Any], finish: str | None = None) -> str:
    choice = {"index": 0, "delta": delta, "finish_reason": finish}
    payload = {
        "id": cid,
        "object": "chat.completion.chunk",
        "created": int(time.time()),
        "model": model,
        "choices": [choice],
    }
    return f"data: {json.dumps(payload)}\n\n"


@app.post("/v1/chat/completions")
async def chat(request: Request) -> Any:
    body = await request.json()
    token = request.headers.get("authorization", "").removeprefix("Bearer ").strip()
    model = body.get("model", MODELS[0])
    prompt, image = _prompt(body.get("messages") or [])
    extra = {
        k: body[k] for k in ("size", "seed", "steps", "guidance", "negative_prompt") if k in body
    }
    cid = f"chatcmpl-{uuid.uuid4().hex}"
    if not body.get("stream"):
        url = await _generate(token, model, prompt, image, extra)
        message = {"role": "assistant", "content": f"![]({url})"}
        return JSONResponse(
            {
                "id": cid,
                "object": "chat.completion",
                "created": int(time.time()),
                "model": model,
                "choices": [{"index": 0, "message": message, "finish_reason": "stop"}],
                "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
            }
        )

    async def events() -> AsyncIterator[str]:
        yield _chunk(cid, model, {"role": "assistant"})
        url = await _generate(token, model, prompt, image, extra)
        yield _chunk(cid, model, {"content": f"![]({url})"})
        yield _chunk(cid, model, {}, "stop")
        yield "data: [DONE]\n\n"

    return StreamingResponse(events(), media_type="text/event-stream")
