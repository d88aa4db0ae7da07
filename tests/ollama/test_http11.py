"""The upstream client's HTTP/1.1 transport against real loopback servers: keep-alive and
the pool limits, streamed bodies, timeouts, flow control, broken servers, TLS."""

from __future__ import annotations

import asyncio
import shutil
import ssl
import subprocess
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvloop

from ollama_web.core.config import Settings
from ollama_web.ollama.connection import HIGH_WATER, ResponseStream
from ollama_web.ollama.http11 import BODY_EXTENSION, Http11Transport
from ollama_web.ollama.transport import build_client
from tests.fixtures.collector import unreachable_types
from tests.ollama.faults import Handler, blackhole, closed_port_url, serving

OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"


def client(ssl_context: ssl.SSLContext | None = None, **limits: Any) -> httpx.AsyncClient:
    tls = ssl.create_default_context if ssl_context is None else lambda: ssl_context
    transport = Http11Transport(httpx.Limits(**limits), tls)
    return httpx.AsyncClient(transport=transport, timeout=5.0)


def transport_of(http: httpx.AsyncClient) -> Http11Transport:
    transport = http._transport
    assert isinstance(transport, Http11Transport)
    return transport


class HoldingServer:
    """Answers every request `ok` on a kept-alive connection, once `release` is set."""

    def __init__(self) -> None:
        self.release = asyncio.Event()
        self.release.set()
        self.connections = 0
        self.requests: list[bytes] = []
        self.url = ""

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            while head := await reader.readuntil(b"\r\n\r\n"):
                self.requests.append(head + await read_body(reader, head))
                await self.release.wait()
                writer.write(OK)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            writer.close()


async def read_body(reader: asyncio.StreamReader, head: bytes) -> bytes:
    """A request body framed by Content-Length or chunked."""
    lowered = head.lower()
    if b"\r\ntransfer-encoding: chunked\r\n" in lowered:
        body = b""
        while size := int((await reader.readuntil(b"\r\n")).strip(), 16):
            body += (await reader.readexactly(size + 2))[:-2]
        await reader.readuntil(b"\r\n")
        return body
    for line in lowered.split(b"\r\n"):
        if line.startswith(b"content-length:"):
            return await reader.readexactly(int(line.split(b":")[1]))
    return b""


@asynccontextmanager
async def holding_server() -> AsyncIterator[HoldingServer]:
    state = HoldingServer()
    async with serving(state.handle) as port:
        state.url = f"http://127.0.0.1:{port}/"
        yield state


@asynccontextmanager
async def one_answer(answer: Handler) -> AsyncIterator[str]:
    async with serving(answer) as port:
        yield f"http://127.0.0.1:{port}/"


async def test_requests_are_sent_as_built_and_connections_kept_alive() -> None:
    async with holding_server() as server, client() as http:
        response = await http.post(server.url + "api/chat?x=1", json={"a": "é"})
        assert (response.status_code, response.content) == (200, b"ok")
        assert response.http_version == "HTTP/1.1"
        assert response.reason_phrase == "OK"
        await http.get(server.url)
        await http.delete(server.url + "api/delete", headers={"X-Test": "1"})
        assert server.connections == 1  # one kept-alive connection, reused
        first = server.requests[0]
        assert first.startswith(b"POST /api/chat?x=1 HTTP/1.1\r\n")
        assert b"\r\nhost: 127.0.0.1:" in first.lower()
        assert first.endswith(b"\r\n\r\n" + b'{"a":"\xc3\xa9"}')
        assert b"\r\nX-Test: 1\r\n" in server.requests[2]


async def test_a_closed_response_leaves_nothing_for_the_cyclic_collector() -> None:
    """httpx's client ties each response and its body stream into a loop; a response of
    ours lets go of the stream once closed, read whole or streamed."""
    async with holding_server() as server, client() as http:
        await http.get(server.url)  # warm: the connection and first-use caches
        with unreachable_types() as left:
            for _ in range(3):
                assert (await http.post(server.url, json={"a": 1})).content == b"ok"
                async with http.stream("GET", server.url) as response:
                    assert await response.aread() == b"ok"
    assert not left & {"Response", "_Response", "Request", "BoundAsyncStream", "ResponseStream"}


