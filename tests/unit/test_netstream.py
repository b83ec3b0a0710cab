"""The network backend on asyncio's streams (imagegw.infra.netstream) under the provider transport:
large bodies arrive whole while the reader lags, a silent server is a read timeout, a refused
port a connect error, TLS verifies the server's name; and a poll sent straight to the pool
(`PooledTransport.read_whole`) reads what the client would."""

from __future__ import annotations

import asyncio
import datetime as dt
import gzip
import socket
import ssl
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from fakes.socketserver import LoopbackServer
from imagegw.infra.clients import direct_transport, provider_client
from imagegw.infra.config import Settings
from imagegw.infra.netstream import HIGH_WATER
from imagegw.infra.transport import PooledTransport
from imagegw.providers.upstream import read_answer, send

pytestmark = [pytest.mark.anyio, pytest.mark.both_loops]  # either loop: tests/conftest.py


@pytest.fixture(params=[False, True], ids=["httpcore", "lean"])
def lean(request: pytest.FixtureRequest) -> bool:
    """Each test runs over httpcore's connections and over the lean ones (the providers' and
    the bucket's: `imagegw.infra.http11`)."""
    return bool(request.param)


class OneAnswer(LoopbackServer):
    """A server on loopback that reads a request head and answers `answer` (or nothing), on
    every connection; optionally over TLS."""

    def __init__(self, answer: bytes | None, tls: ssl.SSLContext | None = None) -> None:
        super().__init__()
        self.answer = answer
        self.tls = tls
        self.requests: list[bytes] = []

    def serve(self, connection: socket.socket) -> None:
        connection.settimeout(5)
        try:
            if self.tls is not None:
                connection = self.tls.wrap_socket(connection, server_side=True)
            with connection:
                head = b""
                while b"\r\n\r\n" not in head:
                    chunk = connection.recv(65536)
                    if not chunk:
                        return
                    head += chunk
                self.requests.append(head)
                if self.answer is None:
                    self.stopping.wait(5)
                    return
                connection.sendall(self.answer)
                self.stopping.wait(0.5)
        except (OSError, ssl.SSLError):
            return


def answer(body: bytes, *headers: str) -> bytes:
    head = "".join(f"{h}\r\n" for h in headers)
    return f"HTTP/1.1 200 OK\r\nContent-Length: {len(body)}\r\n{head}\r\n".encode() + body


