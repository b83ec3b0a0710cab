"""The API function's process collects reference cycles at a server's pace
(`imagegw.infra.collector`): its youngest generation less often than the interpreter's
default, the older ones as usual; its start script (functions/api/serve.py) serves the app with
the collector off until the app is made, as uvicorn's command line would serve it."""

from __future__ import annotations

import gc
import json
import os
import subprocess
import sys
from pathlib import Path

from imagegw.infra.collector import YOUNG_THRESHOLD, Requests, loading, pace_for_server

ROOT = Path(__file__).resolve().parents[2]


def in_api_function(code: str, **env: str) -> str:
    """What `code` prints, run by a fresh interpreter in the API function's folder with the
    layer's package on the path (as uvicorn runs `main`), and `env` added to its environment."""
    env = {**os.environ, "PYTHONPATH": str(ROOT / "layers" / "common"), **env}
    return subprocess.run(
        [sys.executable, "-c", code],
        cwd=ROOT / "functions" / "api",
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout


def test_the_api_functions_process_collects_its_youngest_generation_at_a_servers_pace() -> None:
    # Given the API function's entry point imported as uvicorn imports it
    shown = in_api_function("import gc, main; print(*gc.get_threshold())").split()
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


def test_what_loading_made_is_frozen_and_the_collector_is_on_after_it() -> None:
    before = gc.get_freeze_count()
    was_on = gc.isenabled()
    try:
        # Given the collector off, as the API function's start script leaves it (serve.py)
        gc.disable()
        # When something is made while loading
        with loading():
            assert not gc.isenabled()  # (no collection walks what the import makes)
            made = [[index] for index in range(1000)]
        # Then it is out of later collections, and the collector is on
        assert gc.get_freeze_count() >= before + len(made)
        assert gc.isenabled()
    finally:
        gc.unfreeze()
        if not was_on:
            gc.disable()


def test_the_start_script_serves_as_uvicorns_command_line_would_without_loading_it() -> None:
    # When the start script's Python is run as run.sh runs it (its server's settings made, not
    # served), and uvicorn's command line is then given the flags run.sh used to pass it
    shown = in_api_function(
        "import gc, json, runpy, sys\n"
        "script = runpy.run_path('serve.py')\n"
        "ours = script['config']()\n"
        "loaded = sorted({'click', 'uvicorn.main', 'multiprocessing'} & set(sys.modules))\n"
        "print(json.dumps({'collector_on': gc.isenabled(), 'loaded': loaded}))\n"
        "import uvicorn.main\n"
        "given = {}\n"
        "uvicorn.main.run = lambda app, **flags: given.update(flags, app=app)\n"
        "uvicorn.main.main.main(['--host', '127.0.0.1', '--port', '8123', '--no-access-log',\n"
        "    '--timeout-graceful-shutdown', '2', '--app-dir', '.', 'main:app'],\n"
        "    standalone_mode=False)\n"
        "app_dir = given.pop('app_dir')\n"
        "theirs = uvicorn.main.Config(**given)\n"
        "same = {k: v == getattr(theirs, k) for k, v in vars(ours).items()}\n"
        "print(json.dumps({'same': same, 'app_dir': app_dir == '.', 'dir': script['APP_DIR']}))\n",
        PORT="8123",
    )
    before, after = (json.loads(line) for line in shown.splitlines())
    # Then uvicorn's command line and supervisors were not imported, and the collector is off
    # (main.py switches it on once the app is made)
    assert before == {"collector_on": False, "loaded": []}
    # And the server's settings are what the command line makes of those flags, setting by
    # setting (the event loop and HTTP parser "auto", the log configuration, the port...)
    assert after["same"] and all(after["same"].values()), after["same"]
    assert Path(after["dir"]) == ROOT / "functions" / "api"


def collected(thing: object) -> bool:
    """Whether the collector walks `thing` (frozen objects are in none of its generations)."""
    return any(found is thing for found in gc.get_objects())


def test_what_the_server_loads_later_is_frozen_after_a_request_that_ends_alone() -> None:
    requests = Requests()
    requests.settling, requests.modules = True, len(sys.modules)
    try:
        # Given two requests in flight, one of which imports a module and keeps what it made
        requests.began()
        requests.began()
        sys.modules["imagegw_test_loaded_later"] = type(sys)("imagegw_test_loaded_later")
        kept = [[index] for index in range(10)]
        # When the first ends, the other still in flight: nothing is frozen
        requests.ended()
        assert collected(kept)
        # When the other ends too: what the process holds is frozen
        requests.ended()
        assert not collected(kept)
        # and a later request that loads nothing freezes nothing more
        requests.began()
        more = [[index] for index in range(10)]
        requests.ended()
        assert collected(more)
    finally:
        del sys.modules["imagegw_test_loaded_later"]
        gc.unfreeze()


def test_only_the_api_functions_process_freezes_after_requests() -> None:
    # Given the requests of a process whose collector was not set to a server's pace (a test's)
    requests = Requests()
    try:
        requests.began()
        sys.modules["imagegw_test_loaded_later"] = type(sys)("imagegw_test_loaded_later")
        made = [[index] for index in range(10)]
        requests.ended()
        # Then nothing is frozen
        assert collected(made)
    finally:
        del sys.modules["imagegw_test_loaded_later"]
    # while the API function's process settles (main.py)
    assert (
        in_api_function(
            "import main; from imagegw.infra import collector; print(collector.requests.settling)"
        ).strip()
        == "True"
    )
