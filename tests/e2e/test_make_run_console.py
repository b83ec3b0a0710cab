"""`make run` as a newcomer meets it (`python -m imagegw.frontends.local`, its moto stand-ins in
their own process, the fake ModelScope on loopback): gateway keys and token pools outlive a
restart, a second run on a busy port breaks nothing of the first, and the console shows one
short line per request with its error code, and no spurious warning."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest

from e2e.test_gateway_keys import Local
from fakes.modelscope import FakeModelScope
from fakes.server import ServerThread, SwappableApp
from local_run import REPO_ROOT, serve_locally

pytestmark = pytest.mark.e2e
MODEL = "Qwen/Qwen-Image"


@pytest.fixture
def fake(fake_ms: FakeModelScope) -> FakeModelScope:
    fake_ms.tokens |= {"ms-pool-a"}
    return fake_ms


@pytest.fixture
def ms_url(_fake_ms_server: tuple[ServerThread, SwappableApp]) -> str:
    """The fake ModelScope's API base URL."""
    return f"{_fake_ms_server[0].url}/v1"


def make_run(
    folder: Path, ms_url: str, mode: str = "keys"
) -> AbstractContextManager[tuple[str, Path]]:
    return serve_locally(
        folder, MODELSCOPE_BASE_URL=ms_url, JOB_POLL_INTERVAL="0", ACCESS_MODE=mode
    )


def generate(url: str, key: str) -> httpx.Response:
    return httpx.post(
        f"{url}/v1/images/generations",
        json={"model": MODEL, "prompt": "a fox"},
        headers={"authorization": f"Bearer {key}"},
        timeout=60,
    )


def logged(log: Path, wanted: str, patience: float = 30.0) -> str:
    """The log's text once it has a line with `wanted` (or at the end of `patience` s)."""
    deadline = time.monotonic() + patience
    text = log.read_text()
    while wanted not in text and time.monotonic() < deadline:
        time.sleep(0.1)
        text = log.read_text()
    return text


def test_keys_and_token_pools_outlive_a_restart_of_make_run(
    tmp_path: Path, ms_url: str, fake: FakeModelScope
) -> None:
    # Given a first run where the owner added a token and issued a key that made an image
    with make_run(tmp_path, ms_url) as (url, log):
        local = Local(url, log, tmp_path / "access.json")
        local.admin("token", "modelscope", "ms-pool-a")
        alice = local.key("alice", "--quota", "5")
        assert generate(url, alice).status_code == 200

    # When make run starts again with the same state folder
    with make_run(tmp_path, ms_url) as (url, log):
        local = Local(url, log, tmp_path / "access.json")
        # Then the key still works, with the pool's token, and its usage is still counted
        assert generate(url, alice).status_code == 200, log.read_text()[-2000:]
        assert [s["token"] for s in fake.submissions] == ["ms-pool-a", "ms-pool-a"]
        usage = httpx.get(
            f"{url}/v1/usage", headers={"authorization": f"Bearer {alice}"}, timeout=30
        ).json()
        assert usage["today"]["images"] == 2 and usage["daily_quota"] == 5
        # and the owner commands see the same key and token
        assert "alice" in local.admin("keys").stdout
        assert "modelscope: 1 token(s)" in local.admin("tokens").stdout
        assert ", 1 gateway keys and the token pools" in log.read_text()
    # and the kept secret (it holds the tokens) is its owner's alone
    kept = tmp_path / "state" / "access" / "secret.json"
    assert kept.stat().st_mode & 0o077 == 0


def test_a_second_make_run_on_a_busy_port_leaves_the_first_one_working(
    tmp_path: Path, ms_url: str, fake: FakeModelScope
) -> None:
    # Given a first make run, its owner-commands file in place
    with make_run(tmp_path, ms_url) as (url, log):
        access = tmp_path / "access.json"
        before = access.read_text()
        port = str(urlsplit(url).port)

        # When a second one is started on the same port (with the same files)
        second: dict[str, Any] = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": os.environ.get("HOME", "/tmp"),
            "PYTHONPATH": str(REPO_ROOT / "layers" / "common"),
            "HOST": "127.0.0.1",
            "PORT": port,
            "LOCAL_STATE_DIR": str(tmp_path / "state"),
            "IMAGEGW_LOCAL_ACCESS_FILE": str(access),
            "ACCESS_MODE": "keys",
        }
        done = subprocess.run(
            [sys.executable, "-m", "imagegw.frontends.local"],
            cwd=REPO_ROOT,
            env=second,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )

        # Then it stops at once, saying why and what to do
        assert done.returncode == 1
        assert f"127.0.0.1:{port} is in use" in done.stderr and "PORT=" in done.stderr
        # and the first one's owner commands still work on it
        assert access.read_text() == before
        local = Local(url, log, access)
        local.admin("token", "modelscope", "ms-pool-a")
        assert generate(url, local.key("bob")).status_code == 200


def test_the_console_shows_one_short_line_per_request_with_its_error_code(
    tmp_path: Path, ms_url: str, fake: FakeModelScope
) -> None:
    # Given make run as a newcomer starts it (mixed access, no key issued)
    with make_run(tmp_path, ms_url, mode="mixed") as (url, log):
        # When a first generation with the client's own token succeeds (the first use of the
        # shared estimates on a cold process: it once logged a spurious TimeoutError warning)
        # and a request with a cut-off key is refused
        assert generate(url, "ms-test-token").status_code == 200
        assert generate(url, "gk-abc").status_code == 401
        # (a request's line is written as its answer ends: the client may read it first)
        text = logged(log, " POST /v1/images/generations 401 ")

    lines = text.splitlines()
    # Then each request is one short human line: method, path, status, duration, error code
    ok = [line for line in lines if " POST /v1/images/generations 200 " in line]
    refused = [line for line in lines if " POST /v1/images/generations 401 " in line]
    assert len(ok) == 1 and len(refused) == 1, text[-3000:]
    assert ok[0].endswith(" ms") and refused[0].endswith(" ms invalid_api_key")
    assert all(len(line) < 120 for line in ok + refused)
    # and no line is JSON, and no spurious warning about the estimates table shows
    assert not any(line.startswith('{"level"') for line in lines), text[-3000:]
    assert not any("images generation" in line for line in lines)  # one line a request
    assert "estimates table failed" not in text


@pytest.fixture(autouse=True)
def _no_repo_files() -> Iterator[None]:
    """These runs write nothing in the repository's own state folders."""
    before = (REPO_ROOT / ".local-state").exists()
    yield
    assert (REPO_ROOT / ".local-state").exists() == before
