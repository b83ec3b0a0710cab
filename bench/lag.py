"""Detection lag and poll rate with the DEFAULT polling settings.

The gateway runs in this process (uvicorn in a thread) against the fake ModelScope (another
thread); tasks last 2-10 s (uniform, fixed seed). Lag = the moment this client received the
content chunk with the image (time.monotonic) - the moment the fake's task finished
(`tasks[id].finishes_at`, same clock). Poll rate = the fake's polls of a task / its duration.
"""

from __future__ import annotations

import asyncio
import random
import time
from typing import Any

import httpx

from bench.common import (
    Report,
    StreamOutcome,
    Table,
    fake_modelscope,
    fmt_s,
    gateway_in_process,
    gateway_settings,
    lag_table,
    mean,
    percentile,
    phase_summary,
    s3_stand_in,
    stream_chat,
    timelines,
)

GENERATIONS = 80
AT_ONCE = 40
SHORTEST, LONGEST = 2.0, 10.0
SEED = 20250601
TIME_LIMIT = 120.0
#: issue 25's figures for short tasks (measured beside the reference by `bench versus`)
TARGET_MEDIAN_LAG = 0.25
TARGET_POLLS_PER_SECOND = 1.0


def _durations() -> list[float]:
    rng = random.Random(SEED)
    return [rng.uniform(SHORTEST, LONGEST) for _ in range(GENERATIONS)]


def _prompt(index: int) -> str:
    return f"bench lag #{index}"


async def _drive(url: str) -> list[StreamOutcome]:
    gate = asyncio.Semaphore(AT_ONCE)
    limits = httpx.Limits(max_connections=AT_ONCE * 2, max_keepalive_connections=AT_ONCE * 2)

    async with httpx.AsyncClient(limits=limits, timeout=httpx.Timeout(60.0)) as client:

        async def one(index: int) -> StreamOutcome:
            async with gate:
                return await stream_chat(client, url, _prompt(index))

        async with asyncio.timeout(TIME_LIMIT):
            return await asyncio.gather(*(one(i) for i in range(GENERATIONS)))


def run() -> Report:
    durations = _durations()

    def duration(body: dict[str, Any]) -> float:
        return durations[int(str(body["prompt"]).rsplit("#", 1)[1])]

    with s3_stand_in() as s3, fake_modelscope(task_duration=duration) as (fake, base):
        settings = gateway_settings(s3, base)  # default polling: nothing shortened
        with gateway_in_process(settings) as url:
            began = time.monotonic()
            outcomes = asyncio.run(_drive(url))
            wall = time.monotonic() - began
        rows, errors = timelines(fake, outcomes)

    lags = [r["lag_s"] for r in rows]
    rates = [r["polls_per_s"] for r in rows]
    total_polls = sum(r["polls"] for r in rows)
    total_seconds = sum(r["duration_s"] for r in rows)
    aggregate_rate = total_polls / total_seconds if total_seconds else float("nan")
    median_lag = percentile(lags, 50)
    mean_rate = mean(rates)
    lag_met = "met" if median_lag <= TARGET_MEDIAN_LAG else "NOT met"
    rate_met = "met" if mean_rate <= TARGET_POLLS_PER_SECOND else "NOT met"
    figures = Table(
        "Figures and targets",
        ["figure", "value", "target"],
        [
            ["median lag", fmt_s(median_lag), f"≤ {TARGET_MEDIAN_LAG} s ({lag_met})"],
            ["p90 lag", fmt_s(percentile(lags, 90)), "—"],
            ["max lag", fmt_s(percentile(lags, 100)), "—"],
            [
                "mean polls / s of generation",
                f"{mean_rate:.2f}",
                f"≤ {TARGET_POLLS_PER_SECOND} ({rate_met})",
            ],
            ["max polls / s (one task)", f"{percentile(rates, 100):.2f}", "—"],
            ["all polls / all task seconds", f"{aggregate_rate:.2f}", "—"],
            ["generations ok / errors", f"{len(rows)} / {len(errors)}", "— / 0"],
            ["wall time", fmt_s(wall, 1), "—"],
        ],
    )
    notes = [
        f"{GENERATIONS} streamed chat completions, {AT_ONCE} at a time, task durations uniform "
        f"{SHORTEST:g}–{LONGEST:g} s (seed {SEED}); the fake stays PENDING for "
        f"{fake.pending_seconds:g} s, then RUNNING.",
        f"Default polling: poll_interval {settings.poll_interval:g} s, poll_interval_max "
        f"{settings.poll_interval_max:g} s, progress_interval {settings.progress_interval:g} s.",
        f"IMAGE_LINKS={settings.image_links} (the default): after the SUCCEED poll the gateway "
        "downloads the image from the fake and copies it into the S3 stand-in (moto) before it "
        "sends the content chunk.",
        "Client, gateway, fake and moto share one process (one GIL); servers in threads get "
        "TCP_NODELAY (ServerThread) and the fake's images are one colour, encoded once "
        "(fake_modelscope), both in bench/common.py.",
        "Poll detection is spread over one poll period (poll_interval + a poll's round trip), "
        f"so its expected median is about {settings.poll_interval / 2:.2f} s.",
        "Compared with the original approach (polls every 2 s) in the same run: "
        "`python -m bench versus`, its uneven mix.",
    ]
    if errors:
        notes.append("Errors: " + "; ".join(errors[:5]))
    return Report(
        name="lag",
        title="detection lag and poll rate (default polling)",
        tables=[figures, lag_table("Lag: client has the image − task finished, by phase", rows)],
        notes=notes,
        data={
            "generations": GENERATIONS,
            "at_once": AT_ONCE,
            "duration_range_s": [SHORTEST, LONGEST],
            "seed": SEED,
            "poll_interval_s": settings.poll_interval,
            "poll_interval_max_s": settings.poll_interval_max,
            "image_links": settings.image_links,
            "wall_s": wall,
            "errors": errors,
            "phases_s": phase_summary(rows),
            "polls_per_s": {
                "mean": mean_rate,
                "max": percentile(rates, 100),
                "aggregate": aggregate_rate,
            },
            "targets": {
                "median_lag_s": TARGET_MEDIAN_LAG,
                "polls_per_s": TARGET_POLLS_PER_SECOND,
            },
            "generations_detail": rows,
        },
        summary=[
            (
                f"Detection lag, median (tasks 2–10 s, {AT_ONCE} at a time)",
                fmt_s(median_lag),
                f"≤ {TARGET_MEDIAN_LAG} s",
            ),
            (
                "Detection lag, p90 / max",
                f"{fmt_s(percentile(lags, 90))} / {fmt_s(percentile(lags, 100))}",
                "—",
            ),
            (
                "Polls per second of generation (mean)",
                f"{mean_rate:.2f}",
                f"≤ {TARGET_POLLS_PER_SECOND}",
            ),
        ],
    )
