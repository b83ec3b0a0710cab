"""The gateway beside the original approach, measured in the same run (`python -m bench versus`).

The gateway is the `sam build` output booted as Lambda boots it (bench/artifact.py), with default
settings; the reference is bench/seedref/app.py (FastAPI + aiohttp, submit then poll every 2 s),
served by uvicorn from its own venv (.venv-bench). Both talk to the same fake ModelScope on
loopback and the S3 stand-in, and every figure alternates gateway and reference over several
repetitions, so the ratios survive a shared, noisy machine: medians (min–max) of each side, and
the ratio of the medians. No constant from another day is compared with.

Figures (issue 25's targets, ratios gateway / reference):
- boot: process start → first 200 of GET /v1/models (≤ 0.5);
- first: the first streamed chat of a cold instance (booted, then at once one generation of an
  instant provider): the server process's CPU from readiness to `data: [DONE]`, and the wall
  time, the gateway with stored links (the default) and with provider links, each beside the
  reference's first chat (no target: what the AWS clients and the first request's imports cost);
- CPU per 100 streamed 3-s generations, stored links / provider links (≤ 1.5 / ≤ 1.0): the server
  process's user + system time from /proc, 100 streams at once after one warm-up;
- a non-streamed request to an instant provider (≤ 2.0), and the gateway's answer after an instant
  task ends (≤ 0.15 s);
- an uneven mix of one model (tasks 2–12 s, some 25–40 s), 30 at once: median lag on the short
  tasks (≤ 0.25 s) and polls per second of generation, short (≤ 1.0) and long (≤ 0.35);
- with `BENCH_BIG=1`: 1,000 concurrent 3-s streams with stored links, wall time (≤ 1.2) and
  memory per stream (≤ 1.0).

`BENCH_PARTS` (comma-separated, of boot, first, cpu, instant, mix, big) runs only those parts:
`BENCH_PARTS=mix` the uneven mix alone, `BENCH_PARTS=big` the 1,000 streams alone.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import random
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import httpx

from bench.artifact import Booted, Lambda, boot, lambda_runtime_here
from bench.common import (
    AUTH,
    ROOT,
    MixTask,
    Report,
    StreamOutcome,
    Table,
    access_stand_in,
    chat_body,
    fake_modelscope,
    free_port,
    percentile,
    proc_cpu_seconds,
    proc_status,
    s3_stand_in,
    stream_chat,
    timelines,
    uneven_mix,
)
from bench.polling import frontier
from imagegw.infra.config import Settings

SEED_PYTHON = ROOT / ".venv-bench" / "bin" / "python"
SEED_APP_DIR = ROOT / "bench" / "seedref"
REPEATS = int(os.environ.get("BENCH_REPEATS", "3"))
STREAMS = 100
TASK_SECONDS = 3.0
INSTANT_REQUESTS = 20
MIX_GENERATIONS, MIX_AT_ONCE, MIX_SEED = 36, 30, 20261206
BIG_STREAMS = 1000
TIME_LIMIT = 240.0
PARTS = ("boot", "first", "cpu", "instant", "mix", "big")
WARMUP = "warm-up"

TARGETS: dict[str, tuple[str, float]] = {
    "boot": ("boot to first 200, ratio", 0.5),
    "cpu_stored": ("CPU per streamed generation, stored links, ratio", 1.5),
    "cpu_provider": ("CPU per streamed generation, provider links, ratio", 1.0),
    "instant_request": ("non-streamed request, instant provider, ratio", 2.0),
    "instant_after_end": ("instant task answered after the provider finished, s", 0.15),
    "mix_lag_short": ("median lag, short tasks of the uneven mix, s", 0.25),
    "mix_polls_short": ("polls per second of generation, short tasks", 1.0),
    "mix_polls_long": ("polls per second of generation, long tasks", 0.35),
    "big_wall": ("1,000 concurrent streams, stored links, wall ratio", 1.2),
    "big_memory": ("1,000 concurrent streams, memory per stream ratio", 1.0),
}


# ------------------------------------------------------------------------------ the two servers


@dataclass(frozen=True)
class Side:
    """How to start one of the two servers with a given environment."""

    name: str
    start: Callable[[Lambda, dict[str, str]], contextlib.AbstractContextManager[Booted]]


#: both servers answer GET /v1/models once ready (the reference has no /healthz)
READY_PATH = "/v1/models"
READY_TIMEOUT = 60.0


#: the template's default GenerationTimeout: the tests' stand-in environment waits only 30 s,
#: which failed the mix's 30-40-s tasks (they were left out of its figures as errors)
GENERATION_TIMEOUT = "840"


@contextlib.contextmanager
def gateway(runtime: Lambda, env: dict[str, str]) -> Iterator[Booted]:
    port = free_port()
    from lambda_runtime import FUNCTION

    # the template's default mixed mode: an access table (shared estimates), fresh for each boot
    access = access_stand_in(env) if "S3_ENDPOINT_URL" in env else {}
    with boot(
        runtime.artifact_argv(),
        runtime.artifact_env(port, {"GENERATION_TIMEOUT": GENERATION_TIMEOUT, **env, **access}),
        port,
        runtime.build / FUNCTION,
        READY_PATH,
        READY_TIMEOUT,
    ) as booted:
        yield booted


@contextlib.contextmanager
def seed(runtime: Lambda, env: dict[str, str]) -> Iterator[Booted]:
    if not SEED_PYTHON.exists():
        raise RuntimeError(
            "no .venv-bench: `make bench` creates it (bench/seedref/requirements.txt)"
        )
    port = free_port()
    argv = [
        str(SEED_PYTHON),
        "-m",
        "uvicorn",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--no-access-log",
        "--app-dir",
        str(SEED_APP_DIR),
        "app:app",
    ]
    environment = {
        "PATH": "/usr/bin:/bin",
        "MODELSCOPE_BASE_URL": env["MODELSCOPE_BASE_URL"],
        "PYTHONDONTWRITEBYTECODE": "1",
    }
    with boot(argv, environment, port, SEED_APP_DIR, READY_PATH, READY_TIMEOUT) as booted:
        yield booted


SIDES = (Side("gateway", gateway), Side("seed", seed))


def _spread(values: list[float]) -> dict[str, float]:
    good = [v for v in values if not math.isnan(v)]
    if not good:
        return {"median": math.nan, "min": math.nan, "max": math.nan}
    return {"median": percentile(good, 50), "min": min(good), "max": max(good)}


# ------------------------------------------------------------------------------ measurements


async def _streams(url: str, count: int, label: str) -> list[StreamOutcome]:
    limits = httpx.Limits(max_connections=count * 2, max_keepalive_connections=count * 2)
    timeout = httpx.Timeout(120.0, pool=120.0)
    async with httpx.AsyncClient(limits=limits, timeout=timeout) as client:
        async with asyncio.timeout(TIME_LIMIT):
            return await asyncio.gather(
                *(stream_chat(client, url, f"bench {label} #{i}") for i in range(count))
            )


def _burst(
    runtime: Lambda, side: Side, s3: dict[str, str], links: str, count: int
) -> dict[str, Any]:
    """A fresh server: one warm-up generation, then `count` 3-s streams at once."""

    def duration(body: dict[str, Any]) -> float:
        return 0.5 if str(body.get("prompt")).startswith(WARMUP) else TASK_SECONDS

    with fake_modelscope(task_duration=duration) as (_fake, base):
        env = {**s3, "IMAGE_LINKS": links, "MODELSCOPE_BASE_URL": base}
        with side.start(runtime, env) as booted:
            pid = booted.process.pid
            asyncio.run(_streams(booted.url, 1, WARMUP))
            idle = proc_status(pid).get("VmRSS", math.nan)
            cpu = proc_cpu_seconds(pid)
            began = time.monotonic()
            outcomes = asyncio.run(_streams(booted.url, count, f"{side.name} {links}"))
            wall = time.monotonic() - began
            cpu = proc_cpu_seconds(pid) - cpu
            peak = proc_status(pid).get("VmHWM", math.nan)
    errors = [o.error for o in outcomes if o.error]
    return {
        "cpu_per_100_s": cpu / count * 100,
        "wall_s": wall,
        "errors": len(errors),
        "first_error": errors[0] if errors else None,
        "kib_per_stream": (peak - idle) / count,
    }


def _instant(
    runtime: Lambda, side: Side, s3: dict[str, str], links: str | None = None
) -> dict[str, Any]:
    """Non-streamed requests to a provider whose tasks are done at once: default settings, or
    IMAGE_LINKS=`links` (the reference has provider links only)."""
    with fake_modelscope(task_duration=lambda body: 0.0, pending_seconds=0.0) as (fake, base):
        env = {**s3, "MODELSCOPE_BASE_URL": base}
        if links is not None:
            env["IMAGE_LINKS"] = links
        with side.start(runtime, env) as booted, httpx.Client(timeout=30.0) as client:
            url = f"{booted.url}/v1/chat/completions"
            times, after_end, failures = [], [], 0
            for index in range(INSTANT_REQUESTS + 1):
                body = chat_body(f"bench instant {side.name} #{index}", stream=False)
                began = time.monotonic()
                response = client.post(url, json=body, headers=AUTH)
                ended = time.monotonic()
                if response.status_code != 200:
                    failures += 1
                    continue
                if index == 0:
                    continue  # warm-up
                times.append(ended - began)
                task = list(fake.tasks.values())[-1]
                after_end.append(ended - task.finishes_at)
    return {
        "median_s": percentile(times, 50) if times else math.nan,
        "after_end_s": percentile(after_end, 50) if after_end else math.nan,
        "failures": failures,
    }


def _mix(runtime: Lambda, side: Side, s3: dict[str, str]) -> dict[str, Any]:
    """The uneven mix (`bench.common.uneven_mix`): lag and polls per second of generation,
    short and long tasks apart."""
    tasks = uneven_mix(MIX_GENERATIONS, random.Random(MIX_SEED))

    def task(body: dict[str, Any]) -> MixTask:
        prompt = str(body.get("prompt"))
        if prompt.startswith(WARMUP):
            return MixTask(0.1, 0.4)
        return tasks[int(prompt.rsplit("#", 1)[1])]

    async def drive(url: str) -> list[StreamOutcome]:
        gate = asyncio.Semaphore(MIX_AT_ONCE)
        async with httpx.AsyncClient(timeout=httpx.Timeout(120.0)) as client:

            async def one(index: int) -> StreamOutcome:
                async with gate:
                    return await stream_chat(client, url, f"bench mix {side.name} #{index}")

            async with asyncio.timeout(TIME_LIMIT):
                return await asyncio.gather(*(one(i) for i in range(len(tasks))))

    def total(body: dict[str, Any]) -> float:
        return task(body).total

    def queued(body: dict[str, Any]) -> float:
        return task(body).queued

    with fake_modelscope(task_duration=total, pending_seconds=queued) as (fake, base):
        env = {**s3, "MODELSCOPE_BASE_URL": base, "IMAGE_LINKS": "provider"}
        with side.start(runtime, env) as booted:
            outcomes = asyncio.run(drive(booted.url))
        rows, errors = timelines(fake, outcomes)
    short = [r for r in rows if r["duration_s"] < 20]
    long = [r for r in rows if r["duration_s"] >= 20]

    def rate(group: list[dict[str, Any]]) -> float:
        seconds = sum(r["duration_s"] for r in group)
        return sum(r["polls"] for r in group) / seconds if seconds else math.nan

    return {
        "lag_short_s": percentile([r["lag_s"] for r in short], 50) if short else math.nan,
        "lag_long_s": percentile([r["lag_s"] for r in long], 50) if long else math.nan,
        "polls_short": rate(short),
        "polls_long": rate(long),
        "errors": len(errors),
    }


def _stand_in_write(s3: dict[str, str]) -> float:
    """The S3 stand-in's median time to store one small result: a presigned POST, as the
    gateway's uploads are."""
    import boto3

    client = boto3.client("s3", endpoint_url=s3["S3_ENDPOINT_URL"], region_name="us-east-1")
    body = b"\x89PNG\r\n\x1a\n" + bytes(4096)
    times = []
    with httpx.Client(timeout=30.0) as http:
        for index in range(INSTANT_REQUESTS + 1):
            form = client.generate_presigned_post(s3["BUCKET"], f"bench/write-{index}.png")
            began = time.monotonic()
            answer = http.post(
                form["url"], data=form["fields"], files={"file": ("r.png", body, "image/png")}
            )
            elapsed = time.monotonic() - began
            answer.raise_for_status()
            if index:  # the first warms the connection
                times.append(elapsed)
    return percentile(times, 50)


