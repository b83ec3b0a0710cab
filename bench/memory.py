"""Memory of the gateway, the cold start at the template's FunctionMemory, and what it costs.

1. Peak RSS (/proc/<pid>/status VmHWM) of `make run`'s gateway process
   (`python -m imagegw.frontends.local`; its AWS stand-ins run in their own process) against the
   fake ModelScope: idle; after one edit whose body is as large as Lambda takes (a 6 MB request:
   a photo as a data URI in a chat completion); after one 10 MB edit (a 10 MB photo sent to
   /v1/images/edits, MAX_BODY_BYTES raised for it: Lambda would refuse it); after ten of those at
   once. Each edit's photo is uploaded to the bucket, fetched by the fake from its presigned URL,
   and the result copied into the bucket.
2. The artifact's cold start at FunctionMemory: on-demand Lambda runs the init phase (until the
   readiness check passes) on a full vCPU and invocations on FunctionMemory / 1,769 MB of one.
   So the artifact is booted as Lambda boots it (bench/artifact.py) at full speed, then moved
   into a cgroup whose CPU quota is that share, and its first generations are timed. Skipped
   where no cgroup can be made (it needs root).
3. The Lambda cost of 1,000 generations of 30 s at FunctionMemory: the function is billed for
   the time it streams (GB-seconds) plus requests; list prices of us-east-1.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import math
import os
import struct
import subprocess
import sys
import tempfile
import time
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx

import lambda_runtime
from bench.artifact import artifact, lambda_runtime_here
from bench.coldstart import _generate
from bench.common import (
    AUTH,
    ROOT,
    Report,
    Table,
    chat_body,
    fake_modelscope,
    fmt_mib,
    fmt_ms,
    free_port,
    percentile,
    proc_status,
    s3_stand_in,
    stop_process,
    wait_until_ready,
)

EDIT_MODEL = "Qwen/Qwen-Image-Edit"
BIG_PHOTO_BYTES = 10_000_000
AT_ONCE = 10
#: what Lambda takes in one request (Function URL and API Gateway: 6 MB)
LAMBDA_BODY_BYTES = 6 * 1024 * 1024
#: Lambda gives one vCPU at this much memory, and CPU in proportion below it
MB_PER_VCPU = 1769
RUNS = 5
#: us-east-1 list prices: per GB-second (arm64, x86_64) and per request
PRICE_GB_S = {"arm64": 0.0000133334, "x86_64": 0.0000166667}
PRICE_REQUEST = 0.20 / 1_000_000
GENERATIONS = 1000
GENERATION_SECONDS = 30.0
CGROUP_ROOTS = (Path("/sys/fs/cgroup/cpu"), Path("/sys/fs/cgroup"))


def _png_of(size: int) -> bytes:
    """A valid PNG of about `size` bytes that does not compress: a 64x64 picture and a
    private ancillary chunk of random bytes (decoders skip it)."""
    signature = b"\x89PNG\r\n\x1a\n"

    def chunk(kind: bytes, payload: bytes) -> bytes:
        crc = zlib.crc32(kind + payload) & 0xFFFFFFFF
        return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", crc)

    ihdr = chunk(b"IHDR", struct.pack(">IIBBBBB", 64, 64, 8, 2, 0, 0, 0))
    idat = chunk(b"IDAT", zlib.compress((b"\x00" + b"\x80" * 192) * 64))
    fixed = len(signature) + len(ihdr) + len(idat) + 12 + 12
    return signature + ihdr + chunk(b"biGg", os.urandom(size - fixed)) + idat + chunk(b"IEND", b"")


@contextlib.contextmanager
def _make_run(base_url: str) -> Iterator[tuple[subprocess.Popen[bytes], str]]:
    """`make run`'s server (python -m imagegw.frontends.local) pointed at the fake: the process
    and its URL."""
    port = free_port()
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "BUCKET", "JOB_"))},
        "PYTHONPATH": str(ROOT / "layers" / "common"),
        "HOST": "127.0.0.1",
        "PORT": str(port),
        "MODELSCOPE_BASE_URL": base_url,
        "MAX_BODY_BYTES": str(BIG_PHOTO_BYTES + 1024 * 1024),
        "POWERTOOLS_LOG_LEVEL": "WARNING",
        # what make run keeps across restarts: not the repository's own folder
        "LOCAL_STATE_DIR": tempfile.mkdtemp(prefix="bench-local-state-"),
    }
    with tempfile.TemporaryFile() as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "imagegw.frontends.local"],
            cwd=ROOT,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=log,
            start_new_session=True,
        )
        try:
            url = f"http://127.0.0.1:{port}"
            wait_until_ready(url, process)
            yield process, url
        finally:
            stop_process(process)


def _chat_edit(client: httpx.Client, url: str, photo: bytes) -> None:
    uri = "data:image/png;base64," + base64.b64encode(photo).decode()
    body = chat_body("restore this photo", stream=False)
    body["model"] = EDIT_MODEL
    body["messages"][0]["content"] = [
        {"type": "text", "text": "restore this photo"},
        {"type": "image_url", "image_url": {"url": uri}},
    ]
    answer = client.post(f"{url}/v1/chat/completions", json=body, headers=AUTH)
    if answer.status_code != 200:
        raise RuntimeError(f"the chat edit failed: {answer.status_code} {answer.text[:300]}")


async def _edits(url: str, photo: bytes, count: int) -> None:
    async with httpx.AsyncClient(timeout=120.0) as client:

        async def one(index: int) -> None:
            answer = await client.post(
                f"{url}/v1/images/edits",
                headers=AUTH,
                data={"model": EDIT_MODEL, "prompt": f"restore #{index}"},
                files={"image": ("photo.png", photo, "image/png")},
            )
            if answer.status_code != 200:
                raise RuntimeError(f"the edit failed: {answer.status_code} {answer.text[:300]}")

        await asyncio.gather(*(one(i) for i in range(count)))


def _peaks() -> dict[str, float]:
    """VmRSS idle, and VmHWM after each step, of the gateway process (KiB)."""
    photo = _png_of(BIG_PHOTO_BYTES)
    # the largest photo whose data URI still fits a 6 MB chat request
    lambda_photo = _png_of((LAMBDA_BODY_BYTES - 4096) * 3 // 4)
    with (
        fake_modelscope(task_duration=1.0) as (_, base),
        _make_run(base) as (process, url),
    ):
        peaks = {"idle": proc_status(process.pid).get("VmRSS", math.nan)}
        with httpx.Client(timeout=120.0) as client:
            _chat_edit(client, url, lambda_photo)
        peaks["one_lambda_sized_chat_edit"] = proc_status(process.pid).get("VmHWM", math.nan)
        asyncio.run(_edits(url, photo, 1))
        peaks["one_10mb_edit"] = proc_status(process.pid).get("VmHWM", math.nan)
        asyncio.run(_edits(url, photo, AT_ONCE))
        peaks["ten_10mb_edits"] = proc_status(process.pid).get("VmHWM", math.nan)
    return peaks


class CpuShare:
    """A cgroup (v1 `cpu` or v2) whose CPU quota is `share` of one CPU; None if not allowed."""

    def __init__(self, path: Path, v2: bool) -> None:
        self.path = path
        self.v2 = v2

    @classmethod
    def make(cls, share: float) -> CpuShare | None:
        period = 100_000
        quota = max(1000, int(period * share))
        for root in CGROUP_ROOTS:
            v2 = (root / "cgroup.controllers").exists()
            if not v2 and not (root / "cpu.cfs_quota_us").exists():
                continue
            path = root / f"imagegw-bench-{os.getpid()}"
            try:
                path.mkdir()
                if v2:
                    (path / "cpu.max").write_text(f"{quota} {period}")
                else:
                    (path / "cpu.cfs_period_us").write_text(str(period))
                    (path / "cpu.cfs_quota_us").write_text(str(quota))
            except OSError:
                with contextlib.suppress(OSError):
                    path.rmdir()
                continue
            return cls(path, v2)
        return None

    def enter(self, pid: int) -> None:
        """Move a process (all its threads) into this cgroup."""
        (self.path / "cgroup.procs").write_text(str(pid))

    def remove(self) -> None:
        for _ in range(50):
            try:
                self.path.rmdir()
                return
            except OSError:
                time.sleep(0.1)


def _cold_start(memory_mb: int) -> dict[str, Any] | None:
    """Boot the artifact at full speed (Lambda's init phase has a full vCPU on demand), then,
    once ready, give it `memory_mb`'s share of a CPU (invocations have that) and time the first
    generation: A with provider links and polls after 10 ms, B with the template's settings
    (stored links, first poll after 0.75 s; the S3 client is built meanwhile), and B's second."""
    share = CpuShare.make(memory_mb / MB_PER_VCPU)
    if share is None:
        return None
    ready: list[float] = []
    direct: list[float] = []
    stored: list[float] = []
    stored_warm: list[float] = []
    try:
        with (
            lambda_runtime_here() as runtime,
            s3_stand_in() as s3,
            fake_modelscope(task_duration=0.0, pending_seconds=0.0) as (_, base),
        ):
            env = {**s3, "MODELSCOPE_BASE_URL": base}
            fast = {**env, "IMAGE_LINKS": "provider", "POLL_INTERVAL": "0.01"}
            for index in range(RUNS + 1):
                with artifact(runtime, fast) as booted:
                    share.enter(booted.process.pid)
                    done = _generate(booted.url, f"bench memory #{index}")
                    if index:
                        ready.append(booted.ready - booted.began)
                        direct.append(done - booted.ready)
                with artifact(runtime, env) as booted:
                    share.enter(booted.process.pid)
                    done = _generate(booted.url, f"bench memory #{index} stored")
                    again = time.perf_counter()
                    second = _generate(booted.url, f"bench memory #{index} again") - again
                    if index:
                        ready.append(booted.ready - booted.began)
                        stored.append(done - booted.ready)
                        stored_warm.append(second)
    finally:
        share.remove()
    return {
        "cpu_share": memory_mb / MB_PER_VCPU,
        "ready_s": percentile(ready, 50),
        "first_generation_s": percentile(direct, 50),
        "first_stored_generation_s": percentile(stored, 50),
        "second_stored_generation_s": percentile(stored_warm, 50),
    }


def _cost(memory_mb: int, architecture: str) -> float:
    gb_seconds = memory_mb / 1024 * GENERATION_SECONDS * GENERATIONS
    return gb_seconds * PRICE_GB_S[architecture] + GENERATIONS * PRICE_REQUEST


def run() -> Report:
    with lambda_runtime_here() as runtime:
        memory_mb = lambda_runtime.memory_default(runtime.build)
    peaks = _peaks()
    cold = _cold_start(memory_mb)
    rows = [
        ["idle (RSS)", fmt_mib(peaks["idle"])],
        ["after one chat edit of the largest body Lambda takes (6 MB)", ""],
        ["after one 10 MB edit (MAX_BODY_BYTES raised; Lambda refuses it)", ""],
        [f"after {AT_ONCE} 10 MB edits at once", ""],
    ]
    rows[1][1] = fmt_mib(peaks["one_lambda_sized_chat_edit"])
    rows[2][1] = fmt_mib(peaks["one_10mb_edit"])
    rows[3][1] = fmt_mib(peaks["ten_10mb_edits"])
    tables = [Table("Peak RSS (VmHWM) of `make run`'s gateway process", ["when", "peak"], rows)]
    notes = [
        "The gateway process alone: moto and the job handlers run in the stand-ins' process. "
        "On Lambda an instance serves one request at a time, so the largest single request "
        "sets the memory it needs; the Web Adapter and the runtime take some more.",
    ]
    summary = [
        (
            f"Peak RSS: one 6 MB edit / one 10 MB edit / {AT_ONCE} at once (make run)",
            f"{fmt_mib(peaks['one_lambda_sized_chat_edit'])} / {fmt_mib(peaks['one_10mb_edit'])}"
            f" / {fmt_mib(peaks['ten_10mb_edits'])}",
            f"≤ FunctionMemory {memory_mb} MB",
        )
    ]
    if cold is None:
        notes.append("Cold start at FunctionMemory's CPU share: skipped (no cgroup could be made).")
    else:
        tables.append(
            Table(
                f"Cold start at FunctionMemory {memory_mb} MB: boot at full speed, then "
                f"{cold['cpu_share']:.2f} of a CPU (median of {RUNS})",
                ["figure", "value"],
                [
                    ["exec → /healthz 200 (init)", fmt_ms(cold["ready_s"])],
                    [
                        "ready → first generation answered (provider links, instant fake)",
                        fmt_ms(cold["first_generation_s"]),
                    ],
                    [
                        "ready → first generation answered (stored links, default polling)",
                        fmt_ms(cold["first_stored_generation_s"]),
                    ],
                    [
                        "the second generation (stored links, default polling)",
                        fmt_ms(cold["second_stored_generation_s"]),
                    ],
                ],
            )
        )
        summary.append(
            (
                f"Cold start at {memory_mb} MB: ready / + first generation (provider links; "
                "stored links with default polling, its second)",
                f"{fmt_ms(cold['ready_s'])} / + {fmt_ms(cold['first_generation_s'])} "
                f"({fmt_ms(cold['first_stored_generation_s'])}, "
                f"{fmt_ms(cold['second_stored_generation_s'])})",
                "—",
            )
        )
        notes.append(
            "Cold start: on-demand Lambda runs the init phase (here: until /healthz answers) on "
            "a full vCPU, and invocations on FunctionMemory / 1,769 MB of one; so the artifact "
            "boots at full speed and is then moved into a cgroup with that CPU quota."
        )
    costs = {arch: _cost(memory_mb, arch) for arch in PRICE_GB_S}
    tables.append(
        Table(
            f"Lambda cost of {GENERATIONS:,} generations of {GENERATION_SECONDS:g} s at "
            f"{memory_mb} MB (us-east-1 list prices)",
            ["architecture", "cost"],
            [[arch, f"${cost:.3f}"] for arch, cost in costs.items()],
        )
    )
    summary.append(
        (
            f"Lambda cost per {GENERATIONS:,} generations of {GENERATION_SECONDS:g} s at "
            f"{memory_mb} MB",
            f"${costs['arm64']:.3f} (arm64), ${costs['x86_64']:.3f} (x86_64)",
            "—",
        )
    )
    return Report(
        name="memory",
        title="memory, cold start at FunctionMemory, cost",
        tables=tables,
        notes=notes,
        data={"function_memory_mb": memory_mb, "peaks_kib": peaks, "cold": cold, "cost": costs},
        summary=summary,
    )
