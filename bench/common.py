"""Shared pieces of the benchmarks: stand-ins on loopback, a streamed-chat client, process
helpers, statistics and Markdown tables."""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import platform
import random
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

import httpx

import fakes.modelscope as fake_module
from fakes.aws import aws_credentials
from fakes.modelscope import DEFAULT_TOKENS, Duration, FakeModelScope
from fakes.png import make_png
from fakes.server import ServerThread
from imagegw.frontends.app import create_app
from imagegw.frontends.local import stop_stand_ins
from imagegw.infra.config import Settings

ROOT = Path(__file__).resolve().parent.parent
#: the token the fake accepts
TOKEN = min(DEFAULT_TOKENS)
MODEL = "Qwen/Qwen-Image"
AUTH = {"authorization": f"Bearer {TOKEN}"}
BUCKET = "bench-bucket"
#: a markdown image line of the gateway's answer
IMAGE_LINE = re.compile(r"!\[[^\]]*\]\((\S+)\)")


# ------------------------------------------------------------------------------ reports


@dataclass
class Table:
    """One Markdown table of a report."""

    title: str
    headers: Sequence[str]
    rows: Sequence[Sequence[str]]

    def markdown(self) -> str:
        return f"**{self.title}**\n\n{markdown_table(self.headers, self.rows)}"