def _boot_once(runtime: Lambda, side: Side, s3: dict[str, str]) -> float:
    with (
        fake_modelscope(task_duration=lambda body: 0.0) as (_fake, base),
        side.start(runtime, {**s3, "MODELSCOPE_BASE_URL": base}) as booted,
    ):
        return booted.ready - booted.began


def _first_chat(runtime: Lambda, side: Side, s3: dict[str, str], links: str) -> dict[str, Any]:
    """A fresh server, ready, then at once one streamed chat of an instant provider: the
    process's CPU from readiness to its `data: [DONE]`, and that wall time (the reference has
    provider links only: `links` is the gateway's IMAGE_LINKS)."""
    with fake_modelscope(task_duration=lambda body: 0.0, pending_seconds=0.0) as (_fake, base):
        env = {**s3, "IMAGE_LINKS": links, "MODELSCOPE_BASE_URL": base}
        with side.start(runtime, env) as booted:
            pid = booted.process.pid
            cpu = proc_cpu_seconds(pid)
            began = time.monotonic()
            outcomes = asyncio.run(_streams(booted.url, 1, f"first {side.name} {links}"))
            wall = time.monotonic() - began
            cpu = proc_cpu_seconds(pid) - cpu
    error = outcomes[0].error
    if error:
        raise RuntimeError(f"the first chat of {side.name} failed: {error}")
    return {"cpu_s": cpu, "wall_s": wall}


