"""End to end, once for each task-style provider (DashScope, Volcengine Ark, Black Forest Labs,
Replicate, fal): the official `openai` SDK (and plain HTTP for durable jobs) drives `make run`'s
own server (`tests/local_run.py`) over HTTP against the provider's fake on loopback.

Each fake answers on three loopback servers standing for three hosts of the provider: its API
(the base URL), another API host where it points polling URLs (BFL's `api.us1.bfl.ai`; named in
the provider's `*_HOSTS` setting), and the host of its result links. The fakes record every
request with the host it reached, so the tests see where each key went.
"""

from __future__ import annotations

import base64
import json
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import openai
import pytest

from e2e.test_gateway_keys import Local
from fakes.ark import TOKEN as ARK_KEY
from fakes.ark import FakeArk
from fakes.bfl import TOKEN as BFL_KEY
from fakes.bfl import FakeBFL
from fakes.dashscope import INSPECTION, FakeDashScope
from fakes.dashscope import TOKEN as DASHSCOPE_KEY
from fakes.fal import TOKEN as FAL_KEY
from fakes.fal import FakeFal
from fakes.png import make_png, png_size, sniff_image
from fakes.replicate import TOKEN as REPLICATE_KEY
from fakes.replicate import FakeReplicate
from fakes.server import ServerThread, SwappableApp
from fakes.task_hosts import TaskHostsFake
from local_run import serve_locally

pytestmark = pytest.mark.e2e
IMAGE_LINE = re.compile(r"^!\[[^\]]*\]\((\S+)\)$")


@dataclass(frozen=True)
class Case:
    """One provider as these tests drive it."""

    name: str
    fake: type[TaskHostsFake]
    #: the base URL's path on the fake's API host
    path: str
    key: str
    #: the request header that carries the key, and its value
    header: str
    credential: str
    generate: str
    edit: str
    #: whether the provider polls at a URL it returns (the fake's other host)
    follows: bool
    #: the provider's words in a moderation refusal
    moderation: str

    @property
    def base_env(self) -> str:
        return f"{self.name.upper()}_BASE_URL"


CASES = [
    Case(
        "dashscope", FakeDashScope, "/api/v1", DASHSCOPE_KEY, "authorization",
        f"Bearer {DASHSCOPE_KEY}", "wan2.2-t2i-flash", "wanx2.1-imageedit", False, INSPECTION,
    ),
    Case(
        "ark", FakeArk, "/api/v3", ARK_KEY, "authorization", f"Bearer {ARK_KEY}",
        "doubao-seedream-4-0-250828", "doubao-seededit-3-0-i2i-250628", False,
        "sensitive information",
    ),
    Case(
        "bfl", FakeBFL, "/v1", BFL_KEY, "x-key", BFL_KEY, "flux-pro-1.1", "flux-kontext-pro",
        True, "content moderated",
    ),
    Case(
        "replicate", FakeReplicate, "/v1", REPLICATE_KEY, "authorization",
        f"Bearer {REPLICATE_KEY}", "black-forest-labs/flux-schnell",
        "black-forest-labs/flux-kontext-pro", True, "NSFW content detected",
    ),
    Case(
        "fal", FakeFal, "", FAL_KEY, "authorization", f"Key {FAL_KEY}", "fal-ai/flux/dev",
        "fal-ai/flux-pro/kontext", True, "flagged by a content checker",
    ),
]  # fmt: skip
THROTTLING = {"bfl": "5", "replicate": "7", "fal": "3"}


@dataclass
class Hosts:
    api: ServerThread
    poll: ServerThread
    cdn: ServerThread
    app: SwappableApp

    def netloc(self, server: ServerThread) -> str:
        return f"{server.host}:{server.port}"


@pytest.fixture(scope="module")
def provider_hosts() -> Iterator[dict[str, Hosts]]:
    """Three loopback servers a provider, one swappable fake app on all three."""
    found: dict[str, Hosts] = {}
    try:
        for case in CASES:
            app = SwappableApp()
            servers = [ServerThread(app).start() for _ in range(3)]
            found[case.name] = Hosts(*servers, app=app)
        yield found
    finally:
        for hosts in found.values():
            for server in (hosts.api, hosts.poll, hosts.cdn):
                server.stop()


