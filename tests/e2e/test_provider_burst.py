"""End to end: a burst of generations on a cold gateway against a provider whose accept queue is
short (a busy provider's may be) loses none of them, and starts each task once."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import httpx
import pytest

from fakes.modelscope import FakeModelScope
from fakes.server import ServerThread

pytestmark = pytest.mark.e2e
TOKEN = "ms-test-token"
BURST = 100


async def _burst(url: str) -> list[httpx.Response | BaseException]:
    limits = httpx.Limits(max_connections=BURST, max_keepalive_connections=BURST)
    async with httpx.AsyncClient(limits=limits, timeout=60.0) as client:
        return await asyncio.gather(
            *(
                client.post(
                    f"{url}/v1/chat/completions",
                    headers={"authorization": f"Bearer {TOKEN}"},
                    json={
                        "model": "Qwen/Qwen-Image",
                        "messages": [{"role": "user", "content": f"burst #{i}"}],
                    },
                )
                for i in range(BURST)
            ),
            return_exceptions=True,
        )


def test_a_burst_against_a_short_accept_queue_loses_no_generation(
    gateway: Callable[..., str],
) -> None:
    # Given a fresh gateway (no pooled connections) and a ModelScope whose listen backlog is 8
    fake = FakeModelScope(task_duration=0.2)
    with ServerThread(fake, backlog=8) as provider:
        url = gateway(modelscope_base_url=f"{provider.url}/v1", image_links="provider")

        # When many clients ask for an image at the same moment
        answers = asyncio.run(_burst(url))

    # Then every one gets its image, and the provider started one task for each
    failed = [_describe(a) for a in answers if not _has_image(a)]
    assert failed == []
    assert len(fake.tasks) == BURST


def _has_image(answer: httpx.Response | BaseException) -> bool:
    if isinstance(answer, BaseException) or answer.status_code != 200:
        return False
    content = answer.json()["choices"][0]["message"]["content"]
    return isinstance(content, str) and content.startswith("![")


def _describe(answer: httpx.Response | BaseException) -> str:
    return repr(answer) if isinstance(answer, BaseException) else answer.text[:300]
