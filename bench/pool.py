"""The guarded fetcher's connection pool at 1,000 concurrent downloads, beside httpcore's own
pool at the same public limits (issue 25: 68% of the CPU at 1,000 concurrent streams with stored
links went to httpcore's pool bookkeeping).

Method: an image host on loopback (uvicorn in a thread of its own) answers `GET /x.png` with a
64 KiB body after `LATENCY` seconds, as a result CDN under load does. In one event loop, `COUNT`
downloads start at once through each client in turn, alternating, `REPEATS` times:

- "httpcore pool": httpx's own transport (`httpx.AsyncHTTPTransport`, which builds
  `httpcore.AsyncConnectionPool`) with `max_connections=100, max_keepalive_connections=20`: what
  the fetcher was built on before. The 900 requests over the limit queue inside the pool, which
  looks at its whole queue and every connection each time a request comes or a response closes.
- "fetcher": `imagegw.infra.fetcher.Fetcher` as the gateway builds it (the SSRF guard, over
  `imagegw.infra.transport.PooledTransport`: the 900 wait in an asyncio semaphore).

Figures: the CPU seconds of the client's thread only (`time.thread_time`: the image host's thread
is not counted), and the wall time of the batch; medians with min-max. `python -m bench pool`.
"""

from __future__ import annotations

import asyncio
import statistics
import time
from collections.abc import Awaitable, Callable
from typing import Final

import httpx
from starlette.types import Receive, Scope, Send

from bench.common import Report, Table
from fakes.server import ServerThread
from imagegw.infra.config import Settings
from imagegw.infra.fetcher import MAX_CONNECTIONS, Fetcher

COUNT: Final = 1000
REPEATS: Final = 3
LATENCY: Final = 0.02
BODY: Final = b"\x89PNG" + b"\0" * (64 * 1024 - 4)


async def _image_host(scope: Scope, receive: Receive, send: Send) -> None:
    if scope["type"] != "http":
        return
    await asyncio.sleep(LATENCY)
    headers = [(b"content-type", b"image/png"), (b"content-length", str(len(BODY)).encode())]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": BODY})


Download = Callable[[str], Awaitable[bytes]]


async def _batch(download: Download, url: str) -> tuple[float, float, int]:
    """CPU seconds of this thread, wall seconds, failures: `COUNT` downloads at once."""
    cpu, wall = time.thread_time(), time.perf_counter()
    answers = await asyncio.gather(*(download(url) for _ in range(COUNT)), return_exceptions=True)
    failures = sum(1 for a in answers if not isinstance(a, bytes) or len(a) != len(BODY))
    return time.thread_time() - cpu, time.perf_counter() - wall, failures


async def _measure(url: str) -> dict[str, list[tuple[float, float, int]]]:
    limits = httpx.Limits(max_connections=MAX_CONNECTIONS, max_keepalive_connections=20)
    httpcore_client = httpx.AsyncClient(
        transport=httpx.AsyncHTTPTransport(limits=limits), timeout=60.0
    )
    fetcher = Fetcher(Settings(allow_private_urls=True), timeout=60.0)

    async def through_httpcore(target: str) -> bytes:
        answer = await httpcore_client.get(target)
        answer.raise_for_status()
        return answer.content

    async def through_fetcher(target: str) -> bytes:
        return await fetcher.fetch(target, limit=1 << 20)

    clients: dict[str, Download] = {"httpcore pool": through_httpcore, "fetcher": through_fetcher}
    runs: dict[str, list[tuple[float, float, int]]] = {name: [] for name in clients}
    try:
        for download in clients.values():  # warm both (imports, TLS context, first pools)
            await download(url)
        for _ in range(REPEATS):
            for name, download in clients.items():
                runs[name].append(await _batch(download, url))
    finally:
        await httpcore_client.aclose()
        await fetcher.aclose()
    return runs


def _spread(values: list[float]) -> str:
    return f"{statistics.median(values):.2f} s ({min(values):.2f}-{max(values):.2f})"


def run() -> Report:
    with ServerThread(_image_host) as host:
        runs = asyncio.run(_measure(f"{host.url}/x.png"))
    rows = []
    data: dict[str, dict[str, float | int]] = {}
    for name, measured in runs.items():
        cpu = [m[0] for m in measured]
        wall = [m[1] for m in measured]
        failures = sum(m[2] for m in measured)
        rows.append([name, _spread(cpu), _spread(wall), str(failures)])
        data[name] = {
            "cpu_median_s": statistics.median(cpu),
            "wall_median_s": statistics.median(wall),
            "failures": failures,
        }
    ratio = data["fetcher"]["cpu_median_s"] / data["httpcore pool"]["cpu_median_s"]
    return Report(
        "pool",
        f"{COUNT} concurrent downloads, max_connections={MAX_CONNECTIONS}",
        tables=[
            Table(
                f"{COUNT} downloads at once of a 64 KiB image ({LATENCY * 1000:g} ms latency), "
                f"{REPEATS} runs each, alternating: median (min-max)",
                ["client", "CPU of the client thread", "wall", "failures"],
                rows,
            )
        ],
        data={**data, "cpu_ratio": ratio},
        summary=[
            (
                f"fetcher CPU / httpcore pool CPU, {COUNT} downloads at once",
                f"{ratio:.2f}",
                "< 1",
            )
        ],
    )


if __name__ == "__main__":
    print(run().markdown())
