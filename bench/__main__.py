"""`python -m bench [lag|coldstart|overhead|concurrency|memory ...]`: run the benchmarks (all of
them by default but `batches`, a quarter of an hour under moto, and `b64`: name them to run
them) one after another, print a Markdown table per benchmark, the machine facts and a final
summary for the README, and write bench/results/latest.json."""

from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench import (
    b64,
    batches,
    coldstart,
    concurrency,
    keys,
    lag,
    memory,
    overhead,
    polling,
    pool,
    versus,
)
from bench.common import ROOT, Report, machine_facts, machine_table, markdown_table

BENCHMARKS: dict[str, Callable[[], Report]] = {
    "lag": lag.run,
    "coldstart": coldstart.run,
    "overhead": overhead.run,
    "concurrency": concurrency.run,
    "polling": polling.run,
    "memory": memory.run,
    "keys": keys.run,
    "pool": pool.run,
    "versus": versus.run,
    "batches": batches.run,
    "b64": b64.run,
}
RESULTS = ROOT / "bench" / "results" / "latest.json"
#: run only when named (`python -m bench batches`): too long for every `make bench`
ON_REQUEST = frozenset({"batches", "b64"})


def _clean(value: Any) -> Any:
    """JSON-safe: NaN and infinities become null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_clean(v) for v in value]
    return value


def _write(path: Path, facts: dict[str, Any], reports: list[Report], when: str) -> None:
    """Write the results; benchmarks not run this time keep their previous entries."""
    previous: dict[str, Any] = {}
    if path.exists():
        try:
            previous = json.loads(path.read_text()).get("benchmarks", {})
        except (ValueError, AttributeError):
            previous = {}
    benchmarks = {
        **previous,
        **{
            r.name: {
                "title": r.title,
                "when": when,
                "summary": [{"figure": f, "value": v, "target": t} for f, v, t in r.summary],
                "notes": r.notes,
                "data": r.data,
            }
            for r in reports
        },
    }
    document = {
        "generated_at": when,
        "command": "make bench",
        "machine": facts,
        "benchmarks": {name: benchmarks[name] for name in BENCHMARKS if name in benchmarks},
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(_clean(document), indent=2, ensure_ascii=False) + "\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument(
        "names", nargs="*", metavar="NAME", help=f"benchmarks to run: {', '.join(BENCHMARKS)}"
    )
    parser.add_argument("--json", type=Path, default=RESULTS, help="where to write the results")
    args = parser.parse_args(argv)
    unknown = [n for n in args.names if n not in BENCHMARKS]
    if unknown:
        parser.error(f"unknown benchmark(s) {', '.join(unknown)}; choose from {list(BENCHMARKS)}")
    names: list[str] = args.names or [name for name in BENCHMARKS if name not in ON_REQUEST]

    when = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
    facts = machine_facts()
    print(f"# Benchmarks ({when})\n", flush=True)
    print(machine_table(facts).markdown() + "\n", flush=True)

    reports: list[Report] = []
    failed: list[str] = []
    for name in names:
        print(f"running {name} ...", file=sys.stderr, flush=True)
        began = time.monotonic()
        try:
            report = BENCHMARKS[name]()
        except Exception:
            failed.append(name)
            print(f"## {name}: FAILED\n\n```\n{traceback.format_exc()}```\n", flush=True)
            continue
        took = time.monotonic() - began
        print(f"{name} took {took:.1f} s", file=sys.stderr, flush=True)
        report.data["bench_seconds"] = took
        reports.append(report)
        print(report.markdown() + "\n", flush=True)

    rows = [list(row) for report in reports for row in report.summary]
    cpus = f"{facts['cpu_count']} CPUs"
    print(f"## Summary (paste into README → Benchmarks; {cpus}, {facts['python']})\n")
    print(markdown_table(["figure", "value", "target"], rows) + "\n")
    _write(args.json, facts, reports, when)
    print(f"results written to {args.json}", file=sys.stderr)
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
