"""`make run` keeps stored images and ended jobs across restarts (`imagegw.infra.localstate`), and
forgets them when its state folder is emptied (`make reset`).

The server runs as `make run` runs it (`python -m imagegw.frontends.local`, its moto stand-ins in
their own process), against the fake ModelScope, with its state folder in a temporary
directory."""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest

from e2e.test_jobs_api import wait_for
from fakes.modelscope import FakeModelScope
from fakes.server import ServerThread, SwappableApp
from local_run import serve_locally

TOKEN = "ms-test-token"
AUTH = {"authorization": f"Bearer {TOKEN}"}
REPO_ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.e2e


@pytest.fixture
def make_run(
    tmp_path: Path, _fake_ms_server: tuple[ServerThread, SwappableApp]
) -> Callable[[], AbstractContextManager[str]]:
    """Start `make run`'s server with the state folder `tmp_path / "state"`; its URL."""

    @contextmanager
    def run() -> Iterator[str]:
        with serve_locally(
            tmp_path,
            MODELSCOPE_BASE_URL=f"{_fake_ms_server[0].url}/v1",
            JOB_POLL_INTERVAL="0",
            POWERTOOLS_LOG_LEVEL="WARNING",
        ) as (url, _):
            yield url

    return run


def moved(link: str, base: str) -> str:
    """`link` on the server at `base` (each run listens on its own port)."""
    parts = urlsplit(link)
    return base + parts.path + (f"?{parts.query}" if parts.query else "")


def kept(folder: Path, count: int, patience: float = 30.0) -> list[Path]:
    """The files of `folder` once there are `count` (the stand-ins save as they stop)."""
    deadline = time.monotonic() + patience
    while time.monotonic() < deadline:
        files = sorted(p for p in folder.glob("*") if not p.name.endswith(".partial"))
        if len(files) >= count:
            return files
        time.sleep(0.2)
    raise AssertionError(f"{folder} has not {count} files: {list(folder.glob('*'))}")


def test_images_and_jobs_outlive_a_restart_until_reset(
    make_run: Callable[[], AbstractContextManager[str]],
    fake_ms: FakeModelScope,
    tmp_path: Path,
) -> None:
    # Given a picture made in a chat and an async job, on a first run
    with make_run() as first:
        chat = httpx.post(
            f"{first}/v1/chat/completions",
            json={"model": "Qwen/Qwen-Image", "messages": [{"role": "user", "content": "a fox"}]},
            headers=AUTH,
            timeout=30,
        )
        assert chat.status_code == 200, chat.text
        link = chat.json()["choices"][0]["message"]["content"].split("(")[1].rstrip(")")
        picture = httpx.get(link, follow_redirects=True, timeout=30).content
        accepted = httpx.post(
            f"{first}/v1/images/generations",
            json={"model": "Qwen/Qwen-Image", "prompt": "a hare"},
            headers={**AUTH, "prefer": "respond-async"},
            timeout=30,
        )
        assert accepted.status_code == 202, accepted.text
        job = wait_for(accepted.headers["location"])
        assert job["status"] == "succeeded", job
        job_id = job["id"]
    # Then the state folder holds both images and the ended job, the job without its key
    state = tmp_path / "state"
    assert len(kept(state / "images", 2)) == 2
    (record,) = kept(state / "jobs", 1)
    assert json.loads(json.loads(record.read_text())["input"])["key"] == ""

    # When the server starts again
    with make_run() as second:
        # Then the chat's picture still answers, the same bytes
        again = httpx.get(moved(link, second), follow_redirects=True, timeout=30)
        assert again.status_code == 200 and again.content == picture
        # And the job answers as it did, its image too
        status = httpx.get(f"{second}/v1/jobs/{job_id}", headers=AUTH, timeout=30)
        assert status.status_code == 200, status.text
        assert status.json()["status"] == "succeeded"
        (item,) = status.json()["data"]
        image = httpx.get(moved(item["url"], second), follow_redirects=True, timeout=30)
        assert image.status_code == 200
        # And another caller still cannot read it
        other = httpx.get(
            f"{second}/v1/jobs/{job_id}", headers={"authorization": "Bearer x"}, timeout=30
        )
        assert other.status_code == 404

    # When the state is reset (`make reset` empties the folder) and the server starts again
    shutil.rmtree(state)
    with make_run() as third:
        # Then neither the picture nor the job is known
        gone = httpx.get(moved(link, third), follow_redirects=True, timeout=30)
        assert gone.status_code == 404
        unknown = httpx.get(f"{third}/v1/jobs/{job_id}", headers=AUTH, timeout=30)
        assert unknown.status_code == 404
