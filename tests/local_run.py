"""`make run`'s server as tests start it: `python -m imagegw.frontends.local` in a process of its
own, on a free port, with its kept state and its owner-commands file in a folder of the test's
(never the repository's), stopped (with its stand-ins) when the test is done."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from e2e.test_deployed_build import _stop, _wait_ready
from lambdahost.adapter import free_port

REPO_ROOT = Path(__file__).resolve().parents[1]


@contextmanager
def serve_locally(folder: Path, **env: str) -> Iterator[tuple[str, Path]]:
    """The server's URL and its log file; `env` adds to (or overrides) its environment."""
    port = free_port()
    environment = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": os.environ.get("HOME", "/tmp"),
        "PYTHONPATH": str(REPO_ROOT / "layers" / "common"),
        "HOST": "127.0.0.1",
        "PORT": str(port),
        # what make run keeps across restarts, and where it tells the owner commands its
        # gateway-key stand-ins are: not the repository's own
        "LOCAL_STATE_DIR": str(folder / "state"),
        "IMAGEGW_LOCAL_ACCESS_FILE": str(folder / "access.json"),
        **env,
    }
    log = folder / f"server-{port}.log"
    url = f"http://127.0.0.1:{port}"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "imagegw.frontends.local"],
            cwd=REPO_ROOT,
            env=environment,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        _wait_ready(process, url, log)
        yield url, log
    finally:
        _stop(process)
