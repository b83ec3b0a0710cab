"""The world the fuzz runs in: the gateway served over real HTTP with the fake providers, and
the instruments that watch it.

- `Tripwire`: a process-wide audit hook (`sys.addaudithook`) that, while armed, refuses every
  connection to an address that is not loopback and every DNS look-up of a name (so nothing the
  fuzz generates can reach another machine, whatever client the gateway fetches with), and
  records every connection the gateway makes to a loopback port that is not a provider's: a
  fetch on a client's behalf (SSRF).
- `canary_app`: a loopback server the generated image URLs point at (an image, a fake
  credentials document, a redirect): a request from the gateway to it is SSRF made visible.
- `LogCapture`: every log record of the gateway (Powertools logger, formatted as it prints),
  uvicorn and asyncio, for the key and traceback checks.
- `FuzzRunner` and `FakeKms`: durable jobs in memory (executions recorded, given outcomes in
  turn: queued, running, succeeded, failed, timed out), the key sealed by a stand-in KMS.
- `World.exchange`: one request, with every property of `fuzz.properties` checked.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import ipaddress
import json
import logging
import os
import re
import socket
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass, field, replace
from typing import Any

import httpx
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response
from starlette.routing import Route

from fakes.jobs import MemoryRunner
from fakes.modelscope import FakeModelScope
from fakes.openai_images import FakeOpenAIImages
from fakes.png import make_png
from fakes.siliconflow import FakeSiliconFlow
from fuzz.cases import Case, Fault
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
from fuzz.wire import NoAnswer, RawRequest, RawResponse, send
from imagegw.errors import ProviderError
from imagegw.images import sniff_mime
from imagegw.jobs.runner import Execution
from imagegw.jobs.schema import ImageRef, JobOutput
from imagegw.log import logger as gateway_logger

#: what the canary's fake metadata endpoint answers (must never reach a client)
CANARY_SECRET = "CANARY-SECRET-AKIAFUZZ0000"


# ---------------------------------------------------------------------------- tripwire


def _is_loopback(host: str) -> bool:
    try:
        address = ipaddress.ip_address(host.split("%")[0])
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return address.is_loopback


def _resolves_locally(host: str) -> bool:
    """Whether looking `host` up needs no DNS: an address in any form glibc parses, or
    localhost."""
    if host.lower() in ("localhost", "localhost."):
        return True
    try:
        ipaddress.ip_address(host.split("%")[0])
        return True
    except ValueError:
        pass
    try:
        socket.inet_aton(host)
        return True
    except OSError:
        return False


@dataclass
class Tripwire:
    """Refuses, while armed, every connection that would leave loopback and every DNS look-up;
    records the gateway's connections to loopback ports that are not its providers'."""

    armed: bool = False
    #: threads whose connections are not the gateway's (the fakes', the test's own)
    other_threads: set[str] = field(default_factory=set)
    #: ports the gateway may connect to: its providers (fakes) and the bucket
    allowed_ports: set[int] = field(default_factory=set)
    records: list[str] = field(default_factory=list)
    refused: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def hook(self, event: str, args: tuple[Any, ...]) -> None:
        if not self.armed or not event.startswith("socket."):
            return
        if event == "socket.getaddrinfo":
            host = args[0]
            if isinstance(host, bytes):
                host = host.decode("latin-1")
            if isinstance(host, str) and not _resolves_locally(host):
                with self.lock:
                    self.refused.append(f"DNS {host!r} ({threading.current_thread().name})")
                raise socket.gaierror(socket.EAI_NONAME, f"fuzz tripwire: no DNS for {host!r}")
        elif event == "socket.connect":
            address = args[1]
            if not isinstance(address, tuple) or len(address) < 2:
                return
            host, port = str(address[0]), int(address[1])
            thread = threading.current_thread()
            gateway = (
                thread.name not in self.other_threads and thread is not threading.main_thread()
            )
            loopback = _is_loopback(host)
            if gateway and not (loopback and port in self.allowed_ports):
                with self.lock:
                    self.records.append(f"{host}:{port} (thread {thread.name})")
            if not loopback:
                with self.lock:
                    self.refused.append(f"connect {host}:{port} ({thread.name})")
                raise ConnectionRefusedError(f"fuzz tripwire: {host}:{port} is not loopback")


TRIPWIRE = Tripwire()
_HOOKED = False


def install_tripwire() -> Tripwire:
    """The process's tripwire (the audit hook is added once; hooks cannot be removed)."""
    global _HOOKED
    if not _HOOKED:
        sys.addaudithook(TRIPWIRE.hook)
        _HOOKED = True
    return TRIPWIRE


# ---------------------------------------------------------------------------- canary


class Canary:
    """A loopback server for generated image URLs; records every hit."""

    def __init__(self) -> None:
        self.hits: list[str] = []
        self.lock = threading.Lock()
        self.app = Starlette(
            routes=[
                Route("/image.png", self._image),
                Route("/latest/meta-data/{rest:path}", self._metadata),
                Route("/redirect", self._redirect),
                Route("/{rest:path}", self._other),
            ]
        )

    def _hit(self, request: Request) -> None:
        with self.lock:
            self.hits.append(f"{request.method} {request.url.path}")

    async def _image(self, request: Request) -> Response:
        self._hit(request)
        return Response(make_png(4, 4, (1, 2, 3)), media_type="image/png")

    async def _metadata(self, request: Request) -> Response:
        self._hit(request)
        return JSONResponse({"AccessKeyId": CANARY_SECRET, "Code": "Success"})

    async def _redirect(self, request: Request) -> Response:
        self._hit(request)
        return RedirectResponse("/latest/meta-data/iam/security-credentials/role", 302)

    async def _other(self, request: Request) -> Response:
        self._hit(request)
        return Response(CANARY_SECRET, media_type="text/plain")

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        await self.app(scope, receive, send)