@pytest.fixture(scope="module")
def local_server(
    tmp_path_factory: pytest.TempPathFactory, provider_hosts: dict[str, Hosts]
) -> Iterator[str]:
    """`make run`'s server pointed at the five fakes; each provider's other API host named in
    its `*_HOSTS` setting (BFL, Replicate, fal)."""
    env = {}
    for case in CASES:
        hosts = provider_hosts[case.name]
        env[case.base_env] = f"{hosts.api.url}{case.path}"
        if case.follows:
            env[f"{case.name.upper()}_HOSTS"] = hosts.netloc(hosts.poll)
    with serve_locally(
        tmp_path_factory.mktemp("providers"),
        JOB_POLL_INTERVAL="0",
        POLL_INTERVAL="0.05",
        POLL_INTERVAL_MAX="0.2",
        # the fakes' result hosts are on loopback, which the guarded fetcher refuses otherwise
        ALLOW_PRIVATE_URLS="true",
        POWERTOOLS_LOG_LEVEL="WARNING",
        **env,
    ) as (url, _):
        yield url


@pytest.fixture(params=CASES, ids=[case.name for case in CASES])
def case(request: pytest.FixtureRequest) -> Case:
    found: Case = request.param
    return found


@pytest.fixture
def fake(case: Case, provider_hosts: dict[str, Hosts]) -> TaskHostsFake:
    """A fresh fake of the case's provider on its three hosts."""
    hosts = provider_hosts[case.name]
    made = case.fake()
    made.api_url, made.poll_url, made.cdn_url = hosts.api.url, hosts.poll.url, hosts.cdn.url
    hosts.app.app = made
    return made


def sdk(base: str, case: Case, key: str | None = None) -> openai.OpenAI:
    return openai.OpenAI(
        base_url=f"{base}/{case.name}/v1", api_key=key or case.key, max_retries=0, timeout=60
    )


def image_urls(content: str | None) -> list[str]:
    assert content is not None
    return [m.group(1) for line in content.splitlines() if (m := IMAGE_LINE.match(line))]


def picture(url: str, base: str) -> bytes:
    """The PNG behind a gateway link (a lasting /v1/files/ link)."""
    assert url.startswith(f"{base}/v1/files/"), url
    answer = httpx.get(url, follow_redirects=True, timeout=30)
    assert answer.status_code == 200
    assert sniff_image(answer.content) == "png"
    return answer.content


def test_streamed_chat_links_a_png(local_server: str, case: Case, fake: TaskHostsFake) -> None:
    # Given the provider's text-to-image model in a streamed chat
    stream = sdk(local_server, case).chat.completions.create(
        model=case.generate,
        messages=[{"role": "user", "content": "a lighthouse at dusk"}],
        stream=True,
    )
    chunks = list(stream)
    # Then the stream ends with one lasting link that serves a PNG
    content = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    (url,) = image_urls(content)
    picture(url, local_server)
    assert chunks[-1].choices[0].finish_reason == "stop"
    assert len(fake.submissions()) == 1


@pytest.mark.parametrize("case", [c for c in CASES if c.name in ("bfl", "fal")], indirect=True,
                         ids=["bfl", "fal"])  # fmt: skip
def test_the_thinking_block_shows_the_providers_own_progress(
    local_server: str, case: Case, fake: TaskHostsFake
) -> None:
    # Given a task that is queued, then runs, then ends
    fake.polls_to_finish = 3
    stream = sdk(local_server, case).chat.completions.create(
        model=case.generate, messages=[{"role": "user", "content": "a harbour"}], stream=True
    )
    reasoning = "".join(
        getattr(c.choices[0].delta, "reasoning_content", None) or "" for c in stream if c.choices
    )
    # Then the progress lines carry the provider's own words: fal's queue position, BFL's percent
    words = {"fal": "queued at fal (position 2 in the queue)", "bfl": "generating (50 %)"}
    assert words[case.name] in reasoning, reasoning


#: where provider-wire.md says each provider's task is polled: its API's `/tasks/{id}`
#: (DashScope), or the URL its submission answered (BFL's `polling_url`, Replicate's `urls.get`,
#: fal's `status_url`), on the fakes' hosts
POLLED = {
    "dashscope": "{api}/api/v1/tasks/{task}",
    "bfl": "{poll}/v1/get_result?id={task}",
    "replicate": "{poll}/v1/predictions/{task}",
    "fal": "{poll}/fal-ai/flux/requests/{task}/status",
}


