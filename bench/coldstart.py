"""Cold start of the deployed artifact, booted as Lambda boots it (bench/artifact.py).

Fresh processes, timed from the outside, interleaved round by round (one untimed round first,
so the OS file cache is warm, as on a Lambda host that has the layer):

- `python -c pass` under the runtime's interpreter: the interpreter alone (reference);
- the Starlette hello-world app under run.sh's uvicorn command line, exec → GET /healthz 200
  (reference: what any ASGI app on this stack pays);
- the artifact: `ApiFunction/run.sh` exec → GET /healthz 200 (what the Web Adapter waits for
  before it forwards the first invocation), then at once a streamed chat completion against
  the fake ModelScope (tasks done at once) until `data: [DONE]`, then one more on the warm
  process. Two variants, each booted afresh: A with IMAGE_LINKS=provider and polls after 10 ms
  (the gateway's own work; the bucket is not needed), B with the template's settings
  (IMAGE_LINKS=stored: the image is copied into the bucket, so the S3 client is needed; the
  first poll after 0.75 s).

CPU is the child's user + system time (/proc/<pid>/stat at readiness and after the first
generation; rusage for `python -c pass`). One more boot of the artifact with
PYTHONPROFILEIMPORTTIME=1 (untimed) tells what is imported before readiness and what the first
generation imports.
"""

from __future__ import annotations

import math
import os
import subprocess
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from bench.artifact import Booted, Lambda, artifact, hello, lambda_runtime_here
from bench.common import (
    AUTH,
    IMAGE_LINE,
    Report,
    Table,
    chat_body,
    fake_modelscope,
    fmt_mib,
    fmt_ms,
    free_port,
    percentile,
    proc_cpu_seconds,
    proc_status,
    s3_stand_in,
    stop_process,
    wait_until_ready,
)
from imagegw.infra.config import Settings

RUNS = 7
#: the first poll after this long in variant A: the figure is the gateway's own work
POLL_INTERVAL = "0.01"
#: modules whose import before readiness would be a cold-start cost no first request needs
HEAVY = ("boto3", "botocore.session", "botocore.client", "s3transfer", "aws_xray_sdk")


@dataclass
class Runs:
    """Seconds (wall and CPU) and KiB of each run of one variant."""

    wall: list[float] = field(default_factory=list)
    cpu: list[float] = field(default_factory=list)
    first: list[float] = field(default_factory=list)
    first_cpu: list[float] = field(default_factory=list)
    warm: list[float] = field(default_factory=list)
    rss_kib: list[float] = field(default_factory=list)


def _bare(runtime: Lambda, runs: Runs | None) -> None:
    began = time.perf_counter()
    process = subprocess.Popen([str(runtime.python), "-c", "pass"], env={"PATH": "/usr/bin"})
    _, status, usage = os.wait4(process.pid, 0)
    wall = time.perf_counter() - began
    process.returncode = os.waitstatus_to_exitcode(status)
    if process.returncode != 0:
        raise RuntimeError(f"python -c pass exited with {process.returncode}")
    if runs is not None:
        runs.wall.append(wall)
        runs.cpu.append(usage.ru_utime + usage.ru_stime)


def _ready(booted: Booted, runs: Runs | None) -> None:
    cpu = proc_cpu_seconds(booted.process.pid)
    if runs is not None:
        runs.wall.append(booted.ready - booted.began)
        runs.cpu.append(cpu)


def _generate(url: str, prompt: str) -> float:
    """One streamed chat completion; the perf_counter time of its `data: [DONE]`."""
    body = chat_body(prompt, stream=True)
    with httpx.stream(
        "POST", f"{url}/v1/chat/completions", json=body, headers=AUTH, timeout=30.0
    ) as response:
        text = "".join(response.iter_text())
        done = time.perf_counter()
    if response.status_code != 200 or "data: [DONE]" not in text or not IMAGE_LINE.search(text):
        raise RuntimeError(f"the generation failed: HTTP {response.status_code}: {text[-500:]}")
    return done


def _hello(runtime: Lambda, runs: Runs | None) -> None:
    with hello(runtime) as booted:
        _ready(booted, runs)
        if runs is not None:
            runs.rss_kib.append(proc_status(booted.process.pid).get("VmHWM", math.nan))