# ---------------------------------------------------------------------------- requests


class Quiescence:
    """Wraps the gateway's app and counts the HTTP requests it began and ended. The end is
    counted on the event loop's next turn, after whatever uvicorn logs when the app raised,
    so once `ended == begun` every log line of those requests has been written."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.begun = 0
        self.ended = 0

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        self.begun += 1
        loop = asyncio.get_running_loop()
        try:
            await self.app(scope, receive, send)
        finally:
            loop.call_soon(self._end)

    def _end(self) -> None:
        self.ended += 1

    def settled(self, since: int) -> bool:
        """Whether a request began after `since` began requests, and every request ended."""
        return self.begun > since and self.ended >= self.begun


# ---------------------------------------------------------------------------- logs


class LogCapture(logging.Handler):
    """Log records as (level, logger name, text as printed); the gateway's in Powertools'
    JSON, others with their traceback."""

    LOGGERS = ("", "image-gateway", "uvicorn", "uvicorn.error", "asyncio")

    def __init__(self) -> None:
        super().__init__(level=logging.DEBUG)
        self.lines: list[tuple[int, str, str]] = []
        self._mutex = threading.Lock()
        self._seen: dict[int, logging.LogRecord] = {}
        self.plain = logging.Formatter("%(levelname)s %(name)s %(message)s")
        self.powertools = gateway_logger.registered_formatter

    def emit(self, record: logging.LogRecord) -> None:
        with self._mutex:
            if id(record) in self._seen:
                return  # the same record through a second logger
            self._seen[id(record)] = record
            if len(self._seen) > 2000:
                self._seen.pop(next(iter(self._seen)))
        try:
            formatter = self.powertools if record.name == "image-gateway" else self.plain
            text = formatter.format(record)
        except Exception as exc:  # a record that cannot be printed is itself a finding
            text = f"Traceback: unprintable log record {record.msg!r}: {exc!r}"
        with self._mutex:
            self.lines.append((record.levelno, record.name, text))

    def attach(self) -> None:
        for name in self.LOGGERS:
            target = logging.getLogger(name)
            if self not in target.handlers:
                target.addHandler(self)

    def detach(self) -> None:
        for name in self.LOGGERS:
            logging.getLogger(name).removeHandler(self)

    def since(self, index: int) -> list[tuple[int, str, str]]:
        with self._mutex:
            return self.lines[index:]


# ---------------------------------------------------------------------------- jobs


class FakeKms:
    """KMS's Encrypt for `KeySealer`: an opaque blob bound to the job (never the key)."""

    def encrypt(self, KeyId: str, Plaintext: bytes, EncryptionContext: dict[str, str]) -> Any:
        digest = hashlib.sha256(Plaintext + json.dumps(EncryptionContext).encode()).digest()
        return {"CiphertextBlob": b"sealed:" + digest}


class FuzzRunner(MemoryRunner):
    """Executions in memory, each given the next outcome in turn when it starts."""

    OUTCOMES = ("queued", "running", "stored", "provider-link", "failed", "timed-out", "aborted")

    def __init__(self, stored_name: str, provider_url: str) -> None:
        super().__init__()
        self.stored_name = stored_name
        self.provider_url = provider_url
        self.outcomes: dict[str, str] = {}

    def start(self, name: str, payload: str) -> bool:
        started = super().start(name, payload)
        if started:
            self.outcomes[name] = self.OUTCOMES[len(self.started) % len(self.OUTCOMES)]
        return started

    def describe(self, name: str) -> Execution | None:
        execution = super().describe(name)
        if execution is None:
            return None
        outcome = self.outcomes.get(name, "running")
        if outcome == "stored":
            output = JobOutput(images=(ImageRef(name=self.stored_name),), task_ids=("t1",))
            return replace(execution, status="SUCCEEDED", output=output.model_dump_json())
        if outcome == "provider-link":
            output = JobOutput(images=(ImageRef(url=self.provider_url),), failures=("one failed",))
            return replace(execution, status="SUCCEEDED", output=output.model_dump_json())
        if outcome == "failed":
            body = ProviderError("ModelScope task t1 failed: nope", code="generation_failed").body()
            return replace(
                execution, status="FAILED", error="ProviderError", cause=json.dumps(body)
            )
        if outcome == "timed-out":
            return replace(execution, status="TIMED_OUT")
        if outcome == "aborted":
            return replace(execution, status="ABORTED")
        return execution

    def submitted(self, name: str) -> bool:
        return self.outcomes.get(name) != "queued"


# ---------------------------------------------------------------------------- the world


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
        fault_status = case.fault.status if case.fault is not None else None
        if response is not None:
            problems += check_answer(
                response,
                method=request.method,
                provider_called=provider_called,
                fault_status=fault_status,
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