@pytest.mark.parametrize("case", [c for c in CASES if c.name in POLLED], indirect=True,
                         ids=list(POLLED))  # fmt: skip
def test_every_poll_of_a_task_is_the_request_the_wire_doc_says(
    local_server: str, case: Case, fake: TaskHostsFake
) -> None:
    # Given a task that ends at its fourth poll
    fake.polls_to_finish = 4
    # When a client asks for a picture
    answer = sdk(local_server, case).chat.completions.create(
        model=case.generate, messages=[{"role": "user", "content": "a kite over dunes"}]
    )
    assert len(image_urls(answer.choices[0].message.content)) == 1
    # Then each of the four polls was a GET of the task's own URL carrying the provider's key
    # in its own header, and every poll the very same request
    (task,) = fake.tasks
    url = POLLED[case.name].format(api=fake.api_url, poll=fake.poll_url, task=task)
    polls = [r for r in fake.requests if r["method"] == "GET" and r["url"] == url]
    assert len(polls) == 4, [(r["method"], r["url"]) for r in fake.requests]
    assert polls[0]["headers"][case.header] == case.credential
    assert all(poll["headers"] == polls[0]["headers"] for poll in polls[1:])


def test_two_images_of_the_asked_shape(local_server: str, case: Case, fake: TaskHostsFake) -> None:
    # When a client asks the Images API for two 1024x768 pictures
    answer = sdk(local_server, case).images.generate(
        model=case.generate, prompt="a red fox in snow", size="1024x768", n=2
    )
    # Then it gets two, each 4:3 (the provider's own size for that shape)
    assert answer.data is not None and len(answer.data) == 2
    for item in answer.data:
        assert item.url is not None
        width, height = png_size(picture(item.url, local_server))
        assert abs(width / height - 4 / 3) < 0.03, (width, height)


def test_an_edit_hands_the_picture_to_the_provider(
    local_server: str, case: Case, fake: TaskHostsFake
) -> None:
    # Given a photo to edit, sent as the SDK sends it (multipart)
    photo = make_png(96, 64, (30, 160, 60))
    answer = sdk(local_server, case).images.edit(
        model=case.edit, image=("photo.png", photo, "image/png"), prompt="make it night"
    )
    # Then the provider got the very picture (inline or by a URL it fetched), and the edit
    # came back as a lasting link
    assert fake.inputs == [[photo]]
    assert answer.data is not None
    (item,) = answer.data
    assert item.url is not None
    picture(item.url, local_server)


def test_a_failed_task_gives_the_providers_reason(
    local_server: str, case: Case, fake: TaskHostsFake
) -> None:
    fake.fail_next("GPU worker lost during sampling (fake)")
    with pytest.raises(openai.APIStatusError) as caught:
        sdk(local_server, case).chat.completions.create(
            model=case.generate, messages=[{"role": "user", "content": "a kite"}]
        )
    # Then the client reads the provider's reason, told not to re-run a paid generation
    assert caught.value.status_code == 502
    assert "GPU worker lost during sampling (fake)" in caught.value.message
    assert caught.value.response.headers["x-should-retry"] == "false"


def test_a_moderation_refusal_is_a_400(local_server: str, case: Case, fake: TaskHostsFake) -> None:
    fake.moderate_next()
    with pytest.raises(openai.BadRequestError) as caught:
        sdk(local_server, case).images.generate(model=case.generate, prompt="something flagged")
    body = caught.value.body
    assert isinstance(body, dict)
    assert body["code"] == "content_policy_violation"
    assert case.moderation.lower() in body["message"].lower()


def test_a_bad_key_is_a_401_without_the_key(
    local_server: str, case: Case, fake: TaskHostsFake
) -> None:
    wrong = "wrong-key-7f3a9c1e5b2d"
    with pytest.raises(openai.AuthenticationError) as caught:
        sdk(local_server, case, key=wrong).images.generate(model=case.generate, prompt="x")
    assert wrong not in json.dumps(caught.value.body)
    assert wrong[:8] not in caught.value.message


@pytest.mark.parametrize("case", [c for c in CASES if c.name in THROTTLING], indirect=True,
                         ids=[c.name for c in CASES if c.name in THROTTLING])  # fmt: skip
def test_a_rate_limit_is_a_429_with_retry_after(local_server: str, case: Case, fake: Any) -> None:
    fake.throttle_next = True
    with pytest.raises(openai.RateLimitError) as caught:
        sdk(local_server, case).images.generate(model=case.generate, prompt="x")
    assert caught.value.response.headers["retry-after"] == THROTTLING[case.name]