# ------------------------------------------------------------------------------ the report


def _alternate(
    runtime: Lambda, measure: Callable[[Side], dict[str, Any] | float], repeats: int
) -> dict[str, list[Any]]:
    results: dict[str, list[Any]] = {side.name: [] for side in SIDES}
    for repeat in range(repeats):
        order = SIDES if repeat % 2 == 0 else tuple(reversed(SIDES))
        for side in order:
            results[side.name].append(measure(side))
    return results


def _pick(results: dict[str, list[Any]], side: str, key: str | None) -> dict[str, float]:
    values = results[side]
    return _spread([float(v if key is None else v[key]) for v in values])


def _fmt(spread: dict[str, float], unit: str = "s") -> str:
    if math.isnan(spread["median"]):
        return "—"
    if unit == "s":
        return f"{spread['median']:.3f} s ({spread['min']:.3f}–{spread['max']:.3f})"
    return f"{spread['median']:.2f} ({spread['min']:.2f}–{spread['max']:.2f})"


def _parts() -> frozenset[str]:
    """The parts to run: BENCH_PARTS, else all but the 1,000 streams (unless BENCH_BIG=1)."""
    chosen = {p.strip() for p in os.environ.get("BENCH_PARTS", "").split(",") if p.strip()}
    unknown = chosen - set(PARTS)
    if unknown:
        raise ValueError(f"BENCH_PARTS: unknown {sorted(unknown)}; choose from {PARTS}")
    if chosen:
        return frozenset(chosen)
    return frozenset(p for p in PARTS if p != "big" or os.environ.get("BENCH_BIG") == "1")