async def test_the_pool_caps_connections_and_queued_requests_reuse_them() -> None:
    async with holding_server() as server, client(max_connections=4) as http:
        server.release.clear()
        waiting = [asyncio.ensure_future(http.get(server.url)) for _ in range(6)]
        for _ in range(400):  # until the server has accepted them (a busy loop: later)
            if server.connections >= 4:
                break
            await asyncio.sleep(0.005)
        await asyncio.sleep(0.05)  # room for a fifth, were the cap not kept
        assert transport_of(http).connection_count == 4
        assert server.connections == 4
        server.release.set()
        responses = await asyncio.gather(*waiting)
        assert [r.content for r in responses] == [b"ok"] * 6
        assert server.connections == 4  # the two queued requests reused them


async def test_a_full_pool_times_out_and_a_cancelled_waiter_passes_its_turn() -> None:
    async with holding_server() as server, client(max_connections=1) as http:
        server.release.clear()
        first = asyncio.ensure_future(http.get(server.url))
        await asyncio.sleep(0.05)
        with pytest.raises(httpx.PoolTimeout):
            await http.get(server.url, timeout=httpx.Timeout(5.0, pool=0.1))
        cancelled = asyncio.ensure_future(http.get(server.url))
        queued = asyncio.ensure_future(http.get(server.url))
        await asyncio.sleep(0.05)
        server.release.set()
        await asyncio.sleep(0)  # the first answer frees the connection for `cancelled` ...
        cancelled.cancel()  # ... which leaves before using it: `queued` must get it
        assert (await first).content == b"ok"
        assert (await asyncio.wait_for(queued, 2.0)).content == b"ok"


async def test_idle_connections_beyond_the_keepalive_limit_are_closed() -> None:
    async with (
        holding_server() as server,
        client(max_connections=10, max_keepalive_connections=2) as http,
    ):
        server.release.clear()
        waiting = [asyncio.ensure_future(http.get(server.url)) for _ in range(5)]
        await asyncio.sleep(0.1)
        server.release.set()
        await asyncio.gather(*waiting)
        assert transport_of(http).connection_count == 2


async def test_expired_connections_are_replaced() -> None:
    async with holding_server() as server, client(keepalive_expiry=0.05) as http:
        await http.get(server.url)
        await asyncio.sleep(0.1)
        await http.get(server.url)
        assert server.connections == 2


async def test_idle_connections_are_closed_at_their_expiry_without_a_request() -> None:
    """A burst, then nothing: its connections stayed open for as long as no request came to
    take one and find it expired (the soak: 14 open to Ollama, minutes after the last)."""
    async with holding_server() as server, client(keepalive_expiry=0.5) as http:
        server.release.clear()
        burst = [asyncio.ensure_future(http.get(server.url)) for _ in range(3)]
        await asyncio.sleep(0.05)
        server.release.set()
        await asyncio.gather(*burst)
        transport = transport_of(http)
        await asyncio.sleep(0.2)
        assert transport.connection_count == 3  # not before their expiry
        deadline = time.monotonic() + 5
        while transport.connection_count:
            assert time.monotonic() < deadline, "idle connections outlived their expiry"
            await asyncio.sleep(0.05)
        await http.get(server.url)  # a new one is opened as needed
        assert server.connections == 4


async def test_a_chunked_body_arrives_chunk_by_chunk_byte_for_byte() -> None:
    text = "Grüße, 世界! 🎉".encode()
    pieces = [text[:3], text[3:8], text[8:17], text[17:]]  # multi-byte characters split
    step = asyncio.Event()

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
        for piece in pieces:
            writer.write(b"%x\r\n%s\r\n" % (len(piece), piece))
            await writer.drain()
            await step.wait()
            step.clear()
        writer.write(b"0\r\n\r\n")
        await writer.drain()
        await reader.read()

    async with one_answer(answer) as url, client() as http:
        received = []
        async with http.stream("GET", url) as response:
            async for data in response.aiter_raw():
                received.append(data)
                step.set()
        assert received == pieces  # each piece as it came, not after the end
        assert transport_of(http).connection_count == 1  # kept for the next request


async def test_a_body_without_length_ends_with_the_connection() -> None:
    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\npart one, ")
        await writer.drain()
        await asyncio.sleep(0.02)
        writer.write(b"part two")
        writer.close()

    async with one_answer(answer) as url, client() as http:
        response = await http.get(url)
        assert response.content == b"part one, part two"
        assert transport_of(http).connection_count == 0


