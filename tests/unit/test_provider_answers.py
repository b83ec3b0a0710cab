"""How provider answers are read (`imagegw.providers.upstream.send`): no further than a size
limit while they stream in, whatever the answer declares or how it is compressed, and the whole
call within one deadline. The provider is an httpx mock transport whose bodies are generated as
they are read (never held whole)."""

from __future__ import annotations

import ast
import asyncio
import gzip
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

import imagegw.providers as package
from imagegw.errors import ProviderError
from imagegw.infra.clients import AnswerTimeout
from imagegw.providers.upstream import MAX_ANSWER_BYTES, send

pytestmark = pytest.mark.anyio
MB = 1024 * 1024


class Generated(httpx.AsyncByteStream):
    """`size` bytes of `fill`, made a chunk at a time; counts what was read of it."""

    def __init__(self, size: int, chunk: int = 64 * 1024, pause: float = 0.0) -> None:
        self.size, self.chunk, self.pause = size, chunk, pause
        self.sent = 0

    async def __aiter__(self) -> AsyncIterator[bytes]:
        while self.sent < self.size:
            part = b"a" * min(self.chunk, self.size - self.sent)
            self.sent += len(part)
            yield part
            if self.pause:
                await asyncio.sleep(self.pause)


def client(answer: httpx.Response) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.MockTransport(lambda request: answer))


async def test_an_answer_within_the_limit_is_read_whole() -> None:
    body = b'{"task_id": "t-1"}'
    async with client(httpx.Response(200, content=body)) as http:
        answer = await send(http, "GET", "http://provider.test/x", title="P", deadline=5)
    assert (answer.status_code, answer.content, answer.json()) == (200, body, {"task_id": "t-1"})


async def test_an_answer_past_the_limit_is_abandoned_while_it_streams() -> None:
    # Given an answer of 200 MB that declares no length
    stream = Generated(200 * MB)
    async with client(httpx.Response(200, stream=stream)) as http:
        # When it is read / Then the gateway stops just past the limit, naming it
        with pytest.raises(ProviderError) as caught:
            await send(http, "GET", "http://provider.test/x", title="P", deadline=30)
    assert caught.value.code == "provider_answer_too_large"
    assert caught.value.message.startswith("P answered more than 4 MiB")
    assert stream.sent <= MAX_ANSWER_BYTES + stream.chunk


async def test_an_answer_read_a_chunk_at_a_time_is_abandoned_at_the_same_limit() -> None:
    # Given an answer of 200 MB that declares no length, read into a reader as it comes
    stream = Generated(200 * MB)
    given: list[int] = []
    async with client(httpx.Response(200, stream=stream)) as http:
        # When it is read / Then the gateway stops just past the limit, as for one read whole,
        # having given the reader no more than the limit
        with pytest.raises(ProviderError, match="more than 4 MiB"):
            await send(
                http,
                "GET",
                "http://provider.test/x",
                title="P",
                deadline=30,
                into=lambda chunk: given.append(len(chunk)),
            )
    assert stream.sent <= MAX_ANSWER_BYTES + stream.chunk
    assert 0 < sum(given) <= MAX_ANSWER_BYTES


async def test_only_a_200s_body_goes_to_the_reader() -> None:
    given: list[bytes] = []
    for status, body in ((200, b'{"data": []}'), (429, b'{"error": {"message": "slow down"}}')):
        async with client(httpx.Response(status, content=body)) as http:
            answer = await send(
                http, "GET", "http://provider.test/x", title="P", deadline=5, into=given.append
            )
        # a 200's body went to the reader; an error's is read whole, for its words
        assert answer.content == (b"" if status == 200 else body)
    assert b"".join(given) == b'{"data": []}'


async def test_an_answer_declaring_more_than_the_limit_is_not_read() -> None:
    stream = Generated(10 * MB)
    answer = httpx.Response(200, headers={"content-length": str(10 * MB)}, stream=stream)
    async with client(answer) as http:
        with pytest.raises(ProviderError, match="more than 1 MiB"):
            await send(http, "GET", "http://provider.test/x", title="P", deadline=30, limit=MB)
    assert stream.sent == 0


async def test_a_compressed_answer_is_limited_by_what_it_expands_to() -> None:
    # Given 40 KB of gzip that expands to 40 MB
    bomb = gzip.compress(b"\0" * (40 * MB))
    answer = httpx.Response(200, headers={"content-encoding": "gzip"}, content=bomb)
    async with client(answer) as http:
        with pytest.raises(ProviderError, match="more than 4 MiB"):
            await send(http, "GET", "http://provider.test/x", title="P", deadline=30)


async def test_a_compressed_answer_within_the_limit_is_read_decoded() -> None:
    answer = httpx.Response(200, headers={"content-encoding": "gzip"}, content=gzip.compress(b"{}"))
    async with client(answer) as http:
        read = await send(http, "GET", "http://provider.test/x", title="P", deadline=5)
    assert read.content == b"{}"
    assert "content-encoding" not in read.headers


async def test_an_answer_trickled_past_the_deadline_is_a_read_timeout() -> None:
    # Given an answer whose every byte comes quickly, but which would take minutes whole
    stream = Generated(600, chunk=1, pause=0.05)
    async with client(httpx.Response(200, stream=stream)) as http:
        # When the call may last 0.3 s / Then it ends as a read timeout saying so
        with pytest.raises(AnswerTimeout, match=r"no whole answer within 0\.3 s"):
            await send(http, "GET", "http://provider.test/x", title="P", deadline=0.3)
    assert stream.sent < 600
    assert issubclass(AnswerTimeout, httpx.ReadTimeout)


def test_every_provider_module_reads_its_answers_through_send() -> None:
    """A provider module that called its client itself would read an answer whole, unbounded:
    every call of a `client`'s request methods outside `upstream` is named here."""
    methods = {"get", "post", "put", "patch", "delete", "request", "send", "stream"}
    direct = []
    for path in sorted(Path(package.__path__[0]).glob("*.py")):
        if path.name == "upstream.py":
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Attribute)
                and node.func.attr in methods
                and isinstance(node.func.value, ast.Attribute | ast.Name)
                and ast.unparse(node.func.value).endswith("client")
            ):
                direct.append(f"{path.name}:{node.lineno}: {ast.unparse(node.func)}")
    assert direct == []
