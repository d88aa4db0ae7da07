"""A body over MAX_REQUEST_BYTES is answered 413, and the client still sending it reads that
413 instead of a reset connection (the rest of the body is read and dropped, within
bounds), on the server and protocol `ollama-web serve` runs."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
from fastapi import FastAPI

from ollama_web.core.config import Settings
from ollama_web.core.http_guard import GuardedHttpToolsProtocol
from ollama_web.core.logging import ACCESS_LOGGER
from ollama_web.middleware import body_limit
from tests.fixtures.auth import TestUser
from tests.fixtures.logs import app_warnings
from tests.fixtures.servers import serve_app

LIMIT = 1024 * 1024
LOGIN_LIMIT = 64 * 1024
"""Login's own limit (`auth.dependencies.route_body_limit`), below MAX_REQUEST_BYTES."""
OVER = 32 * LIMIT
"""Far more than the sockets' buffers hold: sent to a server that stopped reading, the
client's sends fail long before the end."""
CHUNK = 64 * 1024


@pytest.fixture
def settings(settings_factory: Callable[..., Settings], database_url: str | None) -> Settings:
    return settings_factory(database_url=database_url, max_request_bytes=LIMIT)


@asynccontextmanager
async def _served(app: FastAPI) -> AsyncIterator[str]:
    async with serve_app(app, http=GuardedHttpToolsProtocol) as base_url:
        yield base_url


class RawUpload:
    """A client on a socket of its own: sends a request's head, then its body as fast as the
    server takes it, and meanwhile keeps whatever answer comes (what came before a reset
    too: a stream reader would raise the reset instead)."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.sent = 0
        self.send_error: OSError | None = None
        self.received = bytearray()
        self._reading = asyncio.ensure_future(self._read())

    @classmethod
    @asynccontextmanager
    async def open(cls, base_url: str, head: bytes) -> AsyncIterator[RawUpload]:
        url = urlsplit(base_url)
        reader, writer = await asyncio.open_connection(url.hostname, url.port)
        upload = cls(reader, writer)
        writer.write(head)
        try:
            yield upload
        finally:
            upload._reading.cancel()
            writer.close()

    async def _read(self) -> None:
        with contextlib.suppress(OSError):
            while chunk := await self.reader.read(CHUNK):
                self.received += chunk

    async def send(self, total: int) -> None:
        """Up to `total` bytes of body; stops at the first failed send (kept in
        `send_error`)."""
        chunk = b"x" * CHUNK
        try:
            while self.sent < total:
                piece = chunk[: total - self.sent]
                self.writer.write(piece)
                await asyncio.wait_for(self.writer.drain(), 10)
                self.sent += len(piece)
        except OSError as exc:
            self.send_error = exc

    async def answer_started(self) -> bytes:
        """The answer's status line, once it came."""
        for _ in range(500):
            if b"\r\n" in self.received:
                return bytes(self.received.partition(b"\r\n")[0])
            await asyncio.sleep(0.01)
        raise AssertionError("no answer")

    async def answer(self) -> bytes:
        """Everything the server sent until it closed."""
        await asyncio.wait_for(asyncio.shield(self._reading), 10)
        return bytes(self.received)


def _head(path: str, length: int | None) -> bytes:
    size = b"Transfer-Encoding: chunked" if length is None else b"Content-Length: %d" % length
    return b"POST %s HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\n%s\r\n\r\n" % (
        path.encode(),
        size,
    )


def _json_of(answer: bytes) -> tuple[int, dict[str, str], dict[str, Any]]:
    head, _, body = answer.partition(b"\r\n\r\n")
    status_line, *lines = head.decode("latin-1").split("\r\n")
    headers = {name.lower(): value for name, _, value in (line.partition(": ") for line in lines)}
    return int(status_line.split()[1]), headers, json.loads(body)


async def test_a_body_announced_over_the_limit_gets_its_413_not_a_reset(app: FastAPI) -> None:
    """The client sends all of it (the server reads and drops it), then reads the 413."""
    async with (
        _served(app) as base_url,
        RawUpload.open(base_url, _head("/api/auth/login", OVER)) as upload,
    ):
        await upload.send(OVER)
        answer = await upload.answer()
    assert (upload.send_error, upload.sent) == (None, OVER)
    status, headers, body = _json_of(answer)
    assert (status, body["error"], body["details"]) == (
        413,
        "PAYLOAD_TOO_LARGE",
        {"max_bytes": LOGIN_LIMIT},
    )
    assert headers["connection"] == "close"
    assert headers["content-type"] == "application/json"


async def test_clients_that_send_the_whole_body_first_read_the_413(
    app: FastAPI, regular_user: TestUser
) -> None:
    """httpx (as requests, and a browser's fetch) sends the whole body before it reads: a
    reset during the send was a network error to them, the 413 never read."""
    async with _served(app) as base_url, httpx.AsyncClient(base_url=base_url, timeout=10) as http:
        public = await http.post(
            "/api/auth/login", content=b"x" * OVER, headers={"content-type": "application/json"}
        )
        known = await http.post(
            "/api/conversations",
            content=b"x" * OVER,
            headers={"content-type": "application/json", **regular_user.headers},
        )
    for refused, limit in ((public, LOGIN_LIMIT), (known, LIMIT)):
        assert refused.status_code == 413
        assert refused.json()["details"] == {"max_bytes": limit}


