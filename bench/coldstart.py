"""Cold start of the API app: fresh processes, timed from the outside.

- `python -c pass`: the interpreter alone (baseline).
- `import main`: what the Lambda Web Adapter start script makes uvicorn do
  (PYTHONPATH=layers/common:functions/api; importing functions/api/main.py builds the app),
  then exit. The child also prints the import's own time (perf_counter around it).
- `uvicorn main:app` until ready: functions/api/run.sh's command until GET /healthz answers
  200, which is what the Web Adapter waits for before the first invocation.

Wall time and peak RSS are those of the child alone (os.wait4's rusage, or /proc VmHWM for
the server). One untimed warm-up run of each goes first (so .pyc files exist, as in a
deployment, and the OS file cache is warm).
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.common import (
    ROOT,
    Report,
    Table,
    child_env,
    fmt_mib,
    fmt_ms,
    free_port,
    percentile,
    proc_status,
    stop_process,
    uvicorn_argv,
    wait_until_ready,
)

RUNS = 5
GNU_TIME = "/usr/bin/time"
CHILD_TIME_LIMIT = 30.0
IMPORT_MAIN = (
    "import json, time\n"
    "began = time.perf_counter()\n"
    "import main\n"
    "took = time.perf_counter() - began\n"
    "assert main.app is not None\n"
    "print(json.dumps({'import_s': took}))\n"
)


@dataclass
class Runs:
    """The measurements of one variant: seconds, peak RSS in KiB, import seconds."""

    wall: list[float] = field(default_factory=list)
    rss_kib: list[float] = field(default_factory=list)
    import_s: list[float] = field(default_factory=list)


def _run_child(argv: list[str]) -> tuple[float, float, str]:
    """Run a child to its end; (wall seconds, its own peak RSS in KiB, its stdout).

    The peak RSS comes from GNU time when there is one: a child forked straight from this
    (large) process reports at least this process's RSS at the fork as its own ru_maxrss.
    """
    gnu_time = Path(GNU_TIME).exists()
    with (
        tempfile.TemporaryFile() as out,
        tempfile.TemporaryFile() as err,
        tempfile.NamedTemporaryFile(suffix=".rss") as rss_file,
    ):
        command = [GNU_TIME, "-f", "%M", "-o", rss_file.name, *argv] if gnu_time else argv
        began = time.perf_counter()
        process = subprocess.Popen(
            command, cwd=ROOT, env=child_env(), stdin=subprocess.DEVNULL, stdout=out, stderr=err
        )
        watchdog = threading.Timer(CHILD_TIME_LIMIT, process.kill)
        watchdog.start()
        try:
            _, status, usage = os.wait4(process.pid, 0)
            wall = time.perf_counter() - began
            process.returncode = os.waitstatus_to_exitcode(status)
        finally:
            watchdog.cancel()
            if process.returncode is None:
                process.kill()
                process.wait()
        out.seek(0)
        err.seek(0)
        if process.returncode != 0:
            detail = err.read().decode(errors="replace")[-2000:]
            raise RuntimeError(f"{argv[1:]} exited with {process.returncode}:\n{detail}")
        rss = float(usage.ru_maxrss)
        if gnu_time:
            rss = float(Path(rss_file.name).read_text().split()[-1])
        return wall, rss, out.read().decode()


def _bare() -> Runs:
    runs = Runs()
    for attempt in range(RUNS + 1):
        wall, rss, _ = _run_child([sys.executable, "-c", "pass"])
        if attempt:
            runs.wall.append(wall)
            runs.rss_kib.append(rss)
    return runs


def _import_main() -> Runs:
    runs = Runs()
    for attempt in range(RUNS + 1):
        wall, rss, out = _run_child([sys.executable, "-c", IMPORT_MAIN])
        if attempt:
            runs.wall.append(wall)
            runs.rss_kib.append(rss)
            runs.import_s.append(float(json.loads(out.strip().splitlines()[-1])["import_s"]))
    return runs


def _uvicorn_ready() -> Runs:
    runs = Runs()
    for attempt in range(RUNS + 1):
        port = free_port()
        began = time.perf_counter()
        process = subprocess.Popen(
            uvicorn_argv(port),
            cwd=ROOT,
            env=child_env(),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            ready = wait_until_ready(f"http://127.0.0.1:{port}", process, timeout=CHILD_TIME_LIMIT)
            peak = proc_status(process.pid).get("VmHWM", math.nan)
        finally:
            stop_process(process)
        if attempt:
            runs.wall.append(ready - began)
            runs.rss_kib.append(peak)
    return runs


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
    bare = _bare()
    app = _import_main()
    served = _uvicorn_ready()

    headers = ["variant", "median", "min", "max"]
    wall = Table(
        f"Whole-process wall time ({RUNS} runs each)",
        headers,
        [
            _row("python -c pass (baseline)", bare.wall, fmt_ms),
            _row("import main (builds the app), exit", app.wall, fmt_ms),
            _row("uvicorn main:app until /healthz 200", served.wall, fmt_ms),
        ],
    )
    imports = Table(
        "Import of functions/api/main.py alone, timed inside the child",
        headers,
        [_row("import main", app.import_s, fmt_ms)],
    )
    memory = Table(
        "Peak RSS of the child",
        headers,
        [
            _row("python -c pass (baseline)", bare.rss_kib, fmt_mib),
            _row("import main (builds the app), exit", app.rss_kib, fmt_mib),
            _row("uvicorn main:app until /healthz 200", served.rss_kib, fmt_mib),
        ],
    )
    data: dict[str, Any] = {
        "runs": RUNS,
        "python": sys.executable,
        "bare": {"wall_s": _summary(bare.wall), "peak_rss_kib": _summary(bare.rss_kib)},
        "import_main": {
            "wall_s": _summary(app.wall),
            "import_s": _summary(app.import_s),
            "peak_rss_kib": _summary(app.rss_kib),
        },
        "uvicorn_ready": {
            "wall_s": _summary(served.wall),
            "peak_rss_kib": _summary(served.rss_kib),
        },
    }
    median_app = percentile(app.wall, 50)
    median_bare = percentile(bare.wall, 50)
    return Report(
        name="coldstart",
        title="cold start of the API app (fresh processes)",
        tables=[wall, imports, memory],
        notes=[
            "PYTHONPATH=layers/common:functions/api, as the Web Adapter start script sets it; "
            f"interpreter {sys.executable}; .pyc files and the OS file cache are warm "
            "(one untimed run of each variant first).",
            f"Peak RSS: GNU time's %M of the child ({GNU_TIME}; wall times include its ~1 ms "
            "fork + exec) for the import variants; /proc/<pid>/status VmHWM once ready for "
            "the uvicorn variant.",
            f"The app's share of the process time: {fmt_ms(median_app - median_bare)} "
            "(median import-main process − median bare interpreter).",
        ],
        data=data,
        summary=[
            (
                "Cold start: process importing + building the app (median)",
                f"{fmt_ms(median_app)} (bare python {fmt_ms(median_bare)})",
                "—",
            ),
            (
                "Cold start: import of main.py alone (median)",
                fmt_ms(percentile(app.import_s, 50)),
                "—",
            ),
            (
                "Cold start: uvicorn main:app until ready (median)",
                fmt_ms(percentile(served.wall, 50)),
                "—",
            ),
            (
                "Cold start: peak RSS, import + build / uvicorn ready (median)",
                f"{fmt_mib(percentile(app.rss_kib, 50))} / "
                f"{fmt_mib(percentile(served.rss_kib, 50))} "
                f"(bare python {fmt_mib(percentile(bare.rss_kib, 50))})",
                "—",
            ),
        ],
    )