@dataclass
class Report:
    """What a benchmark prints (tables, notes), stores (data) and puts in the summary."""

    name: str
    title: str
    tables: list[Table] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    data: dict[str, Any] = field(default_factory=dict)
    #: (figure, value, target) rows of the final summary table
    summary: list[tuple[str, str, str]] = field(default_factory=list)

    def markdown(self) -> str:
        parts = [f"## {self.name}: {self.title}"]
        parts += [table.markdown() for table in self.tables]
        if self.notes:
            parts.append("\n".join(f"- {note}" for note in self.notes))
        return "\n\n".join(parts)


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A GitHub Markdown table with padded columns (numbers read better right-aligned)."""
    widths = [len(h) for h in headers]
    for row in rows:
        widths = [max(w, len(cell)) for w, cell in zip(widths, row, strict=True)]

    def line(cells: Sequence[str]) -> str:
        return "| " + " | ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True)) + " |"

    rule = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    return "\n".join([line(headers), rule, *(line(row) for row in rows)])


# ------------------------------------------------------------------------------ statistics


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0-100), interpolated linearly between closest ranks; nan if empty."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q / 100.0
    low = math.floor(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def mean(values: Sequence[float]) -> float:
    return sum(values) / len(values) if values else math.nan


def fmt_s(seconds: float, digits: int = 3) -> str:
    return "n/a" if math.isnan(seconds) else f"{seconds:.{digits}f} s"


def fmt_ms(seconds: float) -> str:
    return "n/a" if math.isnan(seconds) else f"{seconds * 1000:.1f} ms"


def fmt_mib(kib: float) -> str:
    return "n/a" if math.isnan(kib) else f"{kib / 1024:.1f} MiB"


# ------------------------------------------------------------------------------ machine


def machine_facts() -> dict[str, Any]:
    """CPU, memory, Python and the versions of the libraries on the request path."""
    cpu_model = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        for raw in Path("/proc/cpuinfo").read_text().splitlines():
            if raw.lower().startswith(("model name", "hardware")):
                cpu_model = raw.split(":", 1)[1].strip()
                break
    memory_kib = math.nan
    with contextlib.suppress(OSError, ValueError, IndexError):
        first = Path("/proc/meminfo").read_text().splitlines()[0]
        memory_kib = float(first.split()[1])
    versions: dict[str, str] = {}
    for package in ("starlette", "uvicorn", "httpx", "pydantic", "aws-lambda-powertools"):
        with contextlib.suppress(metadata.PackageNotFoundError):
            versions[package] = metadata.version(package)
    return {
        "cpu_count": os.cpu_count(),
        "usable_cpus": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "cpu_model": cpu_model,
        "memory": fmt_mib(memory_kib).replace("MiB", "MiB total"),
        "python": f"{platform.python_implementation()} {platform.python_version()}",
        "platform": platform.platform(),
        "libraries": versions,
    }


def machine_table(facts: dict[str, Any]) -> Table:
    libraries = ", ".join(f"{k} {v}" for k, v in facts["libraries"].items())
    rows = [
        ["CPU count", f"{facts['cpu_count']} (usable: {facts['usable_cpus']})"],
        ["CPU model", str(facts["cpu_model"])],
        ["Memory", str(facts["memory"])],
        ["Python", str(facts["python"])],
        ["Platform", str(facts["platform"])],
        ["Libraries", libraries],
    ]
    return Table("Machine", ["fact", "value"], rows)


# ------------------------------------------------------------------------------ stand-ins


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@contextlib.contextmanager
def s3_stand_in() -> Iterator[dict[str, str]]:
    """moto's S3 server on loopback with one bucket, in a process of its own (`bench.s3stand`);
    the env that points at it (its AWS_* credentials are also set in os.environ meanwhile, as
    tests/conftest.py does)."""
    process = subprocess.Popen(
        [sys.executable, "-m", "bench.s3stand", BUCKET],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        cwd=ROOT,
    )
    assert process.stdout is not None
    line = process.stdout.readline()
    process.stdout.close()
    try:
        if not line:
            raise RuntimeError(f"the S3 stand-in did not start (exit status {process.wait()})")
        env: dict[str, str] = json.loads(line)
        with aws_credentials(env):
            yield env
    finally:
        stop_stand_ins(process)


def access_stand_in(s3: dict[str, str]) -> dict[str, str]:
    """A fresh access table and secret on the S3 stand-in's moto server (which serves every
    AWS service), as the template's default mixed mode has them: the gateway reads and writes
    its shared run-time estimates there as on AWS (an unreachable table would send it to its
    memory after one timeout, and the bench would miss what the table costs). Each boot gets a
    table of its own, so each starts with no history, as the scenarios say. The env to add."""
    import uuid

    import boto3

    from imagegw.frontends.local import create_access_table

    endpoint, region = s3["S3_ENDPOINT_URL"], s3["AWS_REGION"]
    credentials = {
        "region_name": region,
        "endpoint_url": endpoint,
        "aws_access_key_id": s3["AWS_ACCESS_KEY_ID"],
        "aws_secret_access_key": s3["AWS_SECRET_ACCESS_KEY"],
    }
    name = f"bench-access-{uuid.uuid4().hex[:12]}"
    create_access_table(boto3.client("dynamodb", **credentials), name)
    value = json.dumps({"pepper": uuid.uuid4().hex, "tokens": {}})
    secret = boto3.client("secretsmanager", **credentials).create_secret(
        Name=name, SecretString=value
    )["ARN"]
    return {
        "ACCESS_TABLE": name,
        "ACCESS_SECRET": secret,
        "AWS_ENDPOINT_URL_DYNAMODB": endpoint,
        "AWS_ENDPOINT_URL_SECRETS_MANAGER": endpoint,
    }


def _one_colour_png(width: int, height: int, rgb: tuple[int, int, int]) -> bytes:
    return make_png(width, height)  # lru-cached: encoded once per size


@contextlib.contextmanager
def fake_modelscope(
    task_duration: Duration, pending_seconds: Duration = 0.1, backlog: int = 2048
) -> Iterator[tuple[FakeModelScope, str]]:
    """The fake ModelScope served on loopback in a thread; the fake and its API base URL.

    Its output images are all one colour meanwhile, so each size is encoded once: the fake
    otherwise encodes a fresh 1024x1024 PNG for every result (~15 ms of CPU each, several
    seconds for a burst of 100 on 2 cores), which competes with the gateway for the CPU.
    """
    fake = FakeModelScope(task_duration=task_duration, pending_seconds=pending_seconds)
    fake_module.make_png = _one_colour_png  # type: ignore[attr-defined, assignment]
    try:
        with ServerThread(fake, backlog=backlog) as server:
            yield fake, f"{server.url}/v1"
    finally:
        fake_module.make_png = make_png  # type: ignore[attr-defined]


#: the uneven mix (issue 25): one model whose tasks run 2-11 s once they begin; one task in
#: five first waits 15-30 s in the provider's queue (PENDING: 25-40 s in all), the others
#: 0.1-1 s. The queue is what is uneven, as real queues are: a run's length does not tell a
#: long task apart, its time queued does.
MIX_LONG_SHARE, MIX_RUN, MIX_SHORT_QUEUE = 0.2, (2.0, 11.0), (0.1, 1.0)
MIX_LONG_TOTAL, MIX_LONG_QUEUE = (25.0, 40.0), (15.0, 30.0)


@dataclass(frozen=True)
class MixTask:
    """One task of the uneven mix: seconds queued (PENDING), then running."""

    queued: float
    run: float

    @property
    def total(self) -> float:
        return self.queued + self.run


def uneven_mix(count: int, rng: random.Random) -> list[MixTask]:
    """`count` tasks of the uneven mix, drawn from `rng` (deterministic from its seed)."""
    tasks = []
    for _ in range(count):
        long = rng.random() < MIX_LONG_SHARE
        run = rng.uniform(*MIX_RUN)
        if long:  # queued 15-30 s, and 25-40 s in all
            low, high = MIX_LONG_TOTAL[0] - run, MIX_LONG_TOTAL[1] - run
            queued = rng.uniform(max(MIX_LONG_QUEUE[0], low), min(MIX_LONG_QUEUE[1], high))
        else:
            queued = rng.uniform(*MIX_SHORT_QUEUE)
        tasks.append(MixTask(queued, run))
    return tasks


def gateway_settings(s3_env: dict[str, str], base_url: str, **overrides: Any) -> Settings:
    """The defaults, wired to the stand-ins; keyword arguments override."""
    values: dict[str, Any] = {
        "bucket": s3_env["BUCKET"],
        "s3_endpoint_url": s3_env["S3_ENDPOINT_URL"],
        "modelscope_base_url": base_url,
    }
    values.update(overrides)
    return Settings(**values)


@contextlib.contextmanager
def quiet_gateway_logs() -> Iterator[None]:
    """Send the gateway's log lines (one a request) to /dev/null instead of our stdout; they
    are still formatted and written, so their cost stays in the figures."""
    from imagegw.infra.log import logger

    handler = logger.registered_handler
    if not isinstance(handler, logging.StreamHandler):
        yield
        return
    with open(os.devnull, "w") as sink:
        previous = handler.setStream(sink)
        try:
            yield
        finally:
            handler.setStream(previous or sys.stdout)


@contextlib.contextmanager
def gateway_in_process(settings: Settings) -> Iterator[str]:
    """The gateway app under uvicorn in a thread of this process; its base URL."""
    with quiet_gateway_logs(), ServerThread(create_app(settings), lifespan="on") as server:
        yield server.url


# ------------------------------------------------------------------------------ processes


def wait_until_ready(
    url: str,
    process: subprocess.Popen[bytes],
    timeout: float = 30.0,
    every: float = 0.005,
    path: str = "/healthz",
) -> float:
    """Poll GET {url}{path} until it answers 200; the perf_counter time it did."""
    deadline = time.monotonic() + timeout
    with httpx.Client(timeout=1.0) as client:
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"the server exited with {process.returncode} before ready")
            with contextlib.suppress(httpx.TransportError):
                if client.get(f"{url}{path}").status_code == 200:
                    return time.perf_counter()
            if time.monotonic() > deadline:
                raise TimeoutError(f"{url} was not ready within {timeout:g} s")
            time.sleep(every)


def stop_process(process: subprocess.Popen[bytes], grace: float = 5.0) -> None:
    """SIGTERM, then SIGKILL after `grace` seconds; always reaps the process."""
    if process.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        process.send_signal(signal.SIGTERM)
    try:
        process.wait(grace)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(grace)


def proc_status(pid: int) -> dict[str, float]:
    """The kB figures of /proc/<pid>/status (VmRSS, VmHWM, ...); empty if unavailable."""
    values: dict[str, float] = {}
    with contextlib.suppress(OSError):
        for raw in Path(f"/proc/{pid}/status").read_text().splitlines():
            key, _, rest = raw.partition(":")
            parts = rest.split()
            if len(parts) == 2 and parts[1] == "kB":
                values[key] = float(parts[0])
    return values


def _ticks(stat: str) -> int:
    """User + system CPU of a /proc `stat` line, in clock ticks."""
    fields = stat.rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])


def proc_cpu_seconds(pid: int) -> float:
    """CPU seconds used so far by the process, to the nanosecond.

    /proc/<pid>/stat counts in clock ticks (10 ms here: 7% of 100 streams' CPU, so a ratio of
    two such differences moved by 0.1-0.3 between runs), so the CPU is the sum of each live
    thread's `schedstat` (nanoseconds on a CPU), plus what threads that have ended used: the
    process's ticks beyond its live threads' ticks, counted only past their rounding (one tick
    a thread)."""
    tasks = Path(f"/proc/{pid}/task")
    try:
        total_ticks = _ticks(Path(f"/proc/{pid}/stat").read_text())
        live_ns = live_ticks = threads = 0
        for task in tasks.iterdir():
            with contextlib.suppress(OSError):  # a thread that ended while being read
                schedstat = (task / "schedstat").read_text()
                stat = (task / "stat").read_text()
                live_ns += int(schedstat.split()[0])
                live_ticks += _ticks(stat)
                threads += 1
    except OSError:
        return math.nan
    ended = total_ticks - live_ticks
    ended_seconds = ended / os.sysconf("SC_CLK_TCK") if ended > threads else 0.0
    return live_ns / 1e9 + ended_seconds


# ------------------------------------------------------------------------------ client


@dataclass
class StreamOutcome:
    """What one streamed chat completion looked like from the client (monotonic times)."""

    prompt: str
    started: float
    status: int = 0
    first_line: float | None = None
    content_at: float | None = None
    done_at: float | None = None
    links: list[str] = field(default_factory=list)
    error: str | None = None


def chat_body(prompt: str, *, stream: bool) -> dict[str, Any]:
    return {"model": MODEL, "messages": [{"role": "user", "content": prompt}], "stream": stream}


async def stream_chat(client: httpx.AsyncClient, url: str, prompt: str) -> StreamOutcome:
    """POST a streamed chat completion and time its SSE lines as they arrive."""
    outcome = StreamOutcome(prompt=prompt, started=time.monotonic())
    body = chat_body(prompt, stream=True)
    try:
        async with client.stream(
            "POST", f"{url}/v1/chat/completions", json=body, headers=AUTH
        ) as response:
            outcome.status = response.status_code
            if response.status_code != 200:
                text = (await response.aread()).decode(errors="replace")
                outcome.error = f"HTTP {response.status_code}: {text[:200]}"
                return outcome
            async for line in response.aiter_lines():
                now = time.monotonic()
                if outcome.first_line is None:
                    outcome.first_line = now
                if not line.startswith("data: "):
                    continue
                payload = line.removeprefix("data: ")
                if payload == "[DONE]":
                    outcome.done_at = now
                    break
                _read_chunk(outcome, json.loads(payload), now)
    except (httpx.HTTPError, ValueError) as exc:
        outcome.error = f"{type(exc).__name__}: {exc}"
    if outcome.error is None and (not outcome.links or outcome.done_at is None):
        outcome.error = "the stream ended without an image or without [DONE]"
    return outcome


def task_ids_by_prompt(fake: FakeModelScope) -> dict[str, str]:
    """The task id the fake gave each prompt (the benchmarks use a distinct prompt each)."""
    return {
        str(s["body"]["prompt"]): str(s["task_id"])
        for s in list(fake.submissions)
        if "task_id" in s and isinstance(s.get("body"), dict)
    }


def _read_chunk(outcome: StreamOutcome, chunk: dict[str, Any], now: float) -> None:
    if "error" in chunk:
        outcome.error = f"in-stream error: {json.dumps(chunk['error'])[:200]}"
        return
    for choice in chunk.get("choices") or []:
        content = (choice.get("delta") or {}).get("content")
        if content and outcome.content_at is None:
            outcome.content_at = now
            outcome.links = IMAGE_LINE.findall(content)


def timelines(
    fake: FakeModelScope, outcomes: Sequence[StreamOutcome]
) -> tuple[list[dict[str, Any]], list[str]]:
    """One row a good generation, its lag split in phases (fake's clock = ours), and errors.

    lag = content chunk received − task finished = poll detection (first SUCCEED poll −
    finished) + to download (the gateway's GET of the image at the fake − that poll; 0 when the
    image is not fetched) + download and copy (content chunk received − that GET).
    """
    rows: list[dict[str, Any]] = []
    errors: list[str] = []
    polls: dict[str, list[tuple[float, str]]] = {}
    for polled, at, status in list(fake.polls):
        polls.setdefault(polled, []).append((at, status))
    fetched: dict[str, float] = {}
    for request in list(fake.file_requests):
        fetched.setdefault(str(request["name"]).partition("-")[0], float(request["time"]))
    task_ids = task_ids_by_prompt(fake)
    for index, outcome in enumerate(outcomes):
        task_id = task_ids.get(outcome.prompt)
        if outcome.error is not None or outcome.content_at is None or task_id is None:
            errors.append(f"#{index}: {outcome.error or 'the fake has no task for it'}")
            continue
        task = fake.tasks[task_id]
        duration = task.finishes_at - task.created
        mine = polls.get(task_id, [])
        succeeded = min((at for at, status in mine if status == "SUCCEED"), default=math.nan)
        download = fetched.get(task_id, succeeded)
        rows.append(
            {
                "index": index,
                "task_id": task_id,
                "duration_s": duration,
                "lag_s": outcome.content_at - task.finishes_at,
                "poll_detection_s": succeeded - task.finishes_at,
                "to_download_s": download - succeeded,
                "download_and_copy_s": outcome.content_at - download,
                "polls": len(mine),
                "polls_per_s": len(mine) / duration if duration > 0 else math.nan,
            }
        )
    return rows, errors


#: the phases of the lag, as timelines() names them, and their column titles
LAG_PHASES = {
    "lag_s": "total lag",
    "poll_detection_s": "poll detection",
    "to_download_s": "SUCCEED poll → image GET",
    "download_and_copy_s": "image GET → client has it",
}


def lag_table(title: str, rows: Sequence[dict[str, Any]]) -> Table:
    """median / p90 / max / mean of each phase of the lag."""
    columns = [[float(r[key]) for r in rows] for key in LAG_PHASES]
    return Table(
        title,
        ["statistic", *LAG_PHASES.values()],
        [
            ["median", *(fmt_s(percentile(v, 50)) for v in columns)],
            ["p90", *(fmt_s(percentile(v, 90)) for v in columns)],
            ["max", *(fmt_s(percentile(v, 100)) for v in columns)],
            ["mean", *(fmt_s(mean(v)) for v in columns)],
        ],
    )


def phase_summary(rows: Sequence[dict[str, Any]]) -> dict[str, dict[str, float]]:
    """median / p90 / max / mean of each phase, for the JSON results."""
    summary: dict[str, dict[str, float]] = {}
    for key in LAG_PHASES:
        values = [float(r[key]) for r in rows]
        summary[key] = {
            "median": percentile(values, 50),
            "p90": percentile(values, 90),
            "max": percentile(values, 100),
            "mean": mean(values),
        }
    return summary