def test_the_key_goes_in_the_providers_scheme_and_only_to_its_hosts(
    local_server: str, case: Case, fake: TaskHostsFake, provider_hosts: dict[str, Hosts]
) -> None:
    # When a picture is made (submitted, polled, fetched)
    answer = sdk(local_server, case).images.generate(model=case.generate, prompt="a boat")
    assert answer.data is not None and answer.data[0].url is not None
    # Then the API host (and the polling host) got the key in the provider's own header, and
    # the host of the result links got no credential at all
    hosts = provider_hosts[case.name]
    sent = fake.credentials_by_host(case.header)
    assert sent.pop(hosts.netloc(hosts.api)) == {case.credential}
    if case.follows:
        assert sent.pop(hosts.netloc(hosts.poll)) == {case.credential}
    assert sent == {hosts.netloc(hosts.cdn): set()}
    everywhere = json.dumps([r["headers"] for r in fake.requests if "/results/" in r["path"]])
    assert case.key not in everywhere


@pytest.mark.parametrize("case", [c for c in CASES if c.follows], indirect=True,
                         ids=[c.name for c in CASES if c.follows])  # fmt: skip
def test_a_polling_url_on_a_foreign_host_is_not_followed(
    local_server: str, case: Case, fake: TaskHostsFake, provider_hosts: dict[str, Hosts]
) -> None:
    # Given a provider answer pointing its polling URL at a host that is not its own
    hosts = provider_hosts[case.name]
    fake.poll_url = hosts.cdn.url
    with pytest.raises(openai.APIStatusError) as caught:
        sdk(local_server, case).images.generate(model=case.generate, prompt="a boat")
    # Then the gateway refuses it and the key never reaches that host
    assert "not its own" in caught.value.message
    assert fake.credentials_by_host(case.header).get(hosts.netloc(hosts.cdn), set()) == set()


def test_a_durable_job_ends_with_lasting_links(
    local_server: str, case: Case, fake: TaskHostsFake
) -> None:
    # Given a task the provider takes a few polls over
    fake.polls_to_finish = 3
    # When a client submits a job for two pictures and polls it
    accepted = httpx.post(
        f"{local_server}/{case.name}/v1/images/generations",
        json={"model": case.generate, "prompt": "a castle", "n": 2},
        headers={"prefer": "respond-async", "authorization": f"Bearer {case.key}"},
        timeout=30,
    )
    assert accepted.status_code == 202, accepted.text
    location = accepted.headers["location"]
    deadline, job = time.monotonic() + 60, accepted.json()
    while job["status"] not in ("succeeded", "failed") and time.monotonic() < deadline:
        time.sleep(0.2)
        job = httpx.get(
            location, headers={"authorization": f"Bearer {case.key}"}, timeout=30
        ).json()
    # Then it succeeded with two lasting links to PNGs
    assert job["status"] == "succeeded", job
    assert len(job["data"]) == 2
    for item in job["data"]:
        picture(item["url"], local_server)


def test_the_catalogue_is_listed(local_server: str, case: Case, fake: TaskHostsFake) -> None:
    ids = [m.id for m in sdk(local_server, case).models.list().data]
    assert case.generate in ids and case.edit in ids


