"""The world the fuzz runs in: the gateway served over real HTTP with the fake providers, the
instruments of `fuzz.instruments` watching it, and `World.exchange`: one request, with every
property of `fuzz.properties` checked on its answer, its log lines and its connections."""

from __future__ import annotations

import base64
import json
import os
import re
import time
from collections import Counter
from dataclasses import dataclass, field, replace
from typing import Any

import httpx

from fakes.modelscope import FakeModelScope
from fakes.openai_images import FakeOpenAIImages
from fakes.siliconflow import FakeSiliconFlow
from fuzz.cases import Case, Fault
from fuzz.instruments import CANARY_SECRET, Canary, LogCapture, Quiescence, Tripwire
from fuzz.properties import (
    KEYED,
    Problem,
    check_answer,
    check_leak,
    check_logs,
    is_protocol_refusal,
    key_windows,
    unshapely_key,
)
from fuzz.standins import FuzzRunner
from fuzz.wire import NoAnswer, RawRequest, RawResponse, send
from imagegw.infra.media import sniff_mime


class FuzzFailure(AssertionError):
    """A broken property; one subclass per property, so hypothesis reports (and shrinks) a
    separate minimal example for each property broken."""


_FAILURES: dict[str, type[FuzzFailure]] = {}


def failure_type(problems: list[Problem]) -> type[FuzzFailure]:
    """The exception class of a broken example: its first property, and the cause of the
    error logged with it (so each defect gets its own minimal example)."""
    cause = next((p.cause for p in problems if p.cause), "")
    name = re.sub(r"\W", "_", f"Broken_{problems[0].prop}" + (f"__{cause}" if cause else ""))
    if name not in _FAILURES:
        _FAILURES[name] = type(name, (FuzzFailure,), {"__module__": __name__})
    return _FAILURES[name]


@dataclass(repr=False)
class Tally:
    """Requests sent, and in survey mode the problems seen (by property, first example kept)."""

    requests: int = 0
    by_test: Counter[str] = field(default_factory=Counter)
    #: answers by test and status (0: none), to see what the fuzz reached
    statuses: Counter[tuple[str, int]] = field(default_factory=Counter)
    #: error messages by test (digits folded), for the survey
    messages: Counter[tuple[str, str]] = field(default_factory=Counter)
    #: seconds spent in exchanges, by test
    seconds: Counter[str] = field(default_factory=Counter)
    #: the slowest exchanges (seconds, request), for the survey
    slowest: list[tuple[float, str]] = field(default_factory=list)
    #: property -> (cause or detail, request) of each problem seen (survey mode)
    problems: dict[str, list[tuple[str, str]]] = field(default_factory=dict)
    survey: bool = bool(os.environ.get("FUZZ_SURVEY"))

    def __repr__(self) -> str:
        return f"Tally({self.requests} requests)"

    def record(self, problem: Problem, request: RawRequest) -> None:
        seen = self.problems.setdefault(problem.prop, [])
        if len(seen) < 400:
            what = f"{problem.cause}: {problem.detail}" if problem.cause else problem.detail
            seen.append((what, request.describe(600)))


