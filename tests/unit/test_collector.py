"""The API function's process collects reference cycles at a server's pace
(`imagegw.infra.collector`): its youngest generation less often than the interpreter's
default, the older ones as usual."""

from __future__ import annotations

import gc
import os
import subprocess
import sys
from pathlib import Path

from imagegw.infra.collector import YOUNG_THRESHOLD, loading, pace_for_server

ROOT = Path(__file__).resolve().parents[2]


def test_the_api_functions_process_collects_its_youngest_generation_at_a_servers_pace() -> None:
    # Given the API function's entry point imported as uvicorn imports it
    env = {**os.environ, "PYTHONPATH": str(ROOT / "layers" / "common")}
    shown = subprocess.run(
        [sys.executable, "-c", "import gc, main; print(*gc.get_threshold())"],
        cwd=ROOT / "functions" / "api",
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout.split()
    # Then its youngest generation is collected every YOUNG_THRESHOLD allocations, the
    # older generations at the interpreter's default pace
    default = subprocess.run(
        [sys.executable, "-c", "import gc; print(*gc.get_threshold())"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout.split()
    assert int(default[0]) < YOUNG_THRESHOLD
    assert [int(v) for v in shown] == [YOUNG_THRESHOLD, *(int(v) for v in default[1:])]


def test_a_collector_switched_off_or_slower_already_is_left_as_it_is() -> None:
    before = gc.get_threshold()
    try:
        gc.set_threshold(0)
        pace_for_server()
        assert gc.get_threshold()[0] == 0
        gc.set_threshold(50_000, 7, 9)
        pace_for_server()
        assert gc.get_threshold() == (50_000, 7, 9)
    finally:
        gc.set_threshold(*before)


def test_what_loading_made_is_frozen_and_the_collector_is_on_again_as_it_was() -> None:
    before = gc.get_freeze_count()
    was_on = gc.isenabled()
    try:
        # When something is made while loading
        with loading():
            assert not gc.isenabled()  # (no collection walks what the import makes)
            made = [[index] for index in range(1000)]
        # Then it is out of later collections, and the collector is on again
        assert gc.get_freeze_count() >= before + len(made)
        assert gc.isenabled()
        # And a collector switched off before stays off
        gc.disable()
        with loading():
            pass
        assert not gc.isenabled()
    finally:
        gc.unfreeze()
        if was_on:
            gc.enable()
