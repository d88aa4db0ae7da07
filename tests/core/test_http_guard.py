"""The HTTP protocol `ollama-web serve` runs: a request head has a size, a header count and
a time limit, a body may not stall (slowloris), and a response's head leaves with its body,
on a real server on loopback."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from fastapi.responses import Response, StreamingResponse

from ollama_web.cli import HTTP_PROTOCOL
from ollama_web.core.config import Settings
from ollama_web.core.http_guard import MAX_HEAD_BYTES, GuardedHttpToolsProtocol
from ollama_web.emulator import EmulatorConfig, ModelSpec
from ollama_web.emulator.testing import running_emulator
from tests.fixtures.auth import create_test_user
from tests.fixtures.servers import recording_protocol, serve_app


class QuickTimeouts(GuardedHttpToolsProtocol):
    head_timeout_seconds = 0.5
    body_idle_timeout_seconds = 0.5
    body_timeout_seconds = 1.0
    body_min_rate = 100


AppFactory = Callable[[Settings], Any]


@asynccontextmanager
async def guarded_server(app: FastAPI) -> AsyncIterator[tuple[str, int]]:
    async with serve_app(app, http=QuickTimeouts) as base_url:
        host, port = base_url.removeprefix("http://").rsplit(":", 1)
        yield host, int(port)


@pytest.fixture
async def address(
    app_factory: AppFactory, settings_factory: Callable[..., Settings]
) -> AsyncIterator[tuple[str, int]]:
    app = await app_factory(settings_factory())
    async with guarded_server(app) as where:
        yield where


async def _answer(reader: asyncio.StreamReader) -> tuple[int, dict[str, Any]]:
    """Status and JSON body of the answer; the connection must then be closed."""
    raw = await asyncio.wait_for(reader.read(), 10)  # read() returns once the server closes
    head, _, body = raw.partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), json.loads(body)


async def _live(host: str, port: int) -> int:
    async with httpx.AsyncClient() as client:
        return (await client.get(f"http://{host}:{port}/health/live")).status_code


def test_serve_runs_the_guarded_protocol() -> None:
    module, _, name = HTTP_PROTOCOL.partition(":")
    assert (module, name) == (GuardedHttpToolsProtocol.__module__, "GuardedHttpToolsProtocol")


@pytest.mark.parametrize(
    "headers",
    [
        b"X-Pad: " + b"a" * (MAX_HEAD_BYTES + 1) + b"\r\n",  # one huge header
        b"".join(b"X-%d: y\r\n" % n for n in range(101)),  # too many headers
        b"Cookie: " + b"a" * (1024 * 1024),  # never ends: refused while it streams in
    ],
)
async def test_a_head_too_large_is_431_and_the_server_carries_on(
    address: tuple[str, int], headers: bytes
) -> None:
    reader, writer = await asyncio.open_connection(*address)
    writer.write(b"GET /health/live HTTP/1.1\r\nHost: x\r\n" + headers + b"\r\n")
    status, body = await _answer(reader)
    writer.close()
    assert status == 431
    assert body["error"] == "REQUEST_HEADERS_TOO_LARGE"
    assert body["details"] == {"max_bytes": MAX_HEAD_BYTES, "max_headers": 100}
    assert await _live(*address) == 200


@pytest.mark.parametrize(
    "request_bytes",
    [
        b"GARBAGE\r\n\r\n",
        b"GET /health/live HTTP/9.9\r\nHost: x\r\n\r\n",
        b"GET /health/live HTTP/1.1\r\nHost x\r\n\r\n",  # a header line without a colon
        b"POST /health/live HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
    ],
)
async def test_bytes_that_are_not_http_are_400_in_the_error_shape_and_the_server_carries_on(
    address: tuple[str, int], request_bytes: bytes
) -> None:
    reader, writer = await asyncio.open_connection(*address)
    writer.write(request_bytes)
    status, body = await _answer(reader)
    writer.close()
    assert status == 400
    assert (body["error"], body["details"]) == ("BAD_REQUEST", {})
    assert body["request_id"]
    assert await _live(*address) == 200


async def test_refusals_of_the_protocol_carry_the_security_headers_and_a_logged_request_id(
    app_factory: AppFactory, settings_factory: Callable[..., Settings]
) -> None:
    """SECURITY.md: every response carries the security headers, these too; the request id
    in the body is the X-Request-ID header's and names a line of access.log."""
    settings = settings_factory()
    app = await app_factory(settings)
    refused = [
        b"GARBAGE\r\n\r\n",
        b"GET /health/live HTTP/1.1\r\nHost: x\r\nX-Pad: " + b"a" * (MAX_HEAD_BYTES + 1),
    ]
    answers = []
    async with guarded_server(app) as address:
        for request_bytes in refused:
            reader, writer = await asyncio.open_connection(*address)
            writer.write(request_bytes)
            raw = await asyncio.wait_for(reader.read(), 10)
            writer.close()
            answers.append(raw)
    access = (settings.log_dir / "access.log").read_text()
    for raw, status in zip(answers, (400, 431), strict=True):
        head, _, body = raw.partition(b"\r\n\r\n")
        lines = head.decode().split("\r\n")
        assert lines[0].startswith(f"HTTP/1.1 {status} ")
        headers = dict(line.lower().split(": ", 1) for line in lines[1:])
        request_id = json.loads(body)["request_id"]
        assert headers["x-request-id"] == request_id
        assert headers["content-security-policy"].startswith("default-src 'none'")
        assert headers["x-content-type-options"] == "nosniff"
        assert headers["x-frame-options"] == "deny"
        assert "date" in headers
        assert headers["content-length"] == str(len(body))
        [line] = [line for line in access.splitlines() if f"rid={request_id}" in line]
        assert f"- <unmatched> {status} " in line