def _artifact(runtime: Lambda, env: dict[str, str], runs: Runs | None, index: int) -> None:
    with artifact(runtime, env) as booted:
        _ready(booted, runs)
        first = _generate(booted.url, f"bench coldstart #{index}")
        first_cpu = proc_cpu_seconds(booted.process.pid)
        again = time.perf_counter()
        warm = _generate(booted.url, f"bench coldstart #{index} again") - again
        if runs is not None:
            runs.first.append(first - booted.began)
            runs.first_cpu.append(first_cpu)
            runs.warm.append(warm)
            runs.rss_kib.append(proc_status(booted.process.pid).get("VmHWM", math.nan))


def _imports(lines: list[str]) -> list[str]:
    """Module names of PYTHONPROFILEIMPORTTIME lines."""
    return [
        line.rsplit("|", 1)[1].strip()
        for line in lines
        if line.startswith("import time:") and "[us]" not in line
    ]


def _import_profile(runtime: Lambda, env: dict[str, str]) -> dict[str, Any]:
    """What the artifact imports before readiness, and what its first generation imports."""
    port = free_port()
    full_env = {**runtime.artifact_env(port, env), "PYTHONPROFILEIMPORTTIME": "1"}
    with tempfile.NamedTemporaryFile() as errors:
        process = subprocess.Popen(
            runtime.artifact_argv(),
            cwd=runtime.build / "ApiFunction",
            env=full_env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=errors,
        )
        try:
            url = f"http://127.0.0.1:{port}"
            wait_until_ready(url, process)
            before = _imports(Path(errors.name).read_text().splitlines())
            _generate(url, "bench coldstart imports")
            after = _imports(Path(errors.name).read_text().splitlines())
        finally:
            stop_process(process)
    later = after[len(before) :]
    return {
        "before_ready": len(before),
        "heavy_before_ready": sorted(set(before) & set(HEAVY)),
        "first_generation": len(later),
        "first_generation_top": sorted({m.split(".")[0] for m in later}),
    }


def _row(name: str, values: list[float], show: Callable[[float], str]) -> list[str]:
    return [
        name,
        show(percentile(values, 50)),
        show(percentile(values, 0)),
        show(percentile(values, 100)),
    ]


def _summary(values: list[float]) -> dict[str, float]:
    return {
        "median": percentile(values, 50),
        "min": percentile(values, 0),
        "max": percentile(values, 100),
    }


