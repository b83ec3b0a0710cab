"""One large image answered as base64 (issue 25: no copies of image bytes that can be avoided).

The built artifact (booted as Lambda boots it, bench/artifact.py) answers a 4 MB PNG that does
not compress, whose base64 is 5.3 MB, in each way a client gets an image's bytes:

- `images-b64`, `images-b64-stream`: the Images API with `response_format: b64_json`, JSON and
  `stream: true`, from ModelScope (the result downloaded from the provider's link);
- `openai-b64`, `openai-b64-stream`: the same from an OpenAI-compatible server that answers
  `b64_json` itself;
- `chat-inline`, `chat-inline-stream`: a chat completion with IMAGE_LINKS=inline (a markdown
  data URI in its content), in one answer and streamed;
- `siliconflow-input`: the other way, the image sent by the client as a data URI in a chat
  completion to SiliconFlow's Qwen-Image-Edit (which takes data URIs: the client's is passed
  on), answered with the provider's link (IMAGE_LINKS=provider).

For each: the peak memory one answer adds above the process's resting RSS (the median of 3
answers' VmHWM, each after `/proc/<pid>/clear_refs` 5, above the lowest RSS seen between them:
the client may have the whole answer a moment before the server frees its memory, so the RSS
read before the next answer can still hold it; glibc is told to map every block over 64 KiB on
its own, MALLOC_MMAP_THRESHOLD_, so a freed copy leaves the RSS and the peak counts the copies
alive at once), the process's highest RSS while answering them, and the process's CPU per
answer over `BENCH_B64_ANSWERS` answers (default 6). Each copy of the base64 is ~5.1 MiB, of
the image 3.8 MiB.
Run it by name: `python -m bench b64` (with the local build, `make build-local`);
`BENCH_B64_CASES` (comma-separated) runs only those cases.
"""

from __future__ import annotations

import base64
import contextlib
import os
import statistics
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx

import fakes.modelscope as modelscope_fake
import fakes.openai_images as openai_fake
from bench.artifact import lambda_runtime_here
from bench.common import (
    AUTH,
    Report,
    Table,
    chat_body,
    fake_modelscope,
    fmt_mib,
    proc_cpu_seconds,
    proc_status,
    s3_stand_in,
)
from bench.memory import _png_of
from bench.versus import gateway
from fakes.openai_images import FakeOpenAIImages
from fakes.server import ServerThread
from fakes.siliconflow import FakeSiliconFlow

#: a request's body, or what makes it of the image
Body = dict[str, Any] | Callable[[bytes], dict[str, Any]]

IMAGE_BYTES = 4_000_000
ANSWERS = int(os.environ.get("BENCH_B64_ANSWERS", "6"))
PEAKS = 3
MODEL = "Qwen/Qwen-Image"
IMAGES = {"model": MODEL, "prompt": "x", "response_format": "b64_json", "size": "1024x1024"}


def _edit(png: bytes) -> dict[str, Any]:
    """A chat completion to edit `png`, sent as a data URI."""
    uri = f"data:image/png;base64,{base64.b64encode(png).decode()}"
    content = [{"type": "text", "text": "x"}, {"type": "image_url", "image_url": {"url": uri}}]
    return {"model": "Qwen/Qwen-Image-Edit", "messages": [{"role": "user", "content": content}]}


#: name: (provider's route prefix, path, body (or made of the image), streamed, IMAGE_LINKS)
CASES: dict[str, tuple[str, str, Body, bool, str | None]] = {
    "images-b64": ("", "/v1/images/generations", IMAGES, False, None),
    "images-b64-stream": ("", "/v1/images/generations", {**IMAGES, "stream": True}, True, None),
    "openai-b64": ("/openai", "/v1/images/generations", IMAGES, False, None),
    "openai-b64-stream": (
        "/openai",
        "/v1/images/generations",
        {**IMAGES, "stream": True},
        True,
        None,
    ),
    "chat-inline": ("", "/v1/chat/completions", chat_body("x", stream=False), False, "inline"),
    "chat-inline-stream": (
        "",
        "/v1/chat/completions",
        chat_body("x", stream=True),
        True,
        "inline",
    ),
    "siliconflow-input": ("/siliconflow", "/v1/chat/completions", _edit, False, "provider"),
}


OPENAI_KEY = {"Authorization": "Bearer sk-bench"}
KEYS = {"/openai": OPENAI_KEY, "/siliconflow": {"Authorization": "Bearer sk-sf-test-token"}}


