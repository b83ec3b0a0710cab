"""100 concurrent streamed generations against the gateway in its own process.

The gateway is functions/api/run.sh's command (`python -m uvicorn main:app`) in a subprocess,
with default settings, MODELSCOPE_BASE_URL at the fake (a thread of this process) and the S3
stand-in's env; so its memory and CPU are its own (/proc/<pid>/status VmHWM, /proc/<pid>/stat).
One warm-up generation goes first (alone); then tasks take 2 s and all requests are sent at
once from one asyncio client, so they all finish together: a worst-case burst. A second pass with
IMAGE_LINKS=provider (no download, no copy into S3) separates the poll loop from the copy.
"""

from __future__ import annotations

import asyncio
import math
import time
from typing import Any

import httpx

from bench.common import (
    Report,
    StreamOutcome,
    Table,
    fake_modelscope,
    fmt_mib,
    fmt_s,
    gateway_subprocess,
    lag_table,
    mean,
    percentile,
    phase_summary,
    proc_cpu_seconds,
    proc_status,
    s3_stand_in,
    stream_chat,
    timelines,
)

STREAMS = 100
TASK_SECONDS = 2.0
TIME_LIMIT = 90.0
#: one generation before the burst (its task takes WARMUP_SECONDS): the process's first
#: result pays one-time costs (e.g. lazy imports), reported apart
WARMUP = "warm-up"
WARMUP_SECONDS = 0.5
#: IMAGE_LINKS of each pass: the default first
PASSES = ("stored", "provider")


async def _drive(url: str) -> list[StreamOutcome]:
    limits = httpx.Limits(max_connections=STREAMS * 2, max_keepalive_connections=STREAMS * 2)
    timeout = httpx.Timeout(60.0, pool=60.0)
    async with httpx.AsyncClient(limits=limits, timeout=timeout) as client:
        async with asyncio.timeout(TIME_LIMIT):
            return await asyncio.gather(
                *(stream_chat(client, url, f"bench concurrency #{i}") for i in range(STREAMS))
            )


def _duration(body: dict[str, Any]) -> float:
    return WARMUP_SECONDS if str(body.get("prompt")).startswith(WARMUP) else TASK_SECONDS


async def _warm_up(url: str) -> StreamOutcome:
    async with httpx.AsyncClient(timeout=httpx.Timeout(30.0)) as client:
        return await stream_chat(client, url, WARMUP)


def _pass(s3: dict[str, str], image_links: str) -> dict[str, Any]:
    """One warm-up generation, then STREAMS concurrent streams, on a fresh gateway process."""
    with (
        fake_modelscope(task_duration=_duration) as (fake, base),
        gateway_subprocess({**s3, "MODELSCOPE_BASE_URL": base, "IMAGE_LINKS": image_links}) as (
            process,
            url,
        ),
    ):
        first = asyncio.run(_warm_up(url))
        idle = proc_status(process.pid)
        cpu_before = proc_cpu_seconds(process.pid)
        began = time.monotonic()
        outcomes = asyncio.run(_drive(url))
        wall = time.monotonic() - began
        after = proc_status(process.pid)
        cpu = proc_cpu_seconds(process.pid) - cpu_before
        warm_rows, _ = timelines(fake, [first])
        rows, _ = timelines(fake, outcomes)
        submissions = len(fake.submissions) - 1
    errors = [o.error for o in outcomes if o.error is not None]
    good = [o for o in outcomes if o.error is None]
    ttfb = [o.first_line - o.started for o in good if o.first_line is not None]
    done = [o.done_at - o.started for o in good if o.done_at is not None]
    return {
        "image_links": image_links,
        "wall_s": wall,
        "ok": len(good),
        "errors": len(errors),
        "error_messages": sorted(set(errors))[:20],
        "ttfb_s": {"p50": percentile(ttfb, 50), "p95": percentile(ttfb, 95)},
        "completion_s": {
            "p50": percentile(done, 50),
            "p95": percentile(done, 95),
            "max": percentile(done, 100),
        },
        "phases_s": phase_summary(rows),
        "polls_per_s_mean": mean([r["polls_per_s"] for r in rows]),
        "submissions": submissions,
        "gateway_rss_kib": {
            "idle": idle.get("VmRSS", math.nan),
            "after": after.get("VmRSS", math.nan),
            "peak": after.get("VmHWM", math.nan),
        },
        "gateway_cpu_s": cpu,
        "first_generation": {
            "error": first.error,
            "lag_s": warm_rows[0]["lag_s"] if warm_rows else math.nan,
            "succeed_poll_to_client_s": (
                warm_rows[0]["to_download_s"] + warm_rows[0]["download_and_copy_s"]
                if warm_rows
                else math.nan
            ),
            "completion_s": (first.done_at or math.nan) - first.started,
        },
        "rows": rows,
    }


