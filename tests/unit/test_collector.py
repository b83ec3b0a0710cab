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


def in_api_function(code: str, without: tuple[str, ...] = (), **env: str) -> str:
    """What `code` prints, run by a fresh interpreter in the API function's folder with the
    layer's package on the path (as uvicorn runs `main`), and `env` added to its environment
    (the variables named `without` taken out of it)."""
    kept = {k: v for k, v in os.environ.items() if k not in without}
    env = {**kept, "PYTHONPATH": str(ROOT / "layers" / "common"), **env}
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


#: Python that gives uvicorn's command line run.sh's former flags and keeps the settings it
#: makes (`given`, its app directory among them), running nothing
THEIRS = (
    "import uvicorn.main\n"
    "given = {}\n"
    "uvicorn.main.run = lambda app, **flags: given.update(flags, app=app)\n"
    "uvicorn.main.main.main(['--host', '127.0.0.1', '--port', '8123', '--no-access-log',\n"
    "    '--timeout-graceful-shutdown', '2', '--app-dir', '.', 'main:app'],\n"
    "    standalone_mode=False)\n"
)


def test_the_start_script_serves_as_uvicorns_command_line_would_without_loading_it() -> None:
    # When the start script's Python is run as run.sh runs it (its server's settings made, not
    # served), and uvicorn's command line is then given the flags run.sh used to pass it
    shown = in_api_function(
        "import gc, json, runpy, sys\n"
        "script = runpy.run_path('serve.py')\n"
        "ours = script['config']()\n"
        "loaded = sorted({'click', 'uvicorn.main', 'multiprocessing'} & set(sys.modules))\n"
        "print(json.dumps({'collector_on': gc.isenabled(), 'loaded': loaded}))\n"
        + THEIRS
        + "app_dir = given.pop('app_dir')\n"
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


#: a value other than the default for each UVICORN_ variable the start script reads
UVICORN_ENV = {
    "UVICORN_LOG_LEVEL": "warning",
    "UVICORN_LOOP": "asyncio",
    "UVICORN_HTTP": "h11",
    "UVICORN_TIMEOUT_KEEP_ALIVE": "61",
    "UVICORN_LIMIT_CONCURRENCY": "900",
    "UVICORN_BACKLOG": "64",
    "UVICORN_H11_MAX_INCOMPLETE_EVENT_SIZE": "32768",
    "UVICORN_FORWARDED_ALLOW_IPS": "10.0.0.0/8",
    "UVICORN_PROXY_HEADERS": "false",
    "UVICORN_SERVER_HEADER": "no",
    "UVICORN_DATE_HEADER": "0",
    "UVICORN_ROOT_PATH": "/gw",
}


def test_the_start_script_reads_uvicorns_environment_as_its_command_line_did() -> None:
    # Given the UVICORN_ variables an owner may set on the function
    from imagegw.infra.serving import ENVIRONMENT

    assert set(UVICORN_ENV) == set(ENVIRONMENT)
    # When the start script's settings are made, and uvicorn's command line is given run.sh's
    # former flags in the same environment
    shown = in_api_function(
        "import json, runpy\n"
        "ours = runpy.run_path('serve.py')['config']()\n" + THEIRS + "given.pop('app_dir')\n"
        "theirs = uvicorn.main.Config(**given)\n"
        "print(json.dumps({k: v == getattr(theirs, k) for k, v in vars(ours).items()}))\n"
        "print(json.dumps([ours.timeout_keep_alive, ours.root_path, ours.server_header]))\n",
        PORT="8123",
        **UVICORN_ENV,
    )
    same, values = (json.loads(line) for line in shown.splitlines()[-2:])
    # Then every setting is what the command line makes of the flags and the environment
    assert same and all(same.values()), {k: v for k, v in same.items() if not v}
    assert values == [61, "/gw", False]


def test_the_start_script_names_uvicorn_variables_it_does_not_read_or_cannot_use() -> None:
    code = "import runpy\nrunpy.run_path('serve.py')['config']()\n"
    env = {k: v for k, v in os.environ.items()}
    env["PYTHONPATH"] = str(ROOT / "layers" / "common")
    run = {"cwd": ROOT / "functions" / "api", "capture_output": True, "text": True, "timeout": 60}
    # A variable with no use here (workers, on loopback behind the Web Adapter) is warned of
    warned = subprocess.run(
        [sys.executable, "-c", code], env={**env, "UVICORN_WORKERS": "3"}, **run
    )  # type: ignore[call-overload]
    assert warned.returncode == 0
    assert "UVICORN_WORKERS not read" in warned.stderr
    # and a value a setting cannot take stops the start, naming the variable
    for name, value in (("UVICORN_TIMEOUT_KEEP_ALIVE", "soon"), ("UVICORN_LOG_LEVEL", "loud")):
        failed = subprocess.run([sys.executable, "-c", code], env={**env, name: value}, **run)  # type: ignore[call-overload]
        assert failed.returncode != 0
        assert f"{name}='{value}' cannot be used" in failed.stderr
        assert "Traceback" not in failed.stderr


#: the state of the loggers uvicorn's log configuration sets, and of the handlers on them
LOGGERS_STATE = (
    "import json, logging, sys\n"
    "def state():\n"
    "    loggers = {}\n"
    "    for name, known in sorted(logging.root.manager.loggerDict.items()):\n"
    "        if not isinstance(known, logging.Logger):\n"
    "            continue\n"
    "        loggers[name] = [known.level, known.propagate, known.disabled, [\n"
    "            [type(h).__name__, h.name, getattr(h.stream, 'name', None),\n"
    "             type(h.formatter).__name__, h.formatter._fmt,\n"
    "             getattr(h.formatter, 'use_colors', None)]\n"
    "            for h in known.handlers]]\n"
    "    return loggers\n"
)


def test_the_start_script_logs_as_uvicorns_log_configuration_without_logging_config() -> None:
    # When the start script's server settings are made (ours), and in another interpreter
    # uvicorn's own Config is given the same settings (theirs: logging.config's dictConfig)
    run = "import runpy\nscript = runpy.run_path('serve.py')\n"
    flags = "'main:app', host='127.0.0.1', port=8123, access_log=False"
    ours = in_api_function(
        f"{LOGGERS_STATE}{run}script['config']()\n"
        "loaded = sorted({'logging.handlers', 'socketserver'} & set(sys.modules))\n"
        "print(json.dumps({'loggers': state(), 'loaded': loaded}))\n"
    )
    theirs = in_api_function(
        f"{LOGGERS_STATE}{run}"
        f"from uvicorn.config import Config\nConfig({flags}, timeout_graceful_shutdown=2)\n"
        "print(json.dumps({'loggers': state(), 'logging_config': 'dictConfig' in\n"
        "    vars(sys.modules['logging.config'])}))\n"
    )
    ours_shown, theirs_shown = json.loads(ours), json.loads(theirs)

    # Then uvicorn's loggers, their handlers and formats are the same, and the start script's
    # way imported neither logging.config's handlers module nor its socket server
    assert theirs_shown["logging_config"] is True  # uvicorn's way went through dictConfig
    assert ours_shown["loggers"] == theirs_shown["loggers"]
    assert {"uvicorn", "uvicorn.error", "uvicorn.access"} <= set(ours_shown["loggers"])
    assert ours_shown["loaded"] == []


def test_the_start_script_switches_pydantics_plugin_search_off_unless_told_otherwise() -> None:
    # When the start script's module is run (as run.sh runs it, up to serving) and pydantic
    # then builds a validator
    code = (
        "import json, os, runpy\n"
        "runpy.run_path('serve.py')\n"
        "from pydantic import TypeAdapter\n"
        "TypeAdapter(int).validate_python(1)\n"
        "from pydantic.plugin import _loader\n"
        "import sys\n"
        "searched = 'version' in vars(sys.modules['importlib.metadata'])\n"
        "print(json.dumps([os.environ['PYDANTIC_DISABLE_PLUGINS'], _loader._plugins is None,\n"
        "    searched]))\n"
    )
    shown = in_api_function(code, without=("PYDANTIC_DISABLE_PLUGINS",))
    # Then pydantic did not search the installed distributions for plugins, nor loaded what
    # it searches them with
    assert json.loads(shown) == ["__all__", True, False]
    # And a value the environment gives is kept (and the search made)
    told = in_api_function(code, PYDANTIC_DISABLE_PLUGINS="some_plugin")
    assert json.loads(told) == ["some_plugin", False, True]


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
