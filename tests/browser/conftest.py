"""The page in a real browser: Debian's Chromium (`/usr/bin/chromium`, installed by `.ci/run`)
driven by Playwright's Python API through `executable_path` (no browser is ever downloaded),
against `make run`'s server (`tests/local_run.py`) with the demo provider on and a fake
ModelScope on loopback.

Without Chromium or Playwright the tests skip with the reason, except in CI (CI=true), where
they must run."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from fakes.modelscope import FakeModelScope
from fakes.server import ServerThread, SwappableApp
from local_run import REPO_ROOT, serve_locally

CHROMIUM = Path(os.environ.get("CHROMIUM", "/usr/bin/chromium"))
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
#: the README's screenshots, written by the tests when asked (UPDATE_SCREENSHOTS=1) so they
#: stay true; otherwise a test's screenshots go to its temporary folder (the progress timings
#: in them differ on every run: a committed picture changes only when someone means it to)
SCREENSHOTS = REPO_ROOT / "docs" / "images"
#: how long a step in the page may take (a demo task runs about 4 s)
PATIENCE_MS = 30_000


def _missing() -> str | None:
    if not CHROMIUM.exists():
        return f"{CHROMIUM} is missing (apt-get install chromium)"
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "the playwright package is missing (pip install -r requirements-dev.txt)"
    return None


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    reason = _missing()
    if reason is None:
        return
    if os.environ.get("CI") == "true":
        return  # in CI they run, and fail if the browser is missing
    skip = pytest.mark.skip(reason=f"browser tests need Chromium and Playwright: {reason}")
    for item in items:
        if "tests/browser/" in str(item.fspath):
            item.add_marker(skip)


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """Chromium for one module: Playwright's sync API holds an event loop while it runs, so it
    is stopped before the next module's tests (anyio's, asyncio's) need one."""
    reason = _missing()
    if reason is not None:
        pytest.fail(f"browser tests run in CI: {reason}")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield launched
        launched.close()


@pytest.fixture(scope="module")
def fake_modelscope() -> Iterator[FakeModelScope]:
    swappable = SwappableApp()
    with ServerThread(swappable) as server:
        # queued half a second, then running: long enough for a poll to see it running (the
        # page's "generating" step). A model on its catalogue prior (Qwen-Image: ~15 s) is
        # polled every few seconds while queued (core/schedule._queued), so a 2-s task could
        # end between two polls and the page rightly never show it running.
        fake = FakeModelScope(task_duration=6.0, pending_seconds=0.5)
        fake.base_url = f"{server.url}/v1"  # type: ignore[attr-defined]
        swappable.app = fake
        yield fake


@dataclass
class Served:
    """`make run`'s server for the browser tests, and its owner commands."""

    url: str
    log: Path
    access_file: Path
    keys: list[str] = field(default_factory=list)

    def admin(self, *args: str) -> str:
        done = subprocess.run(
            [sys.executable, "-m", "imagegw.frontends.admin", *args],
            cwd=REPO_ROOT,
            env={
                "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
                "HOME": os.environ.get("HOME", "/tmp"),
                "PYTHONPATH": str(REPO_ROOT / "layers" / "common"),
                "IMAGEGW_LOCAL_ACCESS_FILE": str(self.access_file),
            },
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        )
        return done.stdout


@pytest.fixture(scope="module")
def served(
    tmp_path_factory: pytest.TempPathFactory, fake_modelscope: FakeModelScope
) -> Iterator[Served]:
    folder = tmp_path_factory.mktemp("make-run")
    with serve_locally(
        folder,
        MODELSCOPE_BASE_URL=fake_modelscope.base_url,  # type: ignore[attr-defined]
        POWERTOOLS_LOG_LEVEL="WARNING",
    ) as (url, log):
        yield Served(url, log, folder / "access.json")


class Console:
    """What the page said on its console, and the errors it threw."""

    def __init__(self) -> None:
        self.messages: list[tuple[str, str]] = []

    def problems(self) -> list[tuple[str, str]]:
        return [(kind, text) for kind, text in self.messages if kind in ("error", "pageerror")]


@pytest.fixture
def screenshots(tmp_path: Path) -> Path:
    """Where a test writes its screenshots: `SCREENSHOTS` with UPDATE_SCREENSHOTS=1, else its
    temporary folder."""
    return SCREENSHOTS if os.environ.get("UPDATE_SCREENSHOTS") == "1" else tmp_path


@pytest.fixture
def page(browser: Any) -> Iterator[tuple[Any, Console]]:
    """A fresh browser context (its own localStorage) and a page in it; its console."""
    context = browser.new_context(viewport={"width": 1180, "height": 900})
    context.set_default_timeout(PATIENCE_MS)
    opened = context.new_page()
    console = Console()
    opened.on("console", lambda message: console.messages.append((message.type, message.text)))
    opened.on("pageerror", lambda error: console.messages.append(("pageerror", str(error))))
    yield opened, console
    context.close()
