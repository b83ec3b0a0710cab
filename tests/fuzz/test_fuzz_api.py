"""Property-based fuzzing of the whole API, over real HTTP on loopback, as an attacker would.

Every endpoint gets hundreds of generated requests (chat streamed and not, for image models of
each provider and a chat model passed through; the Images API, JSON and multipart; async jobs
and their status; files, models, unknown paths and methods; every `/{provider}/v1` prefix),
biased towards the classes of issue 8: wrong types and values, NaN and Infinity tokens, lone
surrogates, deep nesting, broken JSON and multipart, huge and many tiny data URIs, image URLs at
loopback, private and metadata addresses in odd encodings, odd headers and paths, bodies that
never arrive whole. Every answer is checked against `fuzz.properties` by `World.exchange`;
endpoint-specific properties are checked here. The last test checks that at least 1,000
requests were sent.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path

import pytest
from hypothesis import Phase, given, settings
from hypothesis import strategies as st

from fakes.png import GIF_1x1
from fuzz.cases import (
    Case,
    Context,
    chat_case,
    edit_case,
    generation_case,
    job_case,
    path_case,
    reader_case,
)
from fuzz.config import FUZZ, FUZZ_KEY, SURVEY, examples
from fuzz.hostile import LOOPBACK_HOSTS, MALFORMED_HOSTS, PRIVATE_HOSTS, b64
from fuzz.seeds import SEEDS, Seed
from fuzz.wire import RawRequest
from fuzz.world import Tally, World

pytestmark = pytest.mark.fuzz
MINIMUM_REQUESTS = 1000
#: the tests whose requests hypothesis generates
GENERATED = (
    "test_chat_completions",
    "test_images_generations",
    "test_images_edits",
    "test_models_files_paths_and_methods",
    "test_async_jobs",
    "test_bodies_that_never_arrive_whole",
)
_JOB_IN_LOCATION = re.compile(r"/v1/jobs/(job-[0-9a-f]{32})$")


@settings(FUZZ, max_examples=examples(220))
@given(data=st.data())
def test_chat_completions(world: World, ctx: Context, data: st.DataObject) -> None:
    world.exchange(data.draw(chat_case(ctx), label="case"))


@settings(FUZZ, max_examples=examples(170))
@given(data=st.data())
def test_images_generations(world: World, ctx: Context, data: st.DataObject) -> None:
    world.exchange(data.draw(generation_case(ctx), label="case"))


@settings(FUZZ, max_examples=examples(170))
@given(data=st.data())
def test_images_edits(world: World, ctx: Context, data: st.DataObject) -> None:
    world.exchange(data.draw(edit_case(ctx), label="case"))


@settings(FUZZ, max_examples=examples(220))
@given(data=st.data())
def test_models_files_paths_and_methods(world: World, ctx: Context, data: st.DataObject) -> None:
    world.exchange(data.draw(path_case(ctx), label="case"))


@pytest.mark.parametrize("seed", SEEDS, ids=[seed.name for seed in SEEDS])
def test_known_members_of_each_class(world: World, ctx: Context, seed: Seed) -> None:
    """The seeds: a known member of each class of issue 8 on each path it can take."""
    world.exchange(seed.build(ctx))


#: issue 24's seeds and the answer each must get (status, error code)
CLASS_ANSWERS = {
    "per-model-quota": (429, "rate_limit_exceeded"),
    "short-read-timeout": (400, "client_timeout_too_short"),
    "lying-image-chat-0": (400, "image_dimensions_too_large"),
    "lying-image-chat-1": (400, "image_dimensions_too_large"),
    "lying-image-chat-2": (400, "invalid_image"),
    "lying-image-chat-3": (400, "invalid_image"),
    "lying-image-edit-0": (400, "image_dimensions_too_large"),
    "lying-image-edit-2": (400, "invalid_image"),
    "moderated-task": (400, "content_policy_violation"),
}


@pytest.mark.parametrize("name", sorted(CLASS_ANSWERS))
def test_issue_24_seeds_get_the_answer_of_their_class(
    world: World, ctx: Context, name: str
) -> None:
    """The seeds of issue 24's classes: not only no 5xx, the answer the class calls for (and
    for images refused for what they are, nothing stored)."""
    (seed,) = [seed for seed in SEEDS if seed.name == name]
    case = seed.build(ctx)
    before = world.uploads.count
    answer = world.exchange(case)
    status, code = CLASS_ANSWERS[name]
    got = (answer.status, json.loads(answer.body)["error"]["code"]) if answer else None
    world.require(got == (status, code), "issue-24", f"{name}: {got}", case.request)
    assert got == (status, code)
    if status == 400:
        assert world.uploads.count == before


def _auth(token: str | None) -> tuple[tuple[bytes, bytes], ...]:
    return () if token is None else ((b"authorization", f"Bearer {token}".encode()),)


@settings(FUZZ, max_examples=examples(100))
@given(data=st.data())
def test_async_jobs(world: World, ctx: Context, data: st.DataObject) -> None:
    case: Case = data.draw(job_case(ctx), label="case")
    accepted = world.exchange(case)
    if accepted is None or accepted.status != 202:
        return
    location = accepted.header("location") or ""
    match = _JOB_IN_LOCATION.search(location)
    world.require(match is not None, "jobs", f"202 with Location {location!r}", case.request)
    assert match is not None
    job_id = match.group(1)
    prefix = case.request.target.split("/v1/")[0]
    status = f"{prefix}/v1/jobs/{job_id}"
    idempotency = case.request.header("idempotency-key")
    # the submitter's own Authorization header, as sent (it may hold a key the fuzz bent)
    submitter = tuple((k, v) for k, v in case.request.headers if k.lower() == b"authorization")
    for step in case.extra["follow"]:
        if step in ("poll", "poll-prefix"):
            path = status if step == "poll" else f"/openai/v1/jobs/{job_id}"
            request = RawRequest("GET", path, submitter)
            answer = world.exchange(case, request)
            if answer is None:
                continue
            body = json.loads(answer.body) if answer.status == 200 else {}
            world.require(
                answer.status == 200
                and body.get("id") == job_id
                and body.get("status") in ("queued", "in_progress", "succeeded", "failed"),
                "jobs",
                f"its submitter polls the job: {answer.status} {answer.body[:300]!r}",
                request,
            )
        elif step in ("poll-other-key", "poll-no-key"):
            token = "sk-stranger-000000000000000000" if step == "poll-other-key" else None
            request = RawRequest("GET", status, _auth(token))
            answer = world.exchange(case, request)
            wanted = 404 if token else 401
            world.require(
                answer is not None and answer.status == wanted,
                "jobs",
                f"a stranger reads the job: {answer and answer.status}, wanted {wanted}",
                request,
            )
        elif step in ("resubmit", "resubmit-changed"):
            body = case.request.body
            changed = False
            if step == "resubmit-changed":
                try:
                    parsed = json.loads(body)
                except ValueError:
                    parsed = None
                if isinstance(parsed, dict) and isinstance(parsed.get("prompt"), str):
                    parsed["prompt"] += " and a different request"
                    body, changed = json.dumps(parsed).encode(), True
            request = RawRequest(
                case.request.method, case.request.target, case.request.headers, body
            )
            answer = world.exchange(case, request)
            if answer is None or idempotency is None:
                continue
            if changed:
                world.require(
                    answer.status == 409,
                    "jobs",
                    f"the same Idempotency-Key for another request: {answer.status}",
                    request,
                )
            elif answer.status == 202:
                again = json.loads(answer.body).get("id")
                world.require(
                    again == job_id,
                    "jobs",
                    f"a retried submission started another job: {again} != {job_id}",
                    request,
                )
        else:
            request = RawRequest("GET", f"{prefix}/v1/jobs/{case.extra['odd_id']}", _auth(FUZZ_KEY))
            world.exchange(case, request)


#: (route, how the URL is sent) of the sweep: the OpenAI-compatible provider is the one whose
#: images the gateway downloads itself; ModelScope and SiliconFlow fetch URLs themselves
SWEEP = (
    ("/openai", "chat"),
    ("/openai", "edit-field"),
    ("/openai", "chat-edit-model"),
    ("/modelscope", "chat-edit-model"),
    ("/siliconflow", "edit-field"),
)


@pytest.mark.parametrize(("route", "how"), SWEEP)
def test_client_image_urls_are_refused_alike(
    world: World, ctx: Context, route: str, how: str
) -> None:
    """Every loopback, private and metadata address in every encoding, as an image URL: the
    gateway never connects to it (the tripwire watches), and where the gateway would be the
    one to fetch it, the answer does not tell an open port from a closed one."""
    for index, host in enumerate(LOOPBACK_HOSTS + PRIVATE_HOSTS):
        for path in (("/image.png", "/latest/meta-data/")[index % 2],):
            answers = []
            ports = (
                (ctx.urls.canary_port, ctx.urls.closed_port)
                if route == "/openai"
                else (ctx.urls.canary_port,)
            )
            for port in ports:
                named = host.startswith(("metadata", "instance"))
                url = f"http://{host}{path}" if named else f"http://{host}:{port}{path}"
                request = _image_url_request(how, route, url)
                answer = world.exchange(Case(request, route.strip("/")), request)
                if answer is not None:
                    body = answer.body.replace(url.encode(), b"<url>")
                    answers.append((answer.status, body.replace(str(port).encode(), b"<port>")))
            if len(answers) == 2:
                (open_status, open_body), (closed_status, closed_body) = answers
                world.require(
                    open_status == closed_status and open_body == closed_body,
                    "ssrf",
                    f"an open port answers {open_status} {open_body[:300]!r}, "
                    f"a closed one {closed_status} {closed_body[:300]!r}",
                    request,
                )


#: the gateway's one answer to an image URL it does not fetch (OpenAI-compatible: it fetches)
_NOT_FETCHED = b"Input image 1 could not be downloaded from its URL."


@pytest.mark.parametrize(("route", "how"), SWEEP)
def test_malformed_image_urls_are_refused_like_any_other(
    world: World, ctx: Context, route: str, how: str
) -> None:
    """Every host no parser takes (issue 24, class 3), as an image URL: never a 5xx or a reset
    connection (the world's properties), and where the gateway is the one to fetch it, the one
    refusal every unfetchable URL gets."""
    for host in MALFORMED_HOSTS:
        for url in (f"http://{host}/image.png", f"https://{host}/x.png?sig=1"):
            request = _image_url_request(how, route, url)
            answer = world.exchange(Case(request, route.strip("/")), request)
            if route == "/openai" and answer is not None:
                world.require(
                    answer.status == 400 and _NOT_FETCHED in answer.body,
                    "malformed-url",
                    f"{url!r} answered {answer.status} {answer.body[:300]!r}",
                    request,
                )


def _image_url_request(how: str, route: str, url: str) -> RawRequest:
    auth = _auth(FUZZ_KEY)
    if how == "edit-field":
        boundary = b"fuzzb"
        parts = (
            (b"prompt", b"make it blue"),
            (b"image", url.encode()),
            (b"model", b"Qwen/Qwen-Image-Edit"),
        )
        field = b'--fuzzb\r\nContent-Disposition: form-data; name="%s"\r\n\r\n%s\r\n'
        body = b"".join(field % part for part in parts) + b"--fuzzb--\r\n"
        head = (*auth, (b"content-type", b"multipart/form-data; boundary=" + boundary))
        return RawRequest("POST", f"{route}/v1/images/edits", head, body)
    model = "Qwen/Qwen-Image-Edit" if how == "chat-edit-model" else "Qwen/Qwen-Image"
    content = [
        {"type": "text", "text": "make it blue"},
        {"type": "image_url", "image_url": {"url": url}},
    ]
    if how == "chat":  # OpenAI-compatible servers take an image with any model
        model = "Qwen/Qwen-Image" if route == "/openai" else "Qwen/Qwen-Image-Edit"
    body = json.dumps({"model": model, "messages": [{"role": "user", "content": content}]})
    head = (*auth, (b"content-type", b"application/json"))
    return RawRequest("POST", f"{route}/v1/chat/completions", head, body.encode())


@settings(FUZZ, max_examples=examples(6), phases=[Phase.explicit, Phase.generate])
@given(data=st.data())
def test_bodies_that_never_arrive_whole(world: World, ctx: Context, data: st.DataObject) -> None:
    """A client that gives up while sending, or sends less than it declared: no traceback, no
    500 logged, and the slow one gets an answer once BODY_TIMEOUT has passed (not shrunk: each
    example of a hang costs the client's whole timeout)."""
    world.exchange(data.draw(reader_case(ctx), label="case"))


def test_many_tiny_images_with_a_bad_key_store_nothing(world: World) -> None:
    """Issue 8, class 2, as it was found: thousands of tiny data URIs and a key no provider
    takes."""
    tiny = f"data:image/gif;base64,{b64(GIF_1x1)}"
    content = [{"type": "text", "text": "edit"}] + [
        {"type": "image_url", "image_url": {"url": tiny}} for _ in range(300)
    ]
    body = json.dumps(
        {"model": "Qwen/Qwen-Image-Edit-2509", "messages": [{"role": "user", "content": content}]}
    ).encode()
    for key in ("sk-wrong-key-but-printable-000", "\xe9\xe8-not-ascii"):
        head = (
            (b"authorization", b"Bearer " + key.encode("latin-1")),
            (b"content-type", b"application/json"),
        )
        request = RawRequest("POST", "/modelscope/v1/chat/completions", head, body)
        before = world.uploads.count
        answer = world.exchange(Case(request, "modelscope"), request)
        world.require(
            answer is not None and 400 <= answer.status < 500 and world.uploads.count == before,
            "stored-for-refused",
            f"{answer and answer.status}: {world.uploads.count - before} uploads for a refused key",
            request,
        )


def test_zz_fuzz_sent_at_least_1000_requests(tally: Tally) -> None:
    """The fuzz's size: at least 1,000 requests generated by hypothesis across the endpoints,
    besides the seeds and the address sweep (this test runs last: it is defined last)."""
    if SURVEY:
        _write_survey(tally, Path(SURVEY))
    tests = {
        name
        for name in globals()
        if name.startswith("test_") and name != "test_zz_fuzz_sent_at_least_1000_requests"
    }
    by_test: Counter[str] = Counter()
    for name, count in tally.by_test.items():
        by_test[name.split("[")[0]] += count
    if not tests <= set(by_test):
        pytest.skip(f"only part of the fuzz ran ({sorted(by_test)}): the total is not meaningful")
    generated = sum(by_test[name] for name in GENERATED)
    counts = ", ".join(f"{name} {count}" for name, count in sorted(by_test.items()))
    print(f"\nfuzz: {tally.requests} requests, {generated} of them generated ({counts})")
    assert generated >= MINIMUM_REQUESTS, counts


def _write_survey(tally: Tally, path: Path) -> None:
    """Every broken property, one example per distinct cause, and what the fuzz reached."""
    lines = [f"# fuzz survey: {tally.requests} requests", ""]
    for test, seconds in tally.seconds.most_common():
        lines.append(f"- {test}: {tally.by_test[test]} requests in {seconds:.1f} s")
    for (test, status), count in sorted(tally.statuses.items()):
        lines.append(f"- {test} {status}: {count}")
    lines.append("")
    for prop, seen in sorted(tally.problems.items()):
        lines.append(f"## {prop}: {len(seen)}")
        distinct: dict[str, tuple[str, str]] = {}
        for detail, request in seen:
            head = detail.split(": ", 1)[0]
            key = head if "_in_" in head else re.sub(r"[0-9a-f]{6,}|\d+", "N", detail)[:160]
            distinct.setdefault(key, (detail, request))
        for detail, request in distinct.values():
            lines += ["", f"### {detail[:400]}", "```", request, "```"]
        lines.append("")
    for (test, message), count in tally.messages.most_common(120):
        lines.append(f"- {count} {test}: {message}")
    lines.append("")
    for seconds, request in tally.slowest:
        lines += [f"slow {seconds:.2f} s:", request, ""]
    path.write_text("\n".join(lines))
