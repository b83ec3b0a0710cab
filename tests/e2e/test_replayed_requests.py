"""A request that failed after its paid task started, sent again by the same caller with the same
body, is answered from that task, never by a new submission (README "Limits", docs/api.md
"Errors"; `imagegw.frontends.replays`): end to end against `make run`'s own server with the
official OpenAI SDK, the provider the fake ModelScope on loopback, whose task outlives the
gateway's deadline (GENERATION_TIMEOUT 3 s) and then finishes when the test says so (the fake's
clock moves on).
"""

from __future__ import annotations

import base64
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from e2e.test_gateway_keys import Local
from fakes.modelscope import FakeModelScope
from fakes.png import sniff_image
from fakes.server import ServerThread, SwappableApp
from local_run import serve_locally

pytestmark = pytest.mark.e2e
TOKEN = "ms-test-token"
OTHER_TOKEN = "ms-other-token"
MODEL = "Qwen/Qwen-Image"
#: longer than any test: a task runs until `finish` moves the fake's clock past its end
FOREVER = 3600.0


@pytest.fixture(scope="module")
def local(
    tmp_path_factory: pytest.TempPathFactory,
    _fake_ms_server: tuple[ServerThread, SwappableApp],
) -> Iterator[Local]:
    """`make run`'s server (mixed access: a client's own token, or a gateway key with the
    held tokens, the whole pool its share) with a 3-s generation deadline."""
    folder = tmp_path_factory.mktemp("replays")
    with serve_locally(
        folder,
        MODELSCOPE_BASE_URL=f"{_fake_ms_server[0].url}/v1",
        GENERATION_TIMEOUT="3",
        ACCESS_MODE="mixed",
        KEY_POOL_SHARE="1",
        SECRET_CACHE_TTL="0",
    ) as (url, log):
        yield Local(url, log, folder / "access.json")


@pytest.fixture
def fake(fake_ms: FakeModelScope) -> FakeModelScope:
    """The fake ModelScope, its tasks running until the test finishes them."""
    fake_ms.task_duration = FOREVER
    fake_ms.tokens |= {OTHER_TOKEN, "ms-pool-r1", "ms-pool-r2"}
    return fake_ms


def finish(fake: FakeModelScope) -> None:
    """Every task submitted so far ends now (as seen by the polls from now on)."""
    fake.clock = lambda: time.monotonic() + 2 * FOREVER


def sdk(local: Local, key: str = TOKEN) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{local.url}/v1", api_key=key, max_retries=0, timeout=60)


def generate(client: openai.OpenAI, prompt: str, response_format: str = "url") -> Any:
    """An Images API generation's raw answer (headers and parsed body)."""
    return client.images.with_raw_response.generate(
        model=MODEL,
        prompt=prompt,
        response_format=response_format,  # type: ignore[arg-type]
    )


def late(call: Callable[[], Any]) -> openai.APIStatusError:
    """The 504 that `call` gets at the deadline."""
    with pytest.raises(openai.APIStatusError) as failed:
        call()
    assert failed.value.status_code == 504, failed.value.response.text
    assert failed.value.code == "deadline_exceeded"
    assert failed.value.response.headers["x-should-retry"] == "false"
    return failed.value


def prompts(fake: FakeModelScope) -> list[str]:
    return [s["body"]["prompt"] for s in fake.submissions]


@pytest.mark.parametrize("response_format", ["url", "b64_json"])
def test_a_generation_that_outlived_the_deadline_is_answered_from_its_task_when_repeated(
    local: Local, fake: FakeModelScope, response_format: str
) -> None:
    # Given a generation that ran past the deadline: a 504 naming its task
    client = sdk(local)
    first = late(lambda: generate(client, f"a slow fox {response_format}", response_format))
    (task_id,) = fake.tasks
    assert task_id in first.message

    # When its task finishes and the client sends the same request again
    finish(fake)
    again = generate(client, f"a slow fox {response_format}", response_format)

    # Then it gets the normal answer, with the task's image, marked as a replay
    assert again.status_code == 200
    assert again.headers["x-gateway-replayed"] == "true"
    (item,) = again.parse().data
    if response_format == "url":
        assert item.b64_json is None and item.url and item.url.startswith(local.url)
        image = httpx.get(item.url, follow_redirects=True, timeout=10).content
    else:
        assert item.url is None and item.b64_json
        image = base64.b64decode(item.b64_json)
    assert sniff_image(image) == "png"
    # and the provider had one submission, polled again with the client's token
    assert prompts(fake) == [f"a slow fox {response_format}"]
    assert set(fake.poll_tokens) == {TOKEN}
    # and once answered, the same request is a new generation
    fake.task_duration = 0.0  # done at its first poll
    fresh = generate(client, f"a slow fox {response_format}", response_format)
    assert fresh.status_code == 200 and "x-gateway-replayed" not in fresh.headers
    assert len(fake.submissions) == 2


