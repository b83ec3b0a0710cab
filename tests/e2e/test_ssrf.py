"""End to end: a client cannot make the gateway fetch private addresses. The OpenAI-compatible
provider downloads the image URLs of edits; with ALLOW_PRIVATE_URLS off (the deployed default)
every loopback, link-local or otherwise private URL, in any spelling, gets the same 400 whether a
server listens there or not, and nothing is fetched nor sent to the provider. With the opt-in
(what the other tests run with) the same edit goes through."""

from __future__ import annotations

from collections.abc import Callable

import httpx
import pytest

from fakes.image_host import FakeImageHost
from fakes.openai_images import FakeOpenAIImages
from fakes.png import make_png

pytestmark = pytest.mark.e2e
#: any key: the download comes before the provider is asked (an invalid key changes nothing)
KEY = "sk-not-checked-yet"
REFUSED = {
    "error": {
        "message": "Input image 1 could not be downloaded from its URL.",
        "type": "invalid_request_error",
        "param": "messages",
        "code": "invalid_image",
    }
}
URLS = [
    "http://127.0.0.1:{port}/files/x.png",  # a live server
    "http://127.0.0.1:9/x.png",  # nothing listening
    "http://169.254.169.254/latest/meta-data/iam/security-credentials/",
    "http://[::1]:{port}/files/x.png",
    "http://2130706433:{port}/files/x.png",
    "http://0x7f000001:{port}/files/x.png",
    "http://0177.0.0.1:{port}/files/x.png",
    "http://127.1:{port}/files/x.png",
    "http://localhost:{port}/files/x.png",
    "http://[::ffff:127.0.0.1]:{port}/files/x.png",
    "http://10.0.0.1/x.png",
    "http://100.64.0.1/x.png",
    "http://[fd00::1]/x.png",
    "http://[fe80::1%25eth0]/x.png",
    "https://127.0.0.1:{port}/files/x.png",
    "http://127.0.0.1:{port}/files/missing.png",
    "http://xn--a.com/x.png",  # an IDNA label that does not decode
    "http://127.0.0.1:99999/x.png",  # no such port
]


@pytest.fixture
def strict_gateway(gateway: Callable[..., str]) -> str:
    """The gateway as deployed: ALLOW_PRIVATE_URLS off."""
    return gateway(allow_private_urls=False)


def chat_edit(base: str, image_url: str) -> httpx.Response:
    return httpx.post(
        f"{base}/openai/v1/chat/completions",
        headers={"Authorization": f"Bearer {KEY}"},
        json={
            "model": "Qwen/Qwen-Image-Edit",
            "messages": [
                {
                    "role": "user",
                    "content": [
                        {"type": "text", "text": "make it blue"},
                        {"type": "image_url", "image_url": {"url": image_url}},
                    ],
                }
            ],
        },
        timeout=30,
    )


def images_edit(base: str, image_url: str) -> httpx.Response:
    return httpx.post(
        f"{base}/openai/v1/images/edits",
        headers={"Authorization": f"Bearer {KEY}"},
        data={"model": "Qwen/Qwen-Image-Edit", "prompt": "make it blue"},
        files={"image": (None, image_url)},  # a text part holding a URL
        timeout=30,
    )


@pytest.mark.parametrize("url", URLS)
@pytest.mark.parametrize("call", [chat_edit, images_edit], ids=["chat", "images-api"])
def test_private_urls_get_one_answer_and_nothing_is_fetched(
    url: str,
    call: Callable[[str, str], httpx.Response],
    strict_gateway: str,
    image_host: FakeImageHost,
    fake_openai: FakeOpenAIImages,
) -> None:
    port = image_host.url.rsplit(":", 1)[1]
    answer = call(strict_gateway, url.format(port=port))
    assert answer.status_code == 400
    assert answer.json() == REFUSED
    assert answer.headers["x-should-retry"] == "false"
    assert image_host.requests == []
    assert fake_openai.requests == []


def test_the_opt_in_lets_the_gateway_fetch_loopback(
    gateway: Callable[..., str], image_host: FakeImageHost, fake_openai: FakeOpenAIImages
) -> None:
    photo = make_png(20, 20)
    url = image_host.add("photo.png", photo)
    answer = chat_edit(gateway(allow_private_urls=True), url)
    assert answer.status_code == 200, answer.text
    assert image_host.requests == ["/files/photo.png"]
    (sent,) = fake_openai.requests
    assert [file[3] for file in sent["files"]] == [photo]


def test_a_redirect_from_a_fetched_url_is_checked_too(
    gateway: Callable[..., str], image_host: FakeImageHost, fake_openai: FakeOpenAIImages
) -> None:
    # Given the opt-in lets loopback through, a redirect to a non-http scheme is still refused
    answer = chat_edit(
        gateway(allow_private_urls=True), f"{image_host.url}/away?to=file:///etc/passwd"
    )
    assert answer.json() == REFUSED
    assert [path.split("?")[0] for path in image_host.requests] == ["/away"]
    assert fake_openai.requests == []
