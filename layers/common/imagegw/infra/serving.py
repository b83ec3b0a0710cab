"""The API function's server: uvicorn's server with the function's settings, started by its start
script (functions/api/serve.py, which run.sh runs) with the garbage collector off from the
process's first line. It lives in the layer, which ships bytecode (layers/common/Makefile): a
script is compiled from its source at every start, and Lambda's /var/task cannot keep a .pyc,
so the start script is a few lines and this module carries the rest. Importing it sets up the
process for the server (below): only the start script imports it.

- The settings are those of uvicorn's command line with `--host 127.0.0.1 --port $PORT
  --no-access-log --timeout-graceful-shutdown 2 --app-dir <its folder> main:app`, everything
  else at its default: the event loop and HTTP parser `auto` (uvloop and httptools when the
  layer has them), uvicorn's log configuration, proxy headers from loopback, one process;
  and the UVICORN_ variables of `ENVIRONMENT`, which that command line read (the others are
  named in a warning). tests/unit/test_collector.py checks that they equal what that command
  line makes.
- The command line itself is not run: importing `uvicorn` runs its `__init__`, which imports it
  (click) and the reload and worker supervisors (multiprocessing), ~12 ms of a cold start's CPU
  a server started with fixed settings never uses. The server's modules are imported from the
  package without that `__init__` (`imagegw.infra.lazy.package_without_init`).
- uvicorn's log configuration is applied as `logging.config.dictConfig` applies it, without
  that module (`Settings.configure_logging`): `logging.config` imports `logging.handlers`,
  `socketserver` and `pickle` and compiles its patterns, for a configuration of three loggers.
  uvicorn's `config` module imports it at its top, so a stand-in is put in its place first
  (`imagegw.infra.lazy.stand_in`), which would import it at its first use (none here).
- The listening socket is opened before the app is imported, as a server started by socket
  activation is given one: a readiness check that comes during the imports waits in the
  socket's queue and is answered as soon as the server serves, rather than refused and tried
  again later; and the address is the literal 127.0.0.1, bound without a name lookup.
- Pydantic looks for plugins (every installed distribution's entry points) when it builds its
  first validator, the first request's: the layer has none, so the search is switched off
  (PYDANTIC_DISABLE_PLUGINS, unless the environment says otherwise), and `importlib.metadata`,
  which its loader imports for that search alone, is a stand-in until something reads it.
- Importing uvicorn and then the app makes tens of thousands of objects that live as long as the
  process; `main.py` makes the app inside `imagegw.infra.collector.loading`, which freezes them
  and switches the collector on.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import sys
from collections.abc import Callable, Mapping
from typing import Any, Final

from imagegw.infra.lazy import package_without_init, stand_in

server_package = package_without_init("uvicorn")
stand_in("logging.config")

from uvicorn.config import LOG_LEVELS, LOGGING_CONFIG, STARTUP_FAILURE, Config  # noqa: E402

# what uvicorn's own modules read from the package (`uvicorn.lifespan`)
vars(server_package)["Config"] = Config

from uvicorn.server import Server  # noqa: E402

#: the variable that switches pydantic's search for plugins off (`__all__`: all of them)
NO_PYDANTIC_PLUGINS = "PYDANTIC_DISABLE_PLUGINS"
os.environ.setdefault(NO_PYDANTIC_PLUGINS, "__all__")
# what pydantic's plugin loader imports at its top for the search alone
stand_in("importlib.metadata")


def _formatter(spec: dict[str, Any]) -> logging.Formatter:
    """A formatter of uvicorn's log configuration, made as `dictConfig` makes one (`()`: its
    factory, by dotted name; the other keys: its arguments)."""
    module, _, name = spec["()"].rpartition(".")
    factory = getattr(sys.modules[module], name)
    formatter: logging.Formatter = factory(**{k: v for k, v in spec.items() if k != "()"})
    return formatter


class Settings(Config):
    """uvicorn's `Config`, which applies uvicorn's own log configuration without
    `logging.config` (any other configuration, or colours asked for, as uvicorn does)."""

    def configure_logging(self) -> None:
        if self.log_config is not LOGGING_CONFIG or self.use_colors is not None:
            super().configure_logging()
            return
        # What `dictConfig` does with it (not incremental, existing loggers not disabled):
        # formatters; handlers, by name in order (a StreamHandler on the named stream each);
        # loggers (their handlers replaced, level set, enabled, propagation as given); then
        # existing loggers below a configured one reset, the others enabled.
        spec = LOGGING_CONFIG
        formatters = {name: _formatter(f) for name, f in spec["formatters"].items()}
        streams = {"ext://sys.stderr": sys.stderr, "ext://sys.stdout": sys.stdout}
        handlers: dict[str, logging.Handler] = {}
        for name in sorted(spec["handlers"]):
            h = spec["handlers"][name]
            assert h["class"] == "logging.StreamHandler", h
            handler = logging.StreamHandler(streams[h["stream"]])
            handler.setFormatter(formatters[h["formatter"]])
            handler.name = name
            handlers[name] = handler
        existing = set(logging.root.manager.loggerDict)
        for name, settings in spec["loggers"].items():
            logger = logging.getLogger(name)
            logger.setLevel(settings["level"])
            for old in logger.handlers[:]:
                logger.removeHandler(old)
            for handler_name in settings.get("handlers", ()):
                logger.addHandler(handlers[handler_name])
            logger.disabled = False
            if "propagate" in settings:
                logger.propagate = settings["propagate"]
        for name in existing - set(spec["loggers"]):
            known = logging.root.manager.loggerDict[name]
            if not isinstance(known, logging.Logger):
                continue  # a placeholder for loggers below it
            if any(name.startswith(f"{above}.") for above in spec["loggers"] if above in existing):
                known.setLevel(logging.NOTSET)
                known.handlers = []
                known.propagate = True
            else:
                known.disabled = False
        log_config, self.log_config = self.log_config, None
        try:
            super().configure_logging()  # the log level and access log flags
        finally:
            self.log_config = log_config


#: click's spellings of a boolean (`--flag/--no-flag` read from the environment)
_TRUE: Final = frozenset({"1", "true", "t", "yes", "y", "on"})
_FALSE: Final = frozenset({"0", "false", "f", "no", "n", "off"})


def _flag(value: str) -> bool:
    spelled = value.strip().lower()
    if spelled not in _TRUE | _FALSE:
        raise ValueError("not a boolean (true/false, 1/0, yes/no, on/off)")
    return spelled in _TRUE


def _level(value: str) -> str:
    if value not in LOG_LEVELS:
        raise ValueError(f"not one of {', '.join(LOG_LEVELS)}")
    return value


#: the variables of uvicorn's command line (UVICORN_ and the option's name) read here, as it
#: reads them, with the Config setting each sets: those that make sense for a server on
#: loopback behind the Web Adapter. The address (127.0.0.1:$PORT), the access log (off: the
#: gateway logs each request itself) and the 2-s graceful shutdown are run.sh's former flags,
#: which won over the environment then too; the others (workers, reload, TLS, a socket or a
#: log configuration file...) have no use here, and a warning names any that is set.
ENVIRONMENT: Final[dict[str, tuple[str, Callable[[str], object]]]] = {
    "UVICORN_LOG_LEVEL": ("log_level", _level),
    "UVICORN_LOOP": ("loop", str),
    "UVICORN_HTTP": ("http", str),
    "UVICORN_TIMEOUT_KEEP_ALIVE": ("timeout_keep_alive", int),
    "UVICORN_LIMIT_CONCURRENCY": ("limit_concurrency", int),
    "UVICORN_BACKLOG": ("backlog", int),
    "UVICORN_H11_MAX_INCOMPLETE_EVENT_SIZE": ("h11_max_incomplete_event_size", int),
    "UVICORN_FORWARDED_ALLOW_IPS": ("forwarded_allow_ips", str),
    "UVICORN_PROXY_HEADERS": ("proxy_headers", _flag),
    "UVICORN_SERVER_HEADER": ("server_header", _flag),
    "UVICORN_DATE_HEADER": ("date_header", _flag),
    "UVICORN_ROOT_PATH": ("root_path", str),
}


def from_environment(env: Mapping[str, str]) -> tuple[dict[str, object], list[str]]:
    """The Config settings `env` asks for (`ENVIRONMENT`; an empty value is unset, as for
    uvicorn's command line), and the UVICORN_ variables set that are not read here. SystemExit
    naming the variable when a value is not one its setting takes."""
    settings: dict[str, object] = {}
    ignored: list[str] = []
    for name, value in env.items():
        if not name.startswith("UVICORN_") or not value:
            continue
        known = ENVIRONMENT.get(name)
        if known is None:
            ignored.append(name)
            continue
        setting, parse = known
        try:
            settings[setting] = parse(value)
        except ValueError as exc:
            message = str(exc) if parse is not int else "not an integer"
            raise SystemExit(f"{name}={value[:40]!r} cannot be used: {message}.") from None
    return settings, sorted(ignored)


def config() -> Config:
    """The server's settings: uvicorn's command line's with run.sh's former flags and the
    UVICORN_ variables of `ENVIRONMENT`, as that command line reads them."""
    settings, ignored = from_environment(os.environ)
    made = Settings(
        "main:app",
        host="127.0.0.1",
        port=int(os.environ.get("PORT", "8000")),
        access_log=False,
        timeout_graceful_shutdown=2,
        **settings,  # type: ignore[arg-type]
    )
    if ignored:  # (after Config applied the log configuration)
        logging.getLogger("uvicorn.error").warning(
            "%s not read by the API function's server (see imagegw.infra.serving)",
            ", ".join(ignored),
        )
    return made


def listening(settings: Config) -> socket.socket:
    """The server's socket, bound as uvicorn binds it (its "running on" line logged) and
    listening already, with uvicorn's backlog."""
    sock = settings.bind_socket()
    sock.listen(settings.backlog)
    return sock


def serve(app_dir: str) -> None:
    """Import the app (`main:app` from `app_dir`, uvicorn's `--app-dir`) and serve it until
    SIGTERM, as `uvicorn.run` does for one process; exit with uvicorn's start-up failure status
    when it did not start."""
    sys.path.insert(0, app_dir)
    settings = config()
    sock = listening(settings)
    settings.load_app()
    server = Server(config=settings)
    with contextlib.suppress(KeyboardInterrupt):
        server.run(sockets=[sock])
    if not server.started:
        sys.exit(STARTUP_FAILURE)