def _column(result: dict[str, Any]) -> list[str]:
    lag = result["phases_s"]["lag_s"]
    rss = result["gateway_rss_kib"]
    return [
        fmt_s(result["wall_s"], 2),
        f"{result['ok']} / {result['errors']}",
        f"{fmt_s(result['ttfb_s']['p50'])} / {fmt_s(result['ttfb_s']['p95'])}",
        f"{fmt_s(result['completion_s']['p50'])} / {fmt_s(result['completion_s']['p95'])} / "
        f"{fmt_s(result['completion_s']['max'])}",
        f"{fmt_s(lag['median'])} / {fmt_s(lag['p90'])} / {fmt_s(lag['max'])}",
        f"{result['polls_per_s_mean']:.2f}",
        str(result["submissions"]),
        f"{fmt_mib(rss['idle'])} → {fmt_mib(rss['after'])}",
        fmt_mib(rss["peak"]),
        fmt_s(result["gateway_cpu_s"], 2),
        fmt_s(result["first_generation"]["succeed_poll_to_client_s"]),
    ]


FIGURES = [
    "total wall time",
    "ok / errors",
    "time to first byte p50 / p95",
    "completion p50 / p95 / max",
    "lag median / p90 / max",
    "polls / s of generation (mean)",
    "submissions at the fake",
    "gateway RSS after warm-up → after burst",
    "gateway peak RSS (VmHWM)",
    "gateway CPU time during the run",
    "first generation after start (alone): SUCCEED poll → client has it",
]


def run() -> Report:
    with s3_stand_in() as s3:
        results = [_pass(s3, links) for links in PASSES]
    default = results[0]
    columns = [_column(r) for r in results]
    figures = Table(
        f"{STREAMS} concurrent streamed generations (tasks {TASK_SECONDS:g} s, default polling)",
        ["figure", *(f"IMAGE_LINKS={r['image_links']}" for r in results)],
        [[name, *(c[i] for c in columns)] for i, name in enumerate(FIGURES)],
    )
    tables = [figures]
    tables += [
        lag_table(f"Lag by phase, IMAGE_LINKS={r['image_links']}", r.pop("rows")) for r in results
    ]
    notes = [
        "Gateway: `python -m uvicorn main:app` (run.sh's flags) in a fresh subprocess for each "
        f"pass, default settings but IMAGE_LINKS (default {PASSES[0]}); the client (one "
        "httpx.AsyncClient, up to 200 connections), the fake and moto share the bench process.",
        "Time to first byte: request sent → first SSE line (the role chunk). Completion: "
        "request sent → data: [DONE]. Lag: content chunk received − task finished.",
        "The fake's result images are one colour, encoded once (see fake_modelscope in "
        "bench/common.py), so the harness does not eat the CPU the gateway needs.",
    ]
    for result in results:
        if result["errors"]:
            notes.append(
                f"Errors with IMAGE_LINKS={result['image_links']} ({result['errors']}): "
                + "; ".join(result["error_messages"][:5])
            )
    peak = default["gateway_rss_kib"]["peak"]
    return Report(
        name="concurrency",
        title=f"{STREAMS} concurrent streamed generations, gateway in its own process",
        tables=tables,
        notes=notes,
        data={"streams": STREAMS, "task_seconds": TASK_SECONDS, "passes": results},
        summary=[
            (
                f"{STREAMS} concurrent streams (2 s tasks): wall time, errors",
                f"{fmt_s(default['wall_s'], 2)}, {default['errors']} errors",
                "0 errors",
            ),
            (
                f"{STREAMS} concurrent streams: first byte p95 / completion p95",
                f"{fmt_s(default['ttfb_s']['p95'])} / {fmt_s(default['completion_s']['p95'])}",
                "—",
            ),
            (
                f"{STREAMS} concurrent streams: lag median, IMAGE_LINKS=stored (=provider)",
                f"{fmt_s(default['phases_s']['lag_s']['median'])} "
                f"({fmt_s(results[1]['phases_s']['lag_s']['median'])})",
                "—",
            ),
            (f"{STREAMS} concurrent streams: gateway peak RSS", fmt_mib(peak), "—"),
        ],
    )