async def test_a_body_larger_than_what_a_connection_holds_arrives_whole_to_a_slow_reader(
    lean: bool,
) -> None:
    # Given a server answering 8 times what a connection holds unread
    body = bytes(range(256)) * (HIGH_WATER * 8 // 256)
    with OneAnswer(answer(body)) as server:
        async with httpx.AsyncClient(
            transport=PooledTransport(lean=lean, max_connections=4)
        ) as http:
            # When the answer is read a chunk at a time, slowly
            got = bytearray()
            async with http.stream("GET", f"http://127.0.0.1:{server.port}/") as response:
                async for chunk in response.aiter_raw():
                    got += chunk
                    await asyncio.sleep(0.001)

    # Then every byte arrived, in order
    assert bytes(got) == body


async def test_a_server_that_never_answers_is_a_read_timeout(lean: bool) -> None:
    with OneAnswer(None) as server:
        async with httpx.AsyncClient(
            transport=PooledTransport(lean=lean, max_connections=4)
        ) as http:
            with pytest.raises(httpx.ReadTimeout):
                await http.get(f"http://127.0.0.1:{server.port}/", timeout=0.2)


async def test_a_closed_port_is_a_connect_error(lean: bool) -> None:
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    listener.close()
    async with httpx.AsyncClient(transport=PooledTransport(lean=lean, max_connections=4)) as http:
        with pytest.raises(httpx.ConnectError):
            await http.get(f"http://127.0.0.1:{port}/")


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A self-signed certificate for `localhost`: its PEM file and its key's."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(hours=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost")]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    where = tmp_path_factory.mktemp("tls")
    (where / "cert.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (where / "key.pem").write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return where / "cert.pem", where / "key.pem"


@pytest.fixture
def tls_server(certificate: tuple[Path, Path]) -> Iterator[OneAnswer]:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(*certificate)
    with OneAnswer(answer(b"secret ok"), tls=context) as server:
        yield server


async def test_tls_is_spoken_and_the_name_checked(
    lean: bool, tls_server: OneAnswer, certificate: tuple[Path, Path]
) -> None:
    trusting = ssl.create_default_context(cafile=str(certificate[0]))
    transport = PooledTransport(lean=lean, max_connections=4, ssl_context=trusting)
    async with httpx.AsyncClient(transport=transport) as http:
        # When the server is asked for by the name in its certificate / Then it answers
        ok = await http.get(f"https://localhost:{tls_server.port}/")
        assert ok.text == "secret ok"
        # When by another name / Then the connection is refused
        with pytest.raises(httpx.ConnectError):
            await http.get(f"https://127.0.0.1:{tls_server.port}/")


async def test_an_encoded_answer_straight_from_the_pool_is_decoded_as_it_is_read(
    lean: bool,
) -> None:
    # Given a server that gzips its answer
    body = b'{"task_id": "t-1"}'
    with OneAnswer(answer(gzip.compress(body), "Content-Encoding: gzip")) as server:
        transport = PooledTransport(lean=lean, max_connections=4)
        async with httpx.AsyncClient(transport=transport) as http:
            request = http.build_request(
                "POST", f"http://127.0.0.1:{server.port}/images/generations", json={"p": "x"}
            )
            # When a submission goes straight to the pool
            straight = await transport.read_whole(
                request, limit=1024, too_large=lambda: AssertionError("too large")
            )
            # Then its answer comes back unread, and reading it decodes it
            assert not straight.is_closed
            try:
                read = await read_answer(straight, title="Fake", limit=1024)
            finally:
                await straight.aclose()
            assert read.content == body
            assert read.json() == {"task_id": "t-1"}
    # and the submission was sent once
    assert len(server.requests) == 1
    assert server.requests[0].startswith(b"POST /images/generations ")


async def test_a_poll_sent_straight_to_the_pool_is_read_as_the_client_reads_it(lean: bool) -> None:
    body = b'{"task_status": "SUCCEED"}'
    raw = answer(body, "Content-Type: application/json", "X-Trace: abc", "Connection: close")
    with OneAnswer(raw) as server:
        transport = PooledTransport(lean=lean, max_connections=4)
        async with httpx.AsyncClient(transport=transport) as http:
            request = http.build_request(
                "GET", f"http://127.0.0.1:{server.port}/tasks/1", headers={"X-Task": "t"}
            )
            straight = await transport.read_whole(
                request, limit=1024, too_large=lambda: AssertionError("too large")
            )
            through = await http.send(request)

    # Then the same status, body and headers, and the same request on the wire
    assert straight is not None
    assert (straight.status_code, straight.content, straight.json()) == (
        through.status_code,
        through.content,
        through.json(),
    )
    assert straight.headers["x-trace"] == "abc"
    assert straight.request is request
    assert server.requests[0] == server.requests[1]


async def test_a_poll_sent_straight_to_the_pool_stops_reading_past_its_limit(lean: bool) -> None:
    with OneAnswer(answer(b"x" * 10_000)) as server:
        transport = PooledTransport(lean=lean, max_connections=4)
        async with httpx.AsyncClient(transport=transport) as http:
            request = http.build_request("GET", f"http://127.0.0.1:{server.port}/")
            with pytest.raises(ValueError, match="over"):
                await transport.read_whole(
                    request, limit=1000, too_large=lambda: ValueError("over the limit")
                )
            # and the pool's slot was given back: the next request is served
            assert (await http.get(f"http://127.0.0.1:{server.port}/")).status_code == 200


async def test_a_connection_closed_by_the_server_is_not_reused_before_the_loop_saw_it(
    lean: bool,
) -> None:
    # Given a connection the server closes after its answer
    with OneAnswer(answer(b"ok")) as server:
        async with httpx.AsyncClient(
            transport=PooledTransport(lean=lean, max_connections=4)
        ) as http:
            url = f"http://127.0.0.1:{server.port}/"
            assert (await http.get(url)).text == "ok"
            # When the close has arrived (0.5 s after the answer) while the event loop was
            # busy, so that nothing read it yet
            time.sleep(1.0)  # noqa: ASYNC251 (blocks the loop on purpose)
            # Then the next request does not go on it: it is answered on a new connection
            assert (await http.get(url)).text == "ok"
    assert len(server.requests) == 2


async def test_the_provider_clients_request_hooks_see_a_submission_sent_straight_to_the_pool() -> (
    None
):
    # Given the provider client with a request hook (the gateway's warms the S3 client)
    seen: list[tuple[str, bytes]] = []

    async def hook(request: httpx.Request) -> None:
        seen.append((request.method, request.content))

    body = b'{"task_id": "t-1"}'
    with OneAnswer(answer(gzip.compress(body), "Content-Encoding: gzip")) as server:
        client = provider_client(Settings(), event_hooks={"request": [hook]})
        assert direct_transport(client, client.build_request("POST", "http://x/", json={}))
        try:
            # When a submission is sent through `send`
            got = await send(
                client,
                "POST",
                f"http://127.0.0.1:{server.port}/images/generations",
                title="Fake",
                deadline=10,
                json={"p": "x"},
            )
        finally:
            await client.aclose()
    # Then the hook saw it, it was sent once, and its answer reads decoded
    assert seen == [("POST", b'{"p":"x"}')]
    assert len(server.requests) == 1
    assert got.json() == {"task_id": "t-1"}