def run() -> Report:
    bare, ref, direct, stored = Runs(), Runs(), Runs(), Runs()
    with (
        lambda_runtime_here() as runtime,
        s3_stand_in() as s3,
        fake_modelscope(task_duration=0.0, pending_seconds=0.0) as (_, base),
    ):
        env = {**s3, "MODELSCOPE_BASE_URL": base}
        direct_env = {**env, "IMAGE_LINKS": "provider", "POLL_INTERVAL": POLL_INTERVAL}
        for index in range(RUNS + 1):
            timed = index > 0  # round 0 warms the OS file cache
            _bare(runtime, bare if timed else None)
            _hello(runtime, ref if timed else None)
            _artifact(runtime, direct_env, direct if timed else None, index)
            _artifact(runtime, env, stored if timed else None, index)
        imports = _import_profile(runtime, env)
        build = runtime.build

    poll_interval = Settings().poll_interval
    ready = direct.wall + stored.wall
    boot = percentile(ready, 50)
    hello_boot = percentile(ref.wall, 50)
    bare_boot = percentile(bare.wall, 50)
    first = percentile(direct.first, 50)
    stored_first = [f - r for f, r in zip(stored.first, stored.wall, strict=True)]
    penalty = [f - w for f, w in zip(stored_first, stored.warm, strict=True)]
    headers = ["variant", "median", "min", "max"]
    wall = Table(
        f"Wall time ({RUNS} runs each, interleaved)",
        headers,
        [
            _row("python -c pass (reference)", bare.wall, fmt_ms),
            _row("hello-world app: exec → /healthz 200 (reference)", ref.wall, fmt_ms),
            _row("artifact: exec → /healthz 200 (both variants)", ready, fmt_ms),
            _row("A: exec → first generation answered", direct.first, fmt_ms),
            _row("A: a second generation (warm), alone", direct.warm, fmt_ms),
            _row("B: ready → first generation answered", stored_first, fmt_ms),
            _row("B: a second generation (warm), alone", stored.warm, fmt_ms),
            _row("B: the first − the second (what the cold start adds)", penalty, fmt_ms),
        ],
    )
    cpu = Table(
        "CPU time of the child (user + system)",
        headers,
        [
            _row("python -c pass (reference)", bare.cpu, fmt_ms),
            _row("hello-world app: → ready (reference)", ref.cpu, fmt_ms),
            _row("artifact: → ready (both variants)", direct.cpu + stored.cpu, fmt_ms),
            _row("A: → first generation answered", direct.first_cpu, fmt_ms),
            _row("B: → first generation answered", stored.first_cpu, fmt_ms),
        ],
    )
    memory = Table(
        "Peak RSS of the child",
        headers,
        [
            _row("hello-world app (reference)", ref.rss_kib, fmt_mib),
            _row("A: after two generations", direct.rss_kib, fmt_mib),
            _row("B: after two generations", stored.rss_kib, fmt_mib),
        ],
    )
    heavy = ", ".join(imports["heavy_before_ready"]) or "none"
    data: dict[str, Any] = {
        "runs": RUNS,
        "build": str(build),
        "bare": {"wall_s": _summary(bare.wall), "cpu_s": _summary(bare.cpu)},
        "hello": {"wall_s": _summary(ref.wall), "cpu_s": _summary(ref.cpu)},
        "ready_s": _summary(ready),
        "ready_cpu_s": _summary(direct.cpu + stored.cpu),
        "provider_links_fast_polls": {
            "first_generation_s": _summary(direct.first),
            "first_generation_cpu_s": _summary(direct.first_cpu),
            "warm_generation_s": _summary(direct.warm),
            "peak_rss_kib": _summary(direct.rss_kib),
        },
        "stored_links_default_polls": {
            "ready_to_first_generation_s": _summary(stored_first),
            "first_generation_cpu_s": _summary(stored.first_cpu),
            "warm_generation_s": _summary(stored.warm),
            "first_minus_warm_s": _summary(penalty),
            "peak_rss_kib": _summary(stored.rss_kib),
        },
        "imports": imports,
    }
    return Report(
        name="coldstart",
        title="cold start of the deployed artifact, booted as Lambda boots it",
        tables=[wall, cpu, memory],
        notes=[
            f"Artifact: {build} (ApiFunction/run.sh; the layer's python/ on PYTHONPATH, BUCKET "
            "set, PYTHONDONTWRITEBYTECODE=1, the runtime's boto3 with its bytecode); the fake "
            "ModelScope (tasks done at once) and the S3 stand-in (moto) run in the bench process.",
            f"A: IMAGE_LINKS=provider, POLL_INTERVAL={POLL_INTERVAL} s: the gateway's own work "
            "from exec to an answered generation, the bucket not needed (like the seed, which "
            "answers the provider's link).",
            f"B: the template's settings (IMAGE_LINKS=stored, first poll after {poll_interval:g} "
            "s): the image is downloaded and copied into the bucket; the S3 client (boto3) is "
            "built in the background while the provider works, so the first generation should "
            "take no longer than the second.",
            f"Imports before readiness: {imports['before_ready']} modules; of {', '.join(HEAVY)}: "
            f"{heavy}. The first generation (B) imports {imports['first_generation']} more, "
            f"from: {', '.join(imports['first_generation_top'])}.",
            "The hello-world app and bare python are floors (what importing Starlette and "
            "uvicorn, and starting Python, cost), not the yardstick: the boot's ratio to the "
            "seed-shaped reference, measured in the same run, is `python -m bench versus`'s.",
        ],
        data=data,
        summary=[
            (
                "Cold start: exec → /healthz 200 (median)",
                f"{fmt_ms(boot)} (floors: hello-world {fmt_ms(hello_boot)}, bare python "
                f"{fmt_ms(bare_boot)})",
                "ratio: bench versus",
            ),
            (
                "Cold start: exec → first generation answered, instant provider (median)",
                fmt_ms(first),
                "—",
            ),
            (
                "Cold start: first stored generation − second, default polling (median)",
                fmt_ms(percentile(penalty, 50)),
                "≈ 0",
            ),
            (
                "Cold start: CPU to ready (median)",
                f"{fmt_ms(percentile(direct.cpu + stored.cpu, 50))} (hello-world "
                f"{fmt_ms(percentile(ref.cpu, 50))})",
                "—",
            ),
            ("Cold start: boto3 & co. imported before readiness", heavy, "none"),
        ],
    )