def run() -> Report:
    parts = _parts()
    rows: list[list[str]] = []
    verdicts: list[list[str]] = []
    data: dict[str, Any] = {"repeats": REPEATS}
    notes = [
        f"{REPEATS} repetitions, gateway and reference alternating (boot and first chat: "
        f"{REPEATS + 2}).",
        "Reference: bench/seedref/app.py (FastAPI + aiohttp, polls every 2 s, provider links).",
        "Gateway: the sam build output booted as Lambda boots it, default settings.",
    ]

    def verdict(key: str, value: float) -> None:
        title, target = TARGETS[key]
        held = "holds" if value <= target else "MISSES"
        verdicts.append(
            [title, "—" if math.isnan(value) else f"{value:.2f}", f"≤ {target:g}", held]
        )
        data.setdefault("targets", {})[key] = {
            "value": value,
            "target": target,
            "holds": value <= target,
        }

    def compare(
        label: str, results: dict[str, list[Any]], key: str | None, unit: str = "s"
    ) -> float:
        gw, sd = _pick(results, "gateway", key), _pick(results, "seed", key)
        ratio = gw["median"] / sd["median"] if sd["median"] else math.nan
        rows.append([label, _fmt(gw, unit), _fmt(sd, unit), f"{ratio:.2f}"])
        data[label] = {"gateway": gw, "seed": sd, "ratio": ratio}
        return ratio

    with lambda_runtime_here() as runtime, s3_stand_in() as s3:
        if "boot" in parts:
            boots = _alternate(runtime, lambda side: _boot_once(runtime, side, s3), REPEATS + 2)
            verdict("boot", compare("boot → first 200 of /v1/models", boots, None))

        for links in ("stored", "provider"):
            if "first" not in parts:
                break
            firsts = _alternate(
                runtime,
                lambda side, links=links: _first_chat(runtime, side, s3, links),
                REPEATS + 2,
            )
            compare(f"first chat of a cold instance, CPU s ({links} links)", firsts, "cpu_s")
            compare(f"first chat of a cold instance, wall ({links} links)", firsts, "wall_s")

        for links, key in (("stored", "cpu_stored"), ("provider", "cpu_provider")):
            if "cpu" not in parts:
                break
            bursts = _alternate(
                runtime,
                lambda side, links=links: _burst(runtime, side, s3, links, STREAMS),
                REPEATS,
            )
            ratio = compare(
                f"CPU s per 100 streamed 3-s generations ({links} links)",
                bursts,
                "cpu_per_100_s",
            )
            verdict(key, ratio)
            compare(f"{STREAMS} at once, wall ({links} links)", bursts, "wall_s")
            data[f"errors_{links}"] = {s: [r["errors"] for r in v] for s, v in bursts.items()}

        if "instant" in parts:
            instant = _alternate(runtime, lambda side: _instant(runtime, side, s3), REPEATS)
            verdict(
                "instant_request",
                compare("non-streamed request, instant provider", instant, "median_s"),
            )
            compare("answer after the instant task ended", instant, "after_end_s")
            verdict("instant_after_end", _pick(instant, "gateway", "after_end_s")["median"])
            # what the default's stored link adds: the same request with provider links, and
            # the S3 stand-in's own time for one write (the stored copy waits for one)
            linked = _alternate(
                runtime, lambda side: _instant(runtime, side, s3, "provider"), REPEATS
            )
            compare("non-streamed request, instant provider, provider links", linked, "median_s")
            write = _stand_in_write(s3)
            data["stand_in_write_s"] = write
            notes.append(
                f"The S3 stand-in (moto) takes {write * 1000:.1f} ms to store one result (median "
                "of 20 presigned POSTs, this run): the default's stored link waits for one "
                "such write; on AWS an S3 PUT takes longer."
            )

        if "mix" in parts:
            mix = _alternate(runtime, lambda side: _mix(runtime, side, s3), 1)
            compare("uneven mix: median lag, short tasks", mix, "lag_short_s")
            compare("uneven mix: median lag, long tasks", mix, "lag_long_s")
            compare("uneven mix: polls / s of generation, short", mix, "polls_short", unit="x")
            compare("uneven mix: polls / s of generation, long", mix, "polls_long", unit="x")
            verdict("mix_lag_short", _pick(mix, "gateway", "lag_short_s")["median"])
            verdict("mix_polls_short", _pick(mix, "gateway", "polls_short")["median"])
            verdict("mix_polls_long", _pick(mix, "gateway", "polls_long")["median"])
            compare("uneven mix: failed generations", mix, "errors", unit="x")
            # what the short tasks' two targets ask together, of any schedule (bench.polling)
            _, edge = frontier(Settings().poll_interval)
            data["mix_frontier"] = edge
            if "lag" in edge:
                cheapest = edge["lag"]
                notes.append(
                    "The mix's short tasks, for any schedule that knew their law exactly "
                    f"(`bench.polling.frontier`): the cheapest meeting a median lag of "
                    f"{TARGETS['mix_lag_short'][1]:g} s polls {cheapest['polls_per_s']:.2f} "
                    f"times a second, nothing from the early poll to {cheapest['first']:.1f} s "
                    f"and then every {cheapest['every']:.2f} s, so its mean lag is "
                    f"{cheapest['mean_lag']:.2f} s (p90 {cheapest['p90_lag']:.1f} s), against "
                    f"{edge['even']['mean_lag']:.2f} s polled every POLL_INTERVAL."
                )

        if "big" in parts:
            big = _alternate(
                runtime, lambda side: _burst(runtime, side, s3, "stored", BIG_STREAMS), 1
            )
            verdict("big_wall", compare("1,000 at once, wall (stored links)", big, "wall_s"))
            verdict(
                "big_memory",
                compare("1,000 at once, KiB per stream", big, "kib_per_stream", unit="x"),
            )
            compare("1,000 at once, failed streams", big, "errors", unit="x")
            data["big_first_error"] = {s: [r["first_error"] for r in v] for s, v in big.items()}

    figures = Table(
        "Gateway beside the seed-shaped reference (same run; median (min–max))",
        ["figure", "gateway", "reference", "ratio"],
        rows,
    )
    targets = Table("Targets (issue 25)", ["target", "value", "goal", "verdict"], verdicts)
    summary = [
        (title, f"{entry['value']:.2f}", f"≤ {entry['target']:g}")
        for title, entry in ((TARGETS[k][0], v) for k, v in data.get("targets", {}).items())
    ]
    return Report(
        name="versus",
        title="the gateway beside the seed-shaped reference, same run",
        tables=[figures, targets],
        notes=notes,
        summary=summary,
        data=data,
    )
