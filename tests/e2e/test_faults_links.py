"""The fault matrix, interactive bucket faults (issue 8, class 6): a paid result is never lost
to the bucket, and a stored one the bucket cannot reach is a retryable 503.

The gateway serves over real HTTP on loopback (the `gateway` fixture); its bucket's S3 calls
fail as an unreachable endpoint does (`fakes.faulty_jobs.BucketOutage`).
"""

from __future__ import annotations

import base64
import re
from collections.abc import Callable

import httpx
import openai
import pytest

from fakes.faulty_jobs import BucketOutage
from fakes.modelscope import FakeModelScope
from fakes.openai_images import FakeOpenAIImages
from fakes.png import png_size

pytestmark = pytest.mark.e2e
TOKEN = "ms-test-token"


def generate(base: str, provider: str = "", **extra: object) -> str:
    """One image made over chat; the link the answer carries."""
    prefix = f"/{provider}" if provider else ""
    sdk = openai.OpenAI(base_url=f"{base}{prefix}/v1", api_key=TOKEN, max_retries=0)
    answer = sdk.chat.completions.create(
        model="Qwen/Qwen-Image",
        messages=[{"role": "user", "content": "a red square"}],
        extra_body=extra,
    )
    content = answer.choices[0].message.content
    assert content is not None
    match = re.fullmatch(r"!\[[^\]]*\]\((\S+)\)", content)
    assert match, content
    return match.group(1)


def test_a_bucket_failing_at_result_copy_gives_the_providers_link(
    gateway: Callable[..., str], fake_ms: FakeModelScope, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given stored links (the default) and a bucket that cannot be reached
    outage = BucketOutage(["put_object"]).install(monkeypatch)
    base = gateway()

    # When an image is made (the SDK would raise on anything but a 200)
    link = generate(base, size="96x64")

    # Then the client got the provider's own link, which works; the bucket was tried once
    (task,) = fake_ms.tasks.values()
    provider_base = fake_ms.base_url.removesuffix("/v1")  # type: ignore[attr-defined]
    assert link == f"{provider_base}/files/{task.output_names[0]}"
    assert png_size(httpx.get(link, timeout=30).content) == (96, 64)
    assert outage.refused == ["put_object"]
    assert len(fake_ms.submissions) == 1


def test_a_bucket_failing_at_result_copy_gives_an_inline_image_as_a_data_uri(
    gateway: Callable[..., str], fake_openai: FakeOpenAIImages, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given a provider that answers the image itself, stored links, and the bucket down
    BucketOutage(["put_object"]).install(monkeypatch)
    base = gateway()

    # When an image is made
    link = generate(base, "openai", width=80, height=64)

    # Then the client got the image itself, made once
    assert link.startswith("data:image/png;base64,")
    assert png_size(base64.b64decode(link.split(",", 1)[1])) == (80, 64)
    assert len(fake_openai.requests) == 1


@pytest.mark.parametrize("method", ["GET", "HEAD"])
def test_a_stored_link_with_the_bucket_unreachable_is_a_retryable_503(
    gateway: Callable[..., str],
    fake_ms: FakeModelScope,
    monkeypatch: pytest.MonkeyPatch,
    method: str,
) -> None:
    # Given a stored result, then the bucket unreachable
    outage = BucketOutage(["head_object"]).install(monkeypatch)
    outage.down = False
    link = generate(gateway(), size="96x64")
    assert httpx.get(link, timeout=30).status_code == 307
    outage.down = True

    # When the client follows the lasting link
    answer = httpx.request(method, link, timeout=30)

    # Then it is told to try again later: a 503 storage_unavailable, not a 500 nor a 404
    assert answer.status_code == 503
    assert answer.headers["x-should-retry"] == "true"
    if method == "GET":
        error = answer.json()["error"]
        assert error["code"] == "storage_unavailable"
        assert error["type"] == "server_error"
    assert outage.refused == ["head_object"]
