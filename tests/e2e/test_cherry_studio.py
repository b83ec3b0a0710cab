"""Cherry Studio's client library against `make run`'s server: `@cherrystudio/ai-core` (npm,
on the Vercel AI SDK), run by node as Cherry Studio runs it, asking for images through an
OpenAI-compatible provider. That library retries every 5xx (and 408/409/429) three times in all,
ignoring `x-should-retry` (provider-wire.md): the gateway must not let those retries run a paid
generation again. The provider is the fake ModelScope on loopback; it counts submissions.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from fakes.modelscope import FakeModelScope
from fakes.server import ServerThread, SwappableApp
from local_run import serve_locally

pytestmark = pytest.mark.e2e
REPO_ROOT = Path(__file__).resolve().parents[2]
DRIVER = Path(__file__).with_name("clients") / "cherry_image.mjs"
TOKEN = "ms-test-token"
MODEL = "Qwen/Qwen-Image"

needs_node = pytest.mark.skipif(
    shutil.which("node") is None
    or not (REPO_ROOT / "node_modules" / "@cherrystudio" / "ai-core").is_dir(),
    reason="node and @cherrystudio/ai-core (npm ci) are needed",
)


@pytest.fixture(scope="module")
def local_server(
    tmp_path_factory: pytest.TempPathFactory,
    _fake_ms_server: tuple[ServerThread, SwappableApp],
) -> Iterator[str]:
    """`make run`'s server (its stand-ins embedded), pointed at the fake ModelScope."""
    with serve_locally(
        tmp_path_factory.mktemp("cherry"),
        MODELSCOPE_BASE_URL=f"{_fake_ms_server[0].url}/v1",
        POWERTOOLS_LOG_LEVEL="WARNING",
    ) as (url, _):
        yield url


@pytest.fixture(scope="module")
def quick_deadline_server(
    tmp_path_factory: pytest.TempPathFactory,
    _fake_ms_server: tuple[ServerThread, SwappableApp],
) -> Iterator[str]:
    """The same, with a 3-s generation deadline."""
    with serve_locally(
        tmp_path_factory.mktemp("cherry-deadline"),
        MODELSCOPE_BASE_URL=f"{_fake_ms_server[0].url}/v1",
        POWERTOOLS_LOG_LEVEL="WARNING",
        GENERATION_TIMEOUT="3",
    ) as (url, _):
        yield url


def cherry_studio(base: str, prompt: str) -> dict[str, Any]:
    """The library's outcome for one image of `prompt` (its retries included)."""
    done = subprocess.run(
        ["node", str(DRIVER), f"{base}/v1", TOKEN, MODEL, prompt],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    outcome: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return outcome


@needs_node
def test_cherry_studio_gets_its_image(local_server: str, fake_ms: FakeModelScope) -> None:
    outcome = cherry_studio(local_server, "a lighthouse")

    assert outcome == {"ok": True, "images": 1}
    assert len(fake_ms.submissions) == 1


@needs_node
def test_a_generation_the_provider_failed_is_submitted_once(
    local_server: str, fake_ms: FakeModelScope
) -> None:
    # Given a provider whose task fails (a 502 after the paid task started)
    fake_ms.fail_reason = "the worker ran out of memory"

    # When Cherry Studio asks for an image (and retries the 5xx, as it does)
    outcome = cherry_studio(local_server, "a storm at sea")

    # Then every attempt got the provider's failure, the repeats answered from the first
    assert outcome["ok"] is False and outcome["status"] == 502, outcome
    assert outcome["attempts"] == 3
    assert outcome["replayed"] == "true"
    assert "ran out of memory" in outcome["message"]
    # and the provider was asked once: the paid generation ran once
    assert len(fake_ms.submissions) == 1


@needs_node
def test_a_generation_refused_for_its_content_is_submitted_once(
    local_server: str, fake_ms: FakeModelScope
) -> None:
    # Given a provider that refuses the prompt (its task ends FAILED, moderated)
    fake_ms.fail_reason = "Content Moderated"

    # When Cherry Studio asks for an image
    outcome = cherry_studio(local_server, "something refused")

    # Then it is a 400 (as OpenAI answers its content-policy refusals), not retried at all
    assert outcome["ok"] is False and outcome["status"] == 400, outcome
    assert outcome["attempts"] == 1
    assert len(fake_ms.submissions) == 1


@needs_node
def test_a_generation_that_outlives_the_deadline_reaches_cherry_studio_through_its_retry(
    quick_deadline_server: str, fake_ms: FakeModelScope
) -> None:
    # Given a task that takes 5 s, past the gateway's 3-s deadline (a 504 to the first attempt)
    fake_ms.task_duration = 5.0

    # When Cherry Studio asks for an image (and retries the 504, 2 s later, as it does)
    outcome = cherry_studio(quick_deadline_server, "a slow sunrise")

    # Then its retry is answered from the task, finished by then: the image, submitted once
    assert outcome == {"ok": True, "images": 1}, outcome
    assert len(fake_ms.submissions) == 1
