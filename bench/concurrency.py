"""300 concurrent streamed generations against the deployed artifact in its own process.

The gateway is the `sam build` output booted as Lambda boots it (bench/artifact.py: run.sh, the
layer's bytecode, the runtime's boto3), with default settings, MODELSCOPE_BASE_URL at the fake
(a thread of this process) and the S3 stand-in's env; so its memory and CPU are its own
(/proc/<pid>/status VmHWM, /proc/<pid>/stat). One warm-up generation goes first (alone); then
tasks take 3 s and all requests are sent at once from one asyncio client, so they all finish
together: a worst-case burst. A second pass with IMAGE_LINKS=provider (no download, no copy into
S3) separates the poll loop from the copy. A third pass is a first burst (no warm-up) of 100
against a fake whose listen backlog is small, as a busy provider's may be: submits that find
no connection must not be lost.

These are the gateway's own figures; how they compare with the original approach is measured
beside a seed-shaped reference in the same run by `python -m bench versus` (bench/versus.py),
not against constants from another day.
"""

from __future__ import annotations

import asyncio
import math
import time
from typing import Any

import httpx

from bench.artifact import Lambda, artifact, lambda_runtime_here
from bench.common import (
    Report,
    StreamOutcome,
    Table,
    fake_modelscope,
    fmt_mib,
    fmt_s,
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

STREAMS = 300
TASK_SECONDS = 3.0
TIME_LIMIT = 120.0
#: one generation before the burst (its task takes WARMUP_SECONDS): the process's first
#: result pays one-time costs (e.g. the S3 client), reported apart
WARMUP = "warm-up"
WARMUP_SECONDS = 0.5
#: IMAGE_LINKS of each pass: the default first
PASSES = ("stored", "provider")
#: the first burst against a provider that accepts few connections at a time
BURST_STREAMS = 100
BURST_BACKLOG = 8


async def _drive(url: str, streams: int, label: str) -> list[StreamOutcome]:
    limits = httpx.Limits(max_connections=streams * 2, max_keepalive_connections=streams * 2)
    timeout = httpx.Timeout(60.0, pool=60.0)
    async with httpx.AsyncClient(limits=limits, timeout=timeout) as client:
        async with asyncio.timeout(TIME_LIMIT):
            return await asyncio.gather(
                *(stream_chat(client, url, f"bench {label} #{i}") for i in range(streams))
            )


def _duration(body: dict[str, Any]) -> float:
    return WARMUP_SECONDS if str(body.get("prompt")).startswith(WARMUP) else TASK_SECONDS


async def _warm_up(url: str) -> StreamOutcome:
    async with httpx.AsyncClient(timeout=httpx.Timeout(30.0)) as client:
        return await stream_chat(client, url, WARMUP)


def _pass(
    runtime: Lambda,
    s3: dict[str, str],
    image_links: str,
    *,
    streams: int = STREAMS,
    backlog: int = 2048,
    warm_up: bool = True,
) -> dict[str, Any]:
    """A fresh gateway process: one warm-up generation (unless not), then `streams` at once."""
    env = {**s3, "IMAGE_LINKS": image_links}
    with fake_modelscope(task_duration=_duration, backlog=backlog) as (fake, base):
        with artifact(runtime, {**env, "MODELSCOPE_BASE_URL": base}) as booted:
            pid = booted.process.pid
            first = asyncio.run(_warm_up(booted.url)) if warm_up else None
            idle = proc_status(pid)
            cpu_before = proc_cpu_seconds(pid)
            began = time.monotonic()
            outcomes = asyncio.run(_drive(booted.url, streams, image_links))
            wall = time.monotonic() - began
            after = proc_status(pid)
            cpu = proc_cpu_seconds(pid) - cpu_before
        warm_rows, _ = timelines(fake, [first] if first else [])
        rows, _ = timelines(fake, outcomes)
        submissions = len(fake.submissions) - (1 if first else 0)
    errors = [o.error for o in outcomes if o.error is not None]
    good = [o for o in outcomes if o.error is None]
    ttfb = [o.first_line - o.started for o in good if o.first_line is not None]
    done = [o.done_at - o.started for o in good if o.done_at is not None]
    return {
        "image_links": image_links,
        "streams": streams,
        "backlog": backlog,
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
        "cpu_per_100_s": cpu / streams * 100,
        "first_generation": {
            "error": first.error if first else None,
            "succeed_poll_to_client_s": (
                warm_rows[0]["to_download_s"] + warm_rows[0]["download_and_copy_s"]
                if warm_rows
                else math.nan
            ),
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
        fmt_s(result["cpu_per_100_s"], 2),
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
    "gateway CPU time during the burst",
    "gateway CPU per 100 generations",
    "first generation after start (alone): SUCCEED poll → client has it",
]


def run() -> Report:
    with lambda_runtime_here() as runtime, s3_stand_in() as s3:
        results = [_pass(runtime, s3, links) for links in PASSES]
        burst = _pass(
            runtime,
            s3,
            "provider",
            streams=BURST_STREAMS,
            backlog=BURST_BACKLOG,
            warm_up=False,
        )
    by_links = {r["image_links"]: r for r in results}
    default = results[0]
    columns = [_column(r) for r in [*results, burst]]
    figures = Table(
        f"{STREAMS} concurrent streamed generations (tasks {TASK_SECONDS:g} s, default polling)",
        [
            "figure",
            *(f"IMAGE_LINKS={r['image_links']}" for r in results),
            f"first burst of {BURST_STREAMS}, backlog {BURST_BACKLOG}",
        ],
        [[name, *(c[i] for c in columns)] for i, name in enumerate(FIGURES)],
    )
    tables = [figures]
    tables += [
        lag_table(f"Lag by phase, IMAGE_LINKS={r['image_links']}", r.pop("rows")) for r in results
    ]
    burst.pop("rows")
    cpu_table = Table(
        "Gateway CPU per 100 streamed generations (ratios to the reference: bench versus)",
        ["pass", "CPU / 100"],
        [
            [f"IMAGE_LINKS={links}", fmt_s(result["cpu_per_100_s"], 2)]
            for links, result in by_links.items()
        ],
    )
    tables.append(cpu_table)
    notes = [
        "Gateway: the artifact booted as Lambda boots it (bench/artifact.py), a fresh process "
        f"for each pass, default settings but IMAGE_LINKS (default {PASSES[0]}); the client "
        "(one httpx.AsyncClient), the fake and moto share the bench process.",
        "Time to first byte: request sent → first SSE line (the role chunk). Completion: "
        "request sent → data: [DONE]. Lag: content chunk received − task finished.",
        "The fake's result images are one colour, encoded once (see fake_modelscope in "
        "bench/common.py), so the harness does not eat the CPU the gateway needs.",
        "Compared with the original approach: `python -m bench versus`, the seed-shaped "
        "reference measured beside the gateway in the same run.",
        f"First burst: {BURST_STREAMS} streams at once on a fresh process (no warm-up, so every "
        f"submit needs a new connection) against a fake whose listen backlog is {BURST_BACKLOG}.",
    ]
    for result in [*results, burst]:
        if result["errors"]:
            notes.append(
                f"Errors with IMAGE_LINKS={result['image_links']}, {result['streams']} streams "
                f"({result['errors']}): " + "; ".join(result["error_messages"][:5])
            )
    peak = default["gateway_rss_kib"]["peak"]
    wall = default["wall_s"]
    return Report(
        name="concurrency",
        title=f"{STREAMS} concurrent streamed generations, the artifact in its own process",
        tables=tables,
        notes=notes,
        data={
            "streams": STREAMS,
            "task_seconds": TASK_SECONDS,
            "passes": results,
            "burst": burst,
        },
        summary=[
            (
                f"{STREAMS} concurrent streams ({TASK_SECONDS:g} s tasks): wall time, errors",
                f"{fmt_s(wall, 2)}, {default['errors']} errors",
                "0 errors (ratio: bench versus)",
            ),
            *(
                (
                    f"CPU per 100 streamed generations, IMAGE_LINKS={links}",
                    fmt_s(r["cpu_per_100_s"], 2),
                    "ratio: bench versus",
                )
                for links, r in by_links.items()
            ),
            (
                f"First burst of {BURST_STREAMS} against a backlog of {BURST_BACKLOG}: errors",
                str(burst["errors"]),
                "0",
            ),
            (f"{STREAMS} concurrent streams: gateway peak RSS", fmt_mib(peak), "—"),
        ],
    )