async def test_a_large_but_allowed_head_is_served(address: tuple[str, int]) -> None:
    async with httpx.AsyncClient() as client:
        response = await client.get(
            f"http://{address[0]}:{address[1]}/health/live",
            headers={"Cookie": "c=" + "a" * 16_000, **{f"X-{n}": "y" for n in range(90)}},
        )
    assert response.status_code == 200


async def test_large_bodies_are_not_counted_as_heads(
    app_factory: AppFactory, settings_factory: Callable[..., Settings]
) -> None:
    """Bodies of 1 MiB, one after the other on a connection (the end of a body and the
    start of the next request share a read)."""
    app = await app_factory(settings_factory())
    user = await create_test_user(app)
    document = json.dumps({"model": "llama3.2", "system_prompt": "p" * (1024 * 1024)})
    async with guarded_server(app) as address, httpx.AsyncClient() as client:
        for _ in range(3):
            response = await client.post(
                f"http://{address[0]}:{address[1]}/api/conversations",
                content=document,
                headers={"Content-Type": "application/json", **user.headers},
            )
            assert response.json()["error"] == "VALIDATION_ERROR"


async def test_a_connection_that_sends_nothing_is_closed(address: tuple[str, int]) -> None:
    reader, writer = await asyncio.open_connection(*address)
    assert await asyncio.wait_for(reader.read(), 10) == b""  # closed, nothing said
    writer.close()


async def test_a_head_trickling_in_is_408(address: tuple[str, int]) -> None:
    """Each byte comes well within the timeout, but the head is not done in time."""
    reader, writer = await asyncio.open_connection(*address)
    writer.write(b"GET /health/live HTTP/1.1\r\nHost: x\r\n")

    async def trickle() -> None:
        while True:
            writer.write(b"X-A: b\r\n")
            await writer.drain()
            await asyncio.sleep(0.1)

    started = time.monotonic()
    trickling = asyncio.create_task(trickle())
    status, body = await _answer(reader)
    trickling.cancel()
    with contextlib.suppress(asyncio.CancelledError, ConnectionError):
        await trickling
    writer.close()
    assert (status, body["error"]) == (408, "REQUEST_TIMEOUT")
    assert time.monotonic() - started < 5


async def test_a_keep_alive_connection_gets_the_same_head_limit(
    address: tuple[str, int],
) -> None:
    reader, writer = await asyncio.open_connection(*address)
    writer.write(b"GET /health/live HTTP/1.1\r\nHost: x\r\n\r\n")
    first = await asyncio.wait_for(reader.readuntil(b'{"status":"alive"}'), 10)
    assert first.startswith(b"HTTP/1.1 200")
    writer.write(b"GET /health/live HTTP/1.1\r\nHost: x\r\n")  # never finished
    status, body = await _answer(reader)
    writer.close()
    assert (status, body["error"]) == (408, "REQUEST_TIMEOUT")