@pytest.mark.parametrize("size", [LOGIN_LIMIT + 1, LIMIT + 1, OVER])
async def test_a_route_with_a_smaller_limit_is_the_limit_its_413_reports(
    app: FastAPI, size: int
) -> None:
    """Login takes 64 KiB, less than MAX_REQUEST_BYTES: a body over login's limit is
    refused by the route, one over MAX_REQUEST_BYTES before routing; either way the client
    is told the limit of the route it called."""
    async with _served(app) as base_url, httpx.AsyncClient(base_url=base_url, timeout=10) as http:
        refused = await http.post(
            "/api/auth/login", content=b"x" * size, headers={"content-type": "application/json"}
        )
    assert refused.status_code == 413
    assert refused.json()["details"] == {"max_bytes": LOGIN_LIMIT}


@pytest.mark.parametrize(
    ("path", "limit"),
    [("/api/auth/login", LOGIN_LIMIT), ("/api/conversations", LIMIT)],
    ids=["login's limit", "MAX_REQUEST_BYTES"],
)
async def test_a_chunked_body_over_the_limit_is_read_up_to_it_then_answered_the_same_way(
    app: FastAPI, regular_user: TestUser, path: str, limit: int
) -> None:
    """No length to refuse it by: it is read up to the limit (login's own is 64 KiB), then
    refused with the same details as an announced one (the limit, `max_bytes`); the rest
    is read and dropped as for an announced one, and the connection closes after the 413
    (not kept to discard any amount)."""

    async def chunks() -> AsyncIterator[bytes]:
        for _ in range(OVER // CHUNK):
            yield b"x" * CHUNK

    headers = {"content-type": "application/json", **regular_user.headers}
    async with _served(app) as base_url, httpx.AsyncClient(base_url=base_url, timeout=10) as http:
        refused = await http.post(path, content=chunks(), headers=headers)
        assert (await http.get("/health/live")).status_code == 200  # on a new connection
    assert refused.status_code == 413
    assert refused.json()["error"] == "PAYLOAD_TOO_LARGE"
    assert refused.headers["connection"] == "close"
    assert refused.json()["details"] == {"max_bytes": limit}


async def test_a_client_that_stops_sending_is_let_go_after_the_time_bound(
    app: FastAPI, monkeypatch: pytest.MonkeyPatch
) -> None:
    """It reads its 413 at once; the request (its task) ends LINGER_SECONDS later, the
    connection with it."""
    monkeypatch.setattr(body_limit, "LINGER_SECONDS", 0.5)
    with app_warnings(ACCESS_LOGGER, logging.DEBUG) as records:
        async with (
            _served(app) as base_url,
            RawUpload.open(base_url, _head("/api/auth/login", OVER)) as upload,
        ):
            await upload.send(CHUNK)
            started = time.monotonic()
            assert (await upload.answer_started()).split()[1] == b"413"
            await upload.answer()  # the server closes
            closed_after = time.monotonic() - started
    assert 0.4 <= closed_after < 3
    assert [getattr(record, "fields", {}).get("status") for record in records] == [413]


async def test_what_is_read_after_a_413_is_bounded(
    app_factory: Callable[[Settings], Any], settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A client that goes on sending past the bound is cut off: the server reads no more
    than LINGER_MIN_BYTES (here 2 MiB) of a refused body, plus what the sockets buffer."""
    monkeypatch.setattr(body_limit, "LINGER_MIN_BYTES", 2 * LIMIT)
    app = await app_factory(settings)
    endless = 1024 * LIMIT
    async with (
        _served(app) as base_url,
        RawUpload.open(base_url, _head("/api/auth/login", endless)) as upload,
    ):
        await upload.send(endless)
        answer = await upload.answer()
    assert isinstance(upload.send_error, ConnectionError)
    assert upload.sent < 2 * LIMIT + OVER  # the bound, and at most 32 MiB the sockets held
    status, _, body = _json_of(answer)
    assert (status, body["error"]) == (413, "PAYLOAD_TOO_LARGE")


@pytest.mark.parametrize(
    ("size", "closed"), [(body_limit.KEPT_UNREAD_BYTES, False), (LIMIT // 2, True)]
)
async def test_an_answer_that_leaves_a_large_body_unread_closes_the_connection(
    app: FastAPI, size: int, closed: bool
) -> None:
    """A 401 answered before the body is read (no credentials: nothing of it is read):
    up to KEPT_UNREAD_BYTES, the server drops the rest and keeps the connection; past it,
    it drops the rest within the 413's bounds and closes (it used to read any amount to
    keep the connection)."""
    async with (
        _served(app) as base_url,
        RawUpload.open(base_url, _head("/api/conversations", size)) as upload,
    ):
        await upload.send(size)
        await upload.answer_started()
        if closed:
            answer = await upload.answer()  # the server closes
        else:  # the next request on the same connection is answered
            upload.writer.write(b"GET /health/live HTTP/1.1\r\nHost: test\r\n\r\n")
            for _ in range(500):
                if upload.received.count(b"HTTP/1.1 ") == 2:
                    break
                await asyncio.sleep(0.01)
            answer, _, following = bytes(upload.received).rpartition(b"HTTP/1.1 ")
            assert following.startswith(b"200 ")
    status, headers, body = _json_of(answer)
    assert (upload.send_error, upload.sent) == (None, size)
    assert (status, body["error"]) == (401, "UNAUTHENTICATED")
    assert (headers.get("connection") == "close") is closed
