"""The benchmarks' CPU clock (`bench.common.proc_cpu_seconds`): it reads a server's CPU from
/proc to well under /proc's 10-ms tick, threads that have ended included, so a ratio of two
servers' CPU is not moved by the tick. Checked against the measured process's own CPU clock,
read while it waits, as a server between requests."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator

import pytest

from bench.common import proc_cpu_seconds

#: a process that, for each line it reads, uses that much CPU (in a thread that then ends, if
#: the line says so) and answers its own CPU clock
BURNER = """
import sys, threading, time
def burn(seconds):
    end = time.process_time() + seconds
    while time.process_time() < end:
        pass
for line in sys.stdin:
    seconds, how = line.split()
    if how == "thread":
        worker = threading.Thread(target=burn, args=(float(seconds),))
        worker.start()
        worker.join()
    else:
        burn(float(seconds))
    print(repr(time.process_time()), flush=True)
"""


@pytest.fixture
def burner() -> Iterator[subprocess.Popen[str]]:
    process = subprocess.Popen(
        [sys.executable, "-c", BURNER], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    yield process
    process.kill()
    process.wait()


def _use(process: subprocess.Popen[str], seconds: float, how: str) -> float:
    assert process.stdin is not None and process.stdout is not None
    process.stdin.write(f"{seconds} {how}\n")
    process.stdin.flush()
    return float(process.stdout.readline())


def test_it_reads_a_process_cpu_well_under_a_tick(burner: subprocess.Popen[str]) -> None:
    for seconds in (0.0, 0.013, 0.004):
        own = _use(burner, seconds, "here")
        # a reading in ticks is up to 10 ms short
        assert proc_cpu_seconds(burner.pid) == pytest.approx(own, abs=0.001)


def test_it_keeps_what_an_ended_thread_used(burner: subprocess.Popen[str]) -> None:
    own = _use(burner, 0.2, "thread")
    assert own >= 0.2
    # the ended thread's part is what /proc keeps of it, in ticks: within a tick or two
    assert proc_cpu_seconds(burner.pid) == pytest.approx(own, abs=0.025)