def test_a_chat_repeated_while_its_task_runs_gets_the_same_error_then_the_image(
    local: Local, fake: FakeModelScope
) -> None:
    # Given a chat completion that ran past the deadline
    client = sdk(local)
    messages: Any = [{"role": "user", "content": "a slow heron"}]
    first = late(lambda: client.chat.completions.create(model=MODEL, messages=messages))
    assert "x-gateway-replayed" not in first.response.headers

    # When the client sends it again while the task still runs
    still = late(lambda: client.chat.completions.create(model=MODEL, messages=messages))

    # Then it is the same kind of answer, from polling the task, marked as a replay
    assert still.response.headers["x-gateway-replayed"] == "true"
    polls = len(fake.polls)
    assert polls > 0

    # and once the task has finished, the next repeat gets the completion with its image
    finish(fake)
    done = client.chat.completions.with_raw_response.create(model=MODEL, messages=messages)
    assert done.headers["x-gateway-replayed"] == "true"
    content = done.parse().choices[0].message.content or ""
    assert content.startswith("![image 1](") and local.url in content
    assert prompts(fake) == ["a slow heron"]
    assert len(fake.polls) > polls


def test_another_caller_or_another_body_submits_anew(local: Local, fake: FakeModelScope) -> None:
    # Given a generation that ran past the deadline
    late(lambda: generate(sdk(local), "a slow owl"))

    # When another caller sends the same body, and the same caller another body
    late(lambda: generate(sdk(local, OTHER_TOKEN), "a slow owl"))
    late(lambda: generate(sdk(local), "a slow owl, at night"))

    # Then each is a generation of its own
    assert prompts(fake) == ["a slow owl", "a slow owl", "a slow owl, at night"]
    assert [s["token"] for s in fake.submissions] == [TOKEN, OTHER_TOKEN, TOKEN]


def test_a_gateway_keys_repeat_polls_with_the_held_token_that_started_it_and_counts_once(
    local: Local, fake: FakeModelScope
) -> None:
    # Given two held tokens used in turn, and a key with a daily quota of one image
    local.pool("ms-pool-r1", "ms-pool-r2")
    key = local.key("replayer", "--quota", "1")
    client = sdk(local, key)

    # When its generation runs past the deadline (the quota given back), then finishes and is
    # sent again (the repeat's own lease is the pool's next token)
    late(lambda: generate(client, "a slow badger"))
    (started,) = [s["token"] for s in fake.submissions]
    finish(fake)
    again = generate(client, "a slow badger")

    # Then the repeat gets the image, polling with the token that started the task
    assert again.status_code == 200 and again.headers["x-gateway-replayed"] == "true"
    assert len(again.parse().data) == 1
    assert set(fake.poll_tokens) == {started}
    # and the image counts once on the key's quota: the next generation is over it
    used = httpx.get(
        f"{local.url}/v1/usage", headers={"authorization": f"Bearer {key}"}, timeout=10
    ).json()
    assert used["today"]["images"] == 1 and used["month"]["images"] == 1
    with pytest.raises(openai.RateLimitError) as over:
        generate(client, "another badger")
    assert over.value.code == "quota_exceeded"
    assert len(fake.submissions) == 1
    # and no held token is in the server's log
    log = Path(local.log).read_text(errors="replace")
    assert "ms-pool-r1" not in log and "ms-pool-r2" not in log