async def connections_for_two_requests(answer: Handler) -> int:
    """Two GETs one after the other (a pause between) against `answer`, each answered `ok`:
    how many connections they took."""
    connections = 0

    async def counted(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal connections
        connections += 1
        await answer(reader, writer)

    async with one_answer(counted) as url, client() as http:
        assert (await http.get(url)).content == b"ok"
        await asyncio.sleep(0.1)
        assert (await http.get(url)).content == b"ok"
    return connections


async def test_a_connection_the_server_closed_while_idle_is_not_reused() -> None:
    async def answer_and_close(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(OK)  # keep-alive by default, then closed anyway
        await writer.drain()
        writer.close()

    assert await connections_for_two_requests(answer_and_close) == 2


async def test_bytes_nobody_asked_for_spoil_a_connection() -> None:
    async def chatty(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while await reader.readuntil(b"\r\n\r\n"):
            writer.write(OK)
            await writer.drain()
            await asyncio.sleep(0.02)
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")  # unasked
            await writer.drain()

    assert await connections_for_two_requests(chatty) == 2


async def test_a_server_that_breaks_off_raises_protocol_errors() -> None:
    async def silent_close(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.close()

    async def half_body(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nhalf")
        await writer.drain()
        writer.close()

    async def garbage(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"SMTP ready\r\n\r\n")
        await writer.drain()
        await reader.read()

    async with client() as http:
        for handler, message in (
            (silent_close, "without sending a response"),
            (half_body, "hung up mid-response"),
            (garbage, "invalid HTTP response"),
        ):
            async with one_answer(handler) as url:
                with pytest.raises(httpx.RemoteProtocolError, match=message):
                    await http.get(url)
        assert transport_of(http).connection_count == 0


async def test_closing_a_response_early_closes_its_socket_at_once() -> None:
    """For a generation, closing the upstream connection is Ollama's only cancel signal."""
    closed_after: list[float] = []
    sent = asyncio.Event()

    async def endless(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\ntoken\r\n")
        await writer.drain()
        sent.set()
        started = time.perf_counter()
        await reader.read()  # returns at the client's close
        closed_after.append(time.perf_counter() - started)

    async with one_answer(endless) as url, client() as http:
        async with http.stream("POST", url, json={}) as response:
            async for _ in response.aiter_raw():
                break
        for _ in range(400):
            if closed_after:
                break
            await asyncio.sleep(0.005)
        assert closed_after, "the server never saw the connection close"
        assert closed_after[0] < 1.0  # at once, not when the pool would drop it
        assert transport_of(http).connection_count == 0


async def test_read_timeouts_including_a_short_one_after_a_long_one() -> None:
    async def one_chunk_then_silence(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n1\r\nx\r\n")
        await writer.drain()
        await reader.read()

    async with one_answer(one_chunk_then_silence) as url, client() as http:
        started = time.perf_counter()
        with pytest.raises(httpx.ReadTimeout):
            await http.get(url, timeout=httpx.Timeout(5.0, read=0.1))
        assert 0.09 <= time.perf_counter() - started < 1.0

        async with http.stream("GET", url) as response:
            assert await response.aiter_raw().__anext__() == b"x"
            connection = next(iter(transport_of(http)._open))
            waiting = asyncio.ensure_future(connection.wait(60.0))
            await asyncio.sleep(0.02)
            waiting.cancel()  # a long wait that ends early leaves its 60 s timer armed
            with pytest.raises(asyncio.CancelledError):
                await waiting
            started = time.perf_counter()
            with pytest.raises(httpx.ReadTimeout):
                await connection.wait(0.1)  # re-arms the timer for the earlier deadline
            assert time.perf_counter() - started < 1.0
            waiting = asyncio.ensure_future(connection.wait(0.05))
            await asyncio.sleep(0.02)
            waiting.cancel()
            with pytest.raises(asyncio.CancelledError):
                await waiting
            with pytest.raises(httpx.ReadTimeout):
                await connection.wait(0.3)  # the 0.05 s timer fires early and moves on


async def test_a_slow_reader_pauses_the_socket_and_loses_nothing() -> None:
    payload = b"".join(i.to_bytes(4, "big") for i in range(300_000))  # 1.2 MB

    async def flood(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(payload))
        writer.write(payload)
        await writer.drain()
        await reader.read()

    async with one_answer(flood) as url, client() as http, http.stream("GET", url) as response:
        connection = next(iter(transport_of(http)._open))
        paused_seen = False
        for _ in range(200):
            await asyncio.sleep(0.005)
            paused_seen = paused_seen or connection.reading_paused
            if paused_seen:
                break
        assert paused_seen, "the socket was never paused"
        assert connection.buffered <= HIGH_WATER + 256 * 1024
        assert await response.aread() == payload


async def test_connect_failures() -> None:
    async with client() as http:
        with pytest.raises(httpx.ConnectError):
            await http.get(closed_port_url())
        with blackhole() as url:
            started = time.perf_counter()
            with pytest.raises(httpx.ConnectTimeout):
                await http.get(url, timeout=httpx.Timeout(5.0, connect=0.2))
            assert time.perf_counter() - started < 1.0
        with pytest.raises(httpx.UnsupportedProtocol):
            await http.get("ftp://127.0.0.1/")
        assert transport_of(http).connection_count == 0


@pytest.fixture
def tls_pair(tmp_path: Path) -> tuple[ssl.SSLContext, ssl.SSLContext]:
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.skip("openssl is not installed (scripts/services.sh installs it)")
    key, cert = tmp_path / "key.pem", tmp_path / "cert.pem"
    subprocess.run(
        [openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
         "-subj", "/CN=localhost", "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1",
         "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True,
    )  # fmt: skip
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server.load_cert_chain(cert, key)
    client_context = ssl.create_default_context(cafile=str(cert))
    return server, client_context


async def test_https(tls_pair: tuple[ssl.SSLContext, ssl.SSLContext]) -> None:
    server_context, client_context = tls_pair
    state = HoldingServer()
    async with serving(state.handle, server_context) as port:
        async with client(client_context) as http:
            for _ in range(2):
                response = await http.get(f"https://localhost:{port}/")
                assert response.content == b"ok"
            assert state.connections == 1
        async with client() as untrusting:  # the system's CAs: not the self-signed one
            with pytest.raises(httpx.ConnectError):
                await untrusting.get(f"https://localhost:{port}/")


async def test_the_tls_context_is_made_at_the_first_https_connection_only(
    tls_pair: tuple[ssl.SSLContext, ssl.SSLContext],
) -> None:
    """Loading the system's certificates costs ~25 ms: a server whose nodes all speak plain
    http never pays it, one with an https node pays it once."""
    server_context, client_context = tls_pair
    made: list[ssl.SSLContext] = []

    def make() -> ssl.SSLContext:
        made.append(client_context)
        return client_context

    state = HoldingServer()
    async with holding_server() as plain, serving(state.handle, server_context) as port:
        transport = Http11Transport(httpx.Limits(max_keepalive_connections=0), make)
        async with httpx.AsyncClient(transport=transport, timeout=5.0) as http:
            assert (await http.get(plain.url)).content == b"ok"
            assert made == []
            for _ in range(2):  # a new connection each time (no keep-alive): one context
                response = await http.get(f"https://localhost:{port}/")
                assert response.content == b"ok"
            assert made == [client_context]
            assert state.connections == 2

    def unusable() -> ssl.SSLContext:
        raise ssl.SSLError("no certificates")

    transport = Http11Transport(httpx.Limits(), unusable)
    async with httpx.AsyncClient(transport=transport, timeout=5.0) as http:
        with pytest.raises(httpx.ConnectError, match="no certificates"):
            await http.get(f"https://localhost:{port}/")
        assert transport._opening == 0


def test_under_uvloop() -> None:
    """Production runs uvloop, whose transports are not asyncio.Transport subclasses."""

    async def main() -> bytes:
        async with holding_server() as server, client() as http:
            await http.get(server.url)
            return (await http.get(server.url)).content

    assert uvloop.run(main()) == b"ok"


async def test_a_queued_request_that_leaves_passes_its_turn_on() -> None:
    """A waiter woken for a free place and cancelled before it could use it must hand the
    place to the next waiter, or that one would wait although the pool has room."""
    async with holding_server() as server, client(max_connections=1) as http:
        transport = transport_of(http)
        transport._opening = 1  # the only place is taken (a connect in progress)
        timeouts = {"connect": 2.0, "pool": None}
        origin = (b"http", "127.0.0.1", int(server.url.rsplit(":", 1)[1].strip("/")))
        leaving = asyncio.ensure_future(transport._acquire(origin, timeouts))
        staying = asyncio.ensure_future(transport._acquire(origin, timeouts))
        await asyncio.sleep(0.02)
        transport._opening = 0
        transport._wake_one()  # the place is free: `leaving` is woken first ...
        leaving.cancel()  # ... and cancelled before it runs
        connection = await asyncio.wait_for(staying, 2.0)
        assert leaving.cancelled()
        connection.close()
        transport._release(connection)


async def test_an_idle_connection_to_another_node_makes_room() -> None:
    async with (
        holding_server() as first,
        holding_server() as second,
        client(max_connections=1) as http,
    ):
        await http.get(first.url)
        await http.get(second.url)  # the idle connection to `first` is closed for it
        assert transport_of(http).connection_count == 1
        await http.get(first.url)
        assert (first.connections, second.connections) == (2, 1)


async def test_a_second_response_in_the_same_packet_spoils_the_connection() -> None:
    async def doubled(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(OK + OK)
        await writer.drain()
        await reader.read()

    assert await connections_for_two_requests(doubled) == 2


async def test_interim_answers_are_skipped_and_the_connection_kept() -> None:
    """A proxy in front of Ollama may send 100 Continue or 103 Early Hints before the
    answer: skipped (RFC 9110 15.2), whether they arrive apart or in the packet with it."""
    early = b"HTTP/1.1 103 Early Hints\r\nLink: </x>; rel=preload\r\n\r\n"
    final = b"HTTP/1.1 200 OK\r\nX-Final: yes\r\nContent-Length: 2\r\n\r\nok"

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        apart = True
        while await reader.readuntil(b"\r\n\r\n"):
            if apart:
                writer.write(early)
                await writer.drain()
                await asyncio.sleep(0.02)
                writer.write(final)
            else:
                writer.write(b"HTTP/1.1 100 Continue\r\n\r\n" + early + final)
            apart = not apart
            await writer.drain()

    async with one_answer(answer) as url, client() as http:
        for _ in range(3):
            response = await http.get(url)
            assert (response.status_code, response.content) == (200, b"ok")
            assert response.headers["x-final"] == "yes"
            assert "link" not in response.headers
        assert transport_of(http).connection_count == 1


async def test_head_and_no_content_answers_end_at_their_headers() -> None:
    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while head := await reader.readuntil(b"\r\n\r\n"):
            if head.startswith(b"HEAD"):
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n")
            else:
                writer.write(b"HTTP/1.1 204 No Content\r\n\r\n")
            await writer.drain()

    async with one_answer(answer) as url, client() as http:
        for _ in range(2):
            response = await http.delete(url)
            assert (response.status_code, response.content) == (204, b"")
        assert transport_of(http).connection_count == 1  # kept after a 204
        response = await http.head(url)
        assert (response.status_code, response.content) == (200, b"")
        assert transport_of(http).connection_count == 0  # never reused after HEAD


async def test_a_request_body_the_server_does_not_read_times_out() -> None:
    async def never_reads(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await asyncio.sleep(10)

    body = b"x" * (32 * 1024 * 1024)
    async with one_answer(never_reads) as url, client() as http:
        started = time.perf_counter()
        with pytest.raises(httpx.WriteTimeout):
            await http.post(url, content=body, timeout=httpx.Timeout(5.0, write=0.2))
        assert time.perf_counter() - started < 2.0
        assert transport_of(http).connection_count == 0


async def test_a_large_request_body_waits_for_a_slow_server() -> None:
    body = b"y" * (16 * 1024 * 1024)

    async def slow_reader(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        await asyncio.sleep(0.1)  # the client's socket fills up meanwhile
        length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
        received = await reader.readexactly(length)
        writer.write(OK if received == body else b"HTTP/1.1 400 Bad\r\nContent-Length: 0\r\n\r\n")
        await writer.drain()

    async with one_answer(slow_reader) as url, client() as http:
        response = await http.post(url, content=body)
        assert (response.status_code, response.content) == (200, b"ok")


async def test_a_closed_transport_refuses_requests() -> None:
    http = client()
    await http.aclose()
    with pytest.raises(RuntimeError, match="closed"):
        await http._transport.handle_async_request(httpx.Request("GET", "http://127.0.0.1:9/"))


async def test_the_upstream_client_keeps_no_cookies(
    settings_factory: Callable[..., Settings],
) -> None:
    heads: list[bytes] = []

    async def sets_a_cookie(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while head := await reader.readuntil(b"\r\n\r\n"):
            heads.append(head)
            writer.write(
                b"HTTP/1.1 200 OK\r\nSet-Cookie: node=1; Path=/\r\nContent-Length: 0\r\n\r\n"
            )
            await writer.drain()

    async with one_answer(sets_a_cookie) as url, build_client(settings_factory()) as http:
        await http.get(url)
        await http.get(url)
        assert len(http.cookies) == 0
        with pytest.raises(TypeError):
            http.cookies = {"a": "b"}
    assert len(heads) == 2
    assert b"cookie" not in heads[1].lower()


async def test_a_streamed_request_body_is_sent_chunked() -> None:
    async def parts() -> AsyncIterator[bytes]:
        yield b'{"a":'
        yield b"1}"

    async with holding_server() as server, client() as http:
        assert (await http.post(server.url, content=parts())).content == b"ok"
        assert server.requests[0].endswith(b'\r\n\r\n{"a":1}')
        assert (await http.get(server.url)).content == b"ok"  # the connection is still sound
        assert server.connections == 1


def pumped(response: httpx.Response) -> ResponseStream:
    stream = response.extensions[BODY_EXTENSION]
    assert isinstance(stream, ResponseStream)
    return stream


def trickle(pieces: list[bytes], gap: float, then: Callable[[], Any] | None = None) -> Handler:
    """A chunked 200 whose body chunks come `gap` seconds apart; then the end, or `then()`
    (awaited) instead."""

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
        for piece in pieces:
            await asyncio.sleep(gap)
            writer.write(b"%x\r\n%s\r\n" % (len(piece), piece))
            await writer.drain()
        if then is None:
            writer.write(b"0\r\n\r\n")
            await writer.drain()
            await reader.read()
        else:
            await then()

    return handler


async def test_a_pumped_body_reaches_the_sink_whole_from_the_connection_s_callback() -> None:
    pieces = [b"line %d\n" % i for i in range(20)]
    async with one_answer(trickle(pieces, 0.01)) as url, client() as http:
        received: list[bytes] = []
        outside_tasks = 0

        def sink(data: bytes) -> bool:
            nonlocal outside_tasks
            received.append(data)
            outside_tasks += asyncio.current_task() is None
            return False

        async with http.stream("GET", url) as response:
            assert await pumped(response).pump(sink) is False  # the body ended
        assert b"".join(received) == b"".join(pieces)
        # Pieces that came while the pump waited went to the sink from `data_received`,
        # with no task woken for them.
        assert outside_tasks >= len(pieces) // 2
        assert transport_of(http)._idle_count == 1  # back in the pool, reusable


async def test_a_pump_s_read_timeout_runs_from_the_last_piece() -> None:
    forever = asyncio.Event()
    pieces = [b"x"] * 8  # 8 x 0.1 s: longer than the 0.3 s read timeout all together
    async with one_answer(trickle(pieces, 0.1, forever.wait)) as url, client() as http:
        received: list[bytes] = []
        async with http.stream("GET", url, timeout=httpx.Timeout(5.0, read=0.3)) as response:
            started = time.perf_counter()
            with pytest.raises(httpx.ReadTimeout):
                await pumped(response).pump(lambda data: received.append(data) is not None)
            elapsed = time.perf_counter() - started
        assert b"".join(received) == b"x" * 8
        assert 0.8 + 0.3 - 0.05 <= elapsed < 3.0  # 0.3 s after the last piece


async def test_a_sink_that_wants_no_more_leaves_the_rest_to_read() -> None:
    pieces = [b"a", b"DONE", b"tail"]
    async with one_answer(trickle(pieces, 0.05)) as url, client() as http:
        received: list[bytes] = []

        def sink(data: bytes) -> bool:
            received.append(data)
            return data == b"DONE"

        async with http.stream("GET", url) as response:
            stream = pumped(response)
            assert await stream.pump(sink) is True
            assert received == [b"a", b"DONE"]
            assert b"".join([data async for data in stream]) == b"tail"


async def test_what_a_sink_raises_ends_the_pump_in_its_task() -> None:
    pieces = [b"a", b"bad", b"never seen"]
    async with one_answer(trickle(pieces, 0.05)) as url, client() as http:
        received: list[bytes] = []

        def sink(data: bytes) -> bool:
            received.append(data)
            if data == b"bad":
                raise ValueError("a bad piece")
            return False

        async with http.stream("GET", url) as response:
            with pytest.raises(ValueError, match="a bad piece"):
                await pumped(response).pump(sink)
            await asyncio.sleep(0.15)  # the last piece arrives: the sink is not called again
        assert received == [b"a", b"bad"]