def _cases() -> list[str]:
    """The cases to run: BENCH_B64_CASES, else all."""
    chosen = [c.strip() for c in os.environ.get("BENCH_B64_CASES", "").split(",") if c.strip()]
    unknown = set(chosen) - set(CASES)
    if unknown:
        raise ValueError(f"BENCH_B64_CASES: unknown {sorted(unknown)}; choose from {list(CASES)}")
    return chosen or list(CASES)


@contextlib.contextmanager
def _providers(png: bytes) -> Iterator[dict[str, str]]:
    """The fake ModelScope and OpenAI-compatible server, both answering `png`, and the fake
    SiliconFlow; their settings."""
    made: Callable[..., bytes] = lambda *args, **kwargs: png  # noqa: E731
    with fake_modelscope(task_duration=lambda body: 0.0, pending_seconds=0.0) as (_, base):
        modelscope_fake.make_png = made  # type: ignore[attr-defined]  # (restored by the fake)
        original = openai_fake.make_png
        openai_fake.make_png = made  # type: ignore[assignment]
        try:
            with (
                ServerThread(FakeOpenAIImages()) as server,
                ServerThread(FakeSiliconFlow(latency=0.0)) as siliconflow,
            ):
                yield {
                    "MODELSCOPE_BASE_URL": base,
                    "OPENAI_BASE_URL": f"{server.url}/v1",
                    "SILICONFLOW_BASE_URL": f"{siliconflow.url}/v1",
                }
        finally:
            openai_fake.make_png = original


def _answer(client: httpx.Client, url: str, body: dict[str, Any], stream: bool, key: Any) -> int:
    """One answer read whole; its size in bytes."""
    with client.stream("POST", url, json=body, headers=key) as response:
        size = sum(len(part) for part in response.iter_bytes())
        if response.status_code != 200:
            raise RuntimeError(f"{url} answered {response.status_code}")
    return size


def _case(name: str, png: bytes, providers: dict[str, str], s3: dict[str, str]) -> dict[str, float]:
    prefix, path, made, stream, links = CASES[name]
    body = made(png) if callable(made) else made
    env = {**s3, **providers, "MALLOC_MMAP_THRESHOLD_": "65536"}
    if links:
        env["IMAGE_LINKS"] = links
    key = KEYS.get(prefix, AUTH)
    with lambda_runtime_here() as runtime, gateway(runtime, env) as booted:
        pid, url = booted.process.pid, f"{booted.url}{prefix}{path}"
        with httpx.Client(timeout=120) as client:
            size = _answer(client, url, body, stream, key)
            _answer(client, url, body, stream, key)
            resting, peaks = [], []
            for _ in range(PEAKS):
                Path(f"/proc/{pid}/clear_refs").write_text("5")
                resting.append(proc_status(pid)["VmRSS"])
                _answer(client, url, body, stream, key)
                peaks.append(proc_status(pid)["VmHWM"])
            cpu = proc_cpu_seconds(pid)
            for _ in range(ANSWERS):
                _answer(client, url, body, stream, key)
            cpu = (proc_cpu_seconds(pid) - cpu) / ANSWERS
    # above the lowest RSS between answers: an answer's memory may be freed just after the next
    # one's RSS is read (the client has the whole body before the server's task ends)
    peak = statistics.median(peaks) - min(resting)
    return {"body_bytes": size, "peak_kib": peak, "highest_kib": max(peaks), "cpu_s": cpu}


def run() -> Report:
    report = Report("b64", "one 4 MB image answered as base64 (and sent as a data URI)")
    png = _png_of(IMAGE_BYTES)
    rows = []
    with s3_stand_in() as s3, _providers(png) as providers:
        for name in _cases():
            figures = _case(name, png, providers, s3)
            report.data[name] = figures
            rows.append(
                [
                    name,
                    f"{figures['body_bytes'] / 1e6:.2f} MB",
                    fmt_mib(figures["peak_kib"]),
                    fmt_mib(figures["highest_kib"]),
                    f"{figures['cpu_s'] * 1000:.0f} ms",
                ]
            )
    report.tables.append(
        Table(
            f"A {len(png) / 1e6:.1f} MB PNG answered as base64 by the built artifact",
            ["case", "answer", "peak memory added", "highest RSS", "CPU per answer"],
            rows,
        )
    )
    report.notes.append(
        "Peak: VmHWM above the lowest resting RSS, median of 3 answers; CPU: the process's, "
        "per answer."
    )
    return report