async def test_a_body_that_stops_coming_is_408(address: tuple[str, int]) -> None:
    reader, writer = await asyncio.open_connection(*address)
    writer.write(
        b"POST /api/auth/login HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Content-Length: 60000\r\n\r\n" + b"{" + b" " * 30_000
    )
    status, body = await _answer(reader)
    writer.close()
    assert (status, body["error"]) == (408, "REQUEST_TIMEOUT")
    assert await _live(*address) == 200


async def test_a_body_trickling_in_is_read(address: tuple[str, int]) -> None:
    """A slow client is not refused while its body progresses (here for ~3 idle timeouts,
    at ~500 bytes a second: above the least rate)."""
    document = json.dumps({"username": "nobody", "password": "not the password"}).encode()
    document += b" " * (800 - len(document))
    reader, writer = await asyncio.open_connection(*address)
    writer.write(
        b"POST /api/auth/login HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Connection: close\r\nContent-Length: %d\r\n\r\n" % len(document)
    )
    for start in range(0, len(document), len(document) // 5 + 1):
        writer.write(document[start : start + len(document) // 5 + 1])
        await writer.drain()
        await asyncio.sleep(0.3)
    status, body = await _answer(reader)
    writer.close()
    assert (status, body["error"]) == (401, "INVALID_CREDENTIALS")


async def test_a_body_trickling_slower_than_the_least_rate_is_408(
    address: tuple[str, int],
) -> None:
    """A byte every 0.2 s is never idle for the 0.5 s idle timeout, but 5 bytes a second is
    far below the least rate (100 here): refused once the first second is spent."""
    reader, writer = await asyncio.open_connection(*address)
    writer.write(
        b"POST /api/auth/login HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Content-Length: 1000\r\n\r\n"
    )
    started = time.perf_counter()
    answer = asyncio.ensure_future(_answer(reader))
    for _ in range(100):
        if answer.done():
            break
        writer.write(b" ")
        await writer.drain()
        await asyncio.sleep(0.2)
    status, body = await answer
    elapsed = time.perf_counter() - started
    writer.close()
    assert (status, body["error"]) == (408, "REQUEST_TIMEOUT")
    assert 0.9 <= elapsed < 5.0
    assert await _live(*address) == 200


async def test_a_long_answer_is_not_cut_by_the_limits(
    app_factory: AppFactory, settings_factory: Callable[..., Settings]
) -> None:
    """A stream lasting several times both timeouts ends with its `done` event."""
    config = EmulatorConfig(
        models=[ModelSpec.preset("llama3.2")], reply_tokens=15, tokens_per_second=8
    )
    async with running_emulator(config) as emulator:
        app = await app_factory(settings_factory(ollama_url=[emulator.url]))
        user = await create_test_user(app)
        async with guarded_server(app) as (host, port), httpx.AsyncClient() as client:
            response = await client.post(
                f"http://{host}:{port}/api/chat/stream",
                json={"model": "llama3.2", "content": "hi"},
                headers=user.headers,
                timeout=30,
            )
    assert response.status_code == 200
    assert "event: done" in response.text


# ------------------------------------------------------------------ writes


async def test_a_response_s_head_leaves_with_its_body_in_one_write(
    app_factory: AppFactory, settings_factory: Callable[..., Settings]
) -> None:
    protocol, writes = recording_protocol()
    app = await app_factory(settings_factory())
    async with serve_app(app, http=protocol) as base_url, httpx.AsyncClient() as client:
        for _ in range(3):  # on one connection: each response in one write
            response = await client.get(f"{base_url}/health/live")
            assert response.status_code == 200
    assert len(writes) == 3
    for write in writes:
        head, _, body = write.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200 OK\r\n")
        assert json.loads(body) == response.json()


def _late_body_app(release: asyncio.Event) -> FastAPI:
    app = FastAPI()

    @app.get("/late")
    async def late() -> StreamingResponse:
        async def body() -> AsyncIterator[bytes]:
            await release.wait()
            yield b"at last"

        return StreamingResponse(body(), media_type="text/plain")

    return app


async def test_a_head_whose_body_is_late_is_not_held_back() -> None:
    release = asyncio.Event()
    protocol, writes = recording_protocol()
    async with serve_app(_late_body_app(release), http=protocol) as base_url:
        host, port = base_url.removeprefix("http://").rsplit(":", 1)
        reader, writer = await asyncio.open_connection(host, int(port))
        writer.write(b"GET /late HTTP/1.1\r\nHost: x\r\n\r\n")
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        assert head.startswith(b"HTTP/1.1 200 OK\r\n")
        release.set()
        chunk = await asyncio.wait_for(reader.readuntil(b"at last\r\n"), 5)
        writer.close()
    assert chunk.endswith(b"7\r\nat last\r\n")
    assert writes[0] == head


async def test_an_expected_100_continue_is_sent_before_the_body_comes(
    address: tuple[str, int],
) -> None:
    document = json.dumps({"username": "nobody", "password": "wrong password"}).encode()
    reader, writer = await asyncio.open_connection(*address)
    writer.write(
        b"POST /api/auth/login HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Expect: 100-continue\r\nContent-Length: %d\r\n\r\n" % len(document)
    )
    interim = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    assert interim == b"HTTP/1.1 100 Continue\r\n\r\n"
    writer.write(document)
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    writer.close()
    assert head.startswith(b"HTTP/1.1 401 ")


async def test_pipelined_requests_are_answered_in_order_each_in_one_write(
    app_factory: AppFactory, settings_factory: Callable[..., Settings]
) -> None:
    protocol, writes = recording_protocol()
    app = await app_factory(settings_factory())
    async with serve_app(app, http=protocol) as base_url:
        host, port = base_url.removeprefix("http://").rsplit(":", 1)
        reader, writer = await asyncio.open_connection(host, int(port))
        request = b"GET /health/live HTTP/1.1\r\nHost: x\r\n\r\n"
        writer.write(request * 2 + b"GET /nowhere HTTP/1.1\r\nHost: x\r\n\r\n")
        statuses = []
        for _ in range(3):
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
            length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
            await reader.readexactly(length)
            statuses.append(int(head.split(b" ", 2)[1]))
        writer.close()
    assert statuses == [200, 200, 404]
    assert len(writes) == 3


class QuickSendStall(GuardedHttpToolsProtocol):
    send_stall_seconds = 0.6


BIG_ANSWER = 48 * 1024 * 1024  # past what the kernel's socket buffers hold on loopback


def _big_answer_app() -> FastAPI:
    app = FastAPI()

    @app.get("/big")
    async def big() -> Response:
        return Response(b"x" * BIG_ANSWER, media_type="application/octet-stream")

    return app


async def _get_big(host: str, port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    reader, writer = await asyncio.open_connection(host, port, limit=1024 * 1024)
    writer.write(f"GET /big HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())
    await writer.drain()
    return reader, writer


async def _read_all(reader: asyncio.StreamReader, pause: float = 0.0) -> int:
    received = 0
    with contextlib.suppress(ConnectionError):
        while chunk := await asyncio.wait_for(reader.read(4 * 1024 * 1024), 10):
            received += len(chunk)
            await asyncio.sleep(pause)
    return received


async def test_a_client_that_takes_nothing_of_its_answer_is_cut_off_one_that_reads_is_not(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """An answer a client does not read stays in memory as long as the client keeps the
    connection: after SEND_STALL_SECONDS without any of it taken, the connection is
    aborted. A client reading slowly, for longer than that in all, gets all of it."""
    caplog.set_level("INFO", logger="ollama_web.http")
    # The answer is all handed over at once: the connection is closed as idle (keep-alive)
    # well before the stall limit, still holding what it has to send.
    options = {"http": QuickSendStall, "timeout_keep_alive": 0.1}
    async with serve_app(_big_answer_app(), **options) as base_url:
        host, port = base_url.removeprefix("http://").rsplit(":", 1)
        stalled, stalled_writer = await _get_big(host, int(port))
        slow, slow_writer = await _get_big(host, int(port))
        started = time.monotonic()
        slow_received = await _read_all(slow, pause=0.1)  # 4 MiB at a time
        slow_seconds = time.monotonic() - started
        await asyncio.sleep(max(0.0, 2.0 - slow_seconds))
        stalled_received = await _read_all(stalled)
        for writer in (stalled_writer, slow_writer):
            writer.close()
    assert slow_received > BIG_ANSWER  # its head, and every byte of its body
    assert slow_seconds > QuickSendStall.send_stall_seconds
    assert stalled_received < BIG_ANSWER
    assert "its client took nothing of its answer for" in caplog.text