def test_a_gateway_key_pool_fails_over_per_provider(
    tmp_path_factory: pytest.TempPathFactory, provider_hosts: dict[str, Hosts]
) -> None:
    # Given a deployment in keys mode whose BFL pool holds a token BFL refuses, then a good one
    bfl = next(case for case in CASES if case.name == "bfl")
    hosts = provider_hosts["bfl"]
    made = FakeBFL()
    made.tokens = {"bfl-pool-good"}
    made.api_url, made.poll_url, made.cdn_url = hosts.api.url, hosts.poll.url, hosts.cdn.url
    hosts.app.app = made
    folder = tmp_path_factory.mktemp("bfl-keys")
    with serve_locally(
        folder,
        BFL_BASE_URL=f"{hosts.api.url}/v1",
        BFL_HOSTS=hosts.netloc(hosts.poll),
        ALLOW_PRIVATE_URLS="true",
        ACCESS_MODE="keys",
        # the whole pool is the key's to spend (its share of it is tested in test_access.py),
        # so the order of the tokens, not the key's hash, says which is tried first
        KEY_POOL_SHARE="1",
        JOB_POLL_INTERVAL="0",
        POLL_INTERVAL="0.05",
        POLL_INTERVAL_MAX="0.2",
        SECRET_CACHE_TTL="0",
    ) as (url, log):
        local = Local(url, log, folder / "access.json")
        local.admin("token", "bfl", "bfl-pool-refused")
        local.admin("token", "bfl", "bfl-pool-good")
        key = local.key("dana")

        # When a client with a gateway key asks BFL for pictures, twice
        for prompt in ("first", "second"):
            answer = sdk(url, bfl, key=key).images.generate(model=bfl.generate, prompt=prompt)
            assert answer.data is not None and answer.data[0].url is not None

    # Then the refused token was tried once and set aside; the good one made both pictures;
    # the gateway key itself never reached BFL
    keys = [r["headers"].get("x-key") for r in made.submissions()]
    assert keys.count("bfl-pool-refused") == 1
    assert keys.count("bfl-pool-good") == 2
    assert all(key not in json.dumps(r["headers"]) for r in made.requests)


def test_a_chat_job_answers_a_completion_with_links(
    local_server: str, case: Case, fake: TaskHostsFake
) -> None:
    # When a chat request prefers an async answer
    raw = sdk(local_server, case).chat.completions.with_raw_response.create(
        model=case.generate,
        messages=[{"role": "user", "content": "a windmill --ar 16:9"}],
        extra_headers={"Prefer": "respond-async"},
    )
    assert raw.status_code == 202
    location = raw.headers["location"]
    deadline, job = time.monotonic() + 60, raw.http_response.json()
    while job["status"] not in ("succeeded", "failed") and time.monotonic() < deadline:
        time.sleep(0.2)
        job = httpx.get(
            location, headers={"authorization": f"Bearer {case.key}"}, timeout=30
        ).json()
    # Then the job is a chat completion whose one link serves a 16:9 picture
    assert job["status"] == "succeeded", job
    (url,) = image_urls(job["choices"][0]["message"]["content"])
    width, height = png_size(picture(url, local_server))
    assert abs(width / height - 16 / 9) < 0.05, (width, height)


def test_b64_json_as_asked_and_links_outliving_the_providers(
    local_server: str, case: Case, fake: TaskHostsFake
) -> None:
    client = sdk(local_server, case)
    # When one client asks for the bytes and another for a link
    inline = client.images.generate(
        model=case.generate, prompt="a tulip", response_format="b64_json"
    )
    linked = client.images.generate(model=case.generate, prompt="a tulip")
    assert inline.data is not None and linked.data is not None
    (data,) = inline.data
    assert data.url is None and data.b64_json is not None
    assert sniff_image(base64.b64decode(data.b64_json)) == "png"
    (item,) = linked.data
    assert item.b64_json is None and item.url is not None
    # Then once the provider's own links have expired (BFL's after 10 minutes), the gateway's
    # link still serves the picture: it was copied when the task ended
    fake.expire_files = True
    picture(item.url, local_server)


def test_seedream_takes_several_references(
    local_server: str, provider_hosts: dict[str, Hosts]
) -> None:
    # Given Seedream 4 on Ark and two pictures attached to one chat message
    case = next(c for c in CASES if c.name == "ark")
    hosts = provider_hosts["ark"]
    fake = FakeArk()
    fake.api_url, fake.poll_url, fake.cdn_url = hosts.api.url, hosts.poll.url, hosts.cdn.url
    hosts.app.app = fake
    first, second = make_png(64, 48, (200, 10, 10)), make_png(48, 64, (10, 10, 200))
    parts: Any = [{"type": "text", "text": "the cat of picture 1 in the room of picture 2"}]
    parts += [
        {"type": "image_url", "image_url": {"url": "data:image/png;base64," + b64(png)}}
        for png in (first, second)
    ]
    answer = sdk(local_server, case).chat.completions.create(
        model=case.generate, messages=[{"role": "user", "content": parts}]
    )
    # Then Ark got both, in order, as a list of references, and the picture came back
    assert fake.inputs == [[first, second]]
    (sent,) = fake.submissions()
    assert isinstance(sent["body"]["image"], list) and len(sent["body"]["image"]) == 2
    (url,) = image_urls(answer.choices[0].message.content)
    picture(url, local_server)


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()
