"""What run.sh starts: uvicorn's server with the API function's settings (below), and the garbage
collector off from the process's first line.

- The settings are those of uvicorn's command line with `--host 127.0.0.1 --port $PORT
  --no-access-log --timeout-graceful-shutdown 2 --app-dir <here> main:app`, everything else at
  its default: the event loop and HTTP parser `auto` (uvloop and httptools when the layer has
  them), uvicorn's log configuration, proxy headers from loopback, one process.
  tests/unit/test_collector.py checks that they equal what that command line makes.
- The command line itself is not run: importing `uvicorn` runs its `__init__`, which imports it
  (click) and the reload and worker supervisors (multiprocessing), ~12 ms of a cold start's CPU
  a server started with fixed settings never uses. The server's modules are imported from the
  package without that `__init__` (`imagegw.infra.lazy.package_without_init`).
- Importing uvicorn and then the app makes tens of thousands of objects that live as long as the
  process; `main.py` makes the app inside `imagegw.infra.collector.loading`, which freezes them
  and switches the collector on.
"""

import gc

gc.disable()

import contextlib  # noqa: E402
import os  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

from imagegw.infra.lazy import package_without_init  # noqa: E402

server_package = package_without_init("uvicorn")

from uvicorn.config import STARTUP_FAILURE, Config  # noqa: E402

# what uvicorn's own modules read from the package (`uvicorn.lifespan`)
vars(server_package)["Config"] = Config

from uvicorn.server import Server  # noqa: E402

#: where main.py is (`--app-dir`)
APP_DIR = str(Path(__file__).resolve().parent)


def config() -> Config:
    """The server's settings: uvicorn's command line's with run.sh's former flags."""
    return Config(
        "main:app",
        host="127.0.0.1",
        port=int(os.environ.get("PORT", "8000")),
        access_log=False,
        timeout_graceful_shutdown=2,
    )


def serve() -> None:
    """Import the app and serve it until SIGTERM, as `uvicorn.run` does for one process; exit
    with uvicorn's start-up failure status when it did not start."""
    sys.path.insert(0, APP_DIR)
    settings = config()
    settings.load_app()
    server = Server(config=settings)
    with contextlib.suppress(KeyboardInterrupt):
        server.run()
    if not server.started:
        sys.exit(STARTUP_FAILURE)


if __name__ == "__main__":
    serve()