@dataclass(repr=False)
class World:
    host: str
    port: int
    key: str
    ms: FakeModelScope
    sf: FakeSiliconFlow
    openai: FakeOpenAIImages
    canary: Canary
    tripwire: Tripwire
    logs: LogCapture
    runner: FuzzRunner
    tally: Tally
    test_name: str
    #: uploads the gateway's store made (counted by `CountingStore`)
    uploads: Any
    #: the gateway's requests begun and ended
    quiet: Quiescence
    windows: tuple[bytes, ...] = ()
    body_timeout: float = 1.0
    #: the name of an image stored in the bucket before the test
    stored_name: str = ""

    def __post_init__(self) -> None:
        self.windows = key_windows(self.key)

    def __repr__(self) -> str:
        return f"World(gateway {self.base_url})"

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def provider_calls(self) -> int:
        ms, sf, oa = self.ms, self.sf, self.openai
        return (
            len(ms.submissions)
            + len(ms.polls)
            + len(ms.chat_requests)
            + len(ms.file_requests)
            + len(sf.requests)
            + len(sf.file_requests)
            + len(oa.requests)
        )

    def reset_fakes(self, case: Case | None = None) -> None:
        for fake in (self.ms, self.sf, self.openai):
            fake.tokens = {self.key}
        self.ms.task_duration = 0.0
        self.ms.pending_seconds = 0.0
        self.ms.chat_chunk_delay = 0.0
        self.ms.fail_reason = None
        self.ms.submit_override = None
        self.ms.poll_errors = 0
        self.sf.latency = 0.0
        self.sf.next_error = None
        self.openai.next_error = None
        self.openai.style = "qwen"
        if case is not None:
            self.openai.style = case.openai_style  # type: ignore[assignment]
            if case.fault is not None:
                self._inject(case.fault)

    def _inject(self, fault: Fault) -> None:
        message = fault.message(self.key)
        if fault.provider == "modelscope":
            if fault.task_failure:
                self.ms.fail_reason = message
            else:
                body = {"errors": {"message": message}, "request_id": "fuzz"}
                self.ms.submit_override = (fault.status, body, {})
        elif fault.provider == "siliconflow":
            body = {"code": 50000, "message": message, "data": None}
            self.sf.next_error = (fault.status, body, True, {})
        elif fault.provider == "openai":
            error = {"message": message, "type": "server_error", "param": None, "code": None}
            self.openai.next_error = (fault.status, {"error": error})

    def exchange(
        self, case: Case, request: RawRequest | None = None, *, follow: bool = True
    ) -> RawResponse | None:
        """Send one request of `case` (its own by default) and check every property; then
        (`follow`) check that the image links of a successful answer work."""
        request = request or case.request
        self.reset_fakes(case)
        calls = self.provider_calls()
        uploads = self.uploads.count
        executions = len(self.runner.started)
        log_index = len(self.logs.lines)
        begun = self.quiet.begun
        ssrf_index = len(self.tripwire.records)
        problems: list[Problem] = []
        response: RawResponse | None = None
        timeout = 30.0 if request.delivery != "stall" else self.body_timeout + 4.0
        self.tally.requests += 1
        self.tally.by_test[self.test_name] += 1
        began = time.monotonic()
        try:
            response = send(self.host, self.port, request, timeout=timeout)
        except NoAnswer as exc:
            problems.append(Problem("no-answer", str(exc)))
        except OSError as exc:
            problems.append(Problem("no-answer", f"{type(exc).__name__}: {exc}"))
        self.tally.statuses[(self.test_name, response.status if response else 0)] += 1
        if self.tally.survey:
            self.tally.slowest.append((time.monotonic() - began, request.describe(300)))
            self.tally.slowest = sorted(self.tally.slowest, reverse=True)[:15]
        if self.tally.survey and response is not None and response.status >= 400:
            text = response.body[:300].decode("utf-8", "replace")
            self.tally.messages[(self.test_name, re.sub(r"[0-9a-f]{6,}|\d+", "N", text)[:140])] += 1
        reached_app = response is None or not is_protocol_refusal(response)
        if reached_app:
            self._await_quiet(begun, request.delivery, problems)
        provider_called = self.provider_calls() > calls
        if response is not None:
            problems += check_answer(
                response, method=request.method, provider_called=provider_called
            )
            problems += check_leak(response, self.windows)
            if CANARY_SECRET.encode() in response.raw:
                problems.append(Problem("ssrf", "the canary's secret came back to the client"))
            if (
                400 <= response.status < 500
                and not provider_called
                and b"http://" not in request.body.lower()
                and b"https://" not in request.body.lower()
                and (self.uploads.count > uploads or len(self.runner.started) > executions)
            ):
                problems.append(
                    Problem(
                        "stored-for-refused",
                        f"{response.status} refused before any provider call, yet "
                        f"{self.uploads.count - uploads} upload(s) and "
                        f"{len(self.runner.started) - executions} job(s) started",
                    )
                )
            odd_key = unshapely_key(request.header("authorization"))
            keyed = any(route in request.target for route in KEYED)
            started = self.uploads.count > uploads or len(self.runner.started) > executions
            if odd_key and keyed and (response.status < 400 or provider_called or started):
                problems.append(
                    Problem(
                        "key-shape",
                        f"{odd_key} was not refused before anything started: "
                        f"{response.status}, provider called: {provider_called}, "
                        f"uploads or jobs started: {started}",
                    )
                )
        problems += check_logs(self.logs.since(log_index), self.windows)
        for record in self.tripwire.records[ssrf_index:]:
            problems.append(Problem("ssrf", f"the gateway connected to {record}"))
        self.reset_fakes()
        self.tally.seconds[self.test_name] += time.monotonic() - began
        self._report(problems, request, response)
        if follow and response is not None and response.status == 200:
            self._check_results(case, request, response)
        return response

    def _check_results(self, case: Case, request: RawRequest, response: RawResponse) -> None:
        """A paid result is never lost: every lasting link in the answer (up to two) redirects
        to the stored image, and every `b64_json` item holds an image."""
        text = response.body.decode("utf-8", "replace")
        own = re.escape(f"http://{self.host}:{self.port}")
        links = re.findall(own + r"((?:/[^\s\"()<>/]+)*/v1/files/[A-Za-z0-9_-]+\.[a-z]+)", text)
        for path in links[:2]:
            link = RawRequest("GET", path)
            answer = self.exchange(Case(link), link, follow=False)
            location = answer.header("location") if answer is not None else None
            ok = answer is not None and answer.status == 307 and location is not None
            if ok and location is not None:
                image = httpx.get(location, timeout=10)
                ok = image.status_code == 200 and sniff_mime(image.content) is not None
            self.require(
                ok, "result", f"the link {path} of a 200 answer does not give its image", request
            )
        if response.content_type != "application/json":
            return
        try:
            items = json.loads(response.body).get("data") or []
        except (ValueError, AttributeError):
            return
        for item in items if isinstance(items, list) else []:
            data = item.get("b64_json") if isinstance(item, dict) else None
            if isinstance(data, str):
                try:
                    image = base64.b64decode(data, validate=True)
                except ValueError:
                    image = b""
                self.require(
                    sniff_mime(image) is not None,
                    "result",
                    f"a b64_json item is not an image: {data[:80]!r}",
                    request,
                )

    def require(self, ok: bool, prop: str, detail: str, request: RawRequest) -> None:
        """A property of one endpoint (checked by the test that knows it)."""
        if not ok:
            self._report([Problem(prop, detail)], request, None)

    def _await_quiet(self, begun: int, delivery: str, problems: list[Problem]) -> None:
        """Wait until the app is done with this request (and has logged all it logs about
        it), so the logs checked are this request's."""
        patience = 10.0 if delivery == "abandon" else 5.0
        deadline = time.monotonic() + patience
        while not self.quiet.settled(begun):
            if time.monotonic() > deadline:
                if delivery == "abandon":
                    problems.append(
                        Problem("hung", f"the app still runs {patience:g} s after its client left")
                    )
                return
            time.sleep(0.002)

    def _report(
        self, problems: list[Problem], request: RawRequest, response: RawResponse | None
    ) -> None:
        if not problems:
            return
        if self.tally.survey:
            cause = next((p.cause for p in problems if p.cause), "")
            for problem in problems:
                self.tally.record(replace(problem, cause=problem.cause or cause), request)
            return
        answer = (
            f"{response.status} {response.headers!r}\n{response.body[:800]!r}"
            if response is not None
            else "(no answer)"
        )
        listing = "\n".join(f"  - {p}" for p in problems)
        raise failure_type(problems)(
            f"{len(problems)} propert{'y' if len(problems) == 1 else 'ies'} broken:\n{listing}\n"
            f"request:\n{request.describe()}\nanswer:\n{answer}"
        )
