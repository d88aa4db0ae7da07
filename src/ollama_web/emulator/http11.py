"""Hand-written HTTP/1.1 over asyncio streams, for exact control of chunks and timing."""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass, field
from email.utils import formatdate
from http import HTTPStatus
from typing import Any

from ollama_web.emulator.wire import JSON_CT, NDJSON_CT, TEXT_CT, go_json

MAX_LINE = 1 << 16
MAX_HEADERS = 200
MAX_BODY = 256 << 20
GO_BUFFER = 2048
"""Go's net/http sends Content-Length only for bodies smaller than this."""


class PeerGone(Exception):
    """The client closed the connection."""


async def wait_unless_gone(event: asyncio.Event, gone: asyncio.Task[None]) -> None:
    """Wait for `event`; PeerGone if the client leaves first (`gone` ends)."""
    waiter = asyncio.get_running_loop().create_task(event.wait())
    await asyncio.wait({waiter, gone}, return_when=asyncio.FIRST_COMPLETED)
    waiter.cancel()
    if gone.done():
        raise PeerGone


class BadRequest(Exception):
    """The request could not be parsed; answer 400 and close."""


class Connection:
    """A buffered reader plus writer that can watch for the peer going away."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._reader = reader
        self._writer = writer
        self._buf = bytearray()
        self.eof = False
        self.closed = False
        self._watch: asyncio.Task[None] | None = None

    async def _fill(self) -> bool:
        if self.eof:
            return False
        try:
            data = await self._reader.read(65536)
        except (ConnectionError, OSError):
            data = b""
        if not data:
            self.eof = True
            return False
        self._buf += data
        return True

    async def read_line(self) -> bytes | None:
        """One line including its ``\\n``; ``None`` on EOF with nothing buffered."""
        while True:
            idx = self._buf.find(b"\n")
            if idx >= 0:
                line = bytes(self._buf[: idx + 1])
                del self._buf[: idx + 1]
                return line
            if len(self._buf) > MAX_LINE:
                raise BadRequest("line too long")
            if not await self._fill():
                if self._buf:
                    raise BadRequest("unexpected EOF")
                return None

    async def read_exact(self, size: int) -> bytes:
        while len(self._buf) < size:
            if not await self._fill():
                raise BadRequest("unexpected EOF in body")
        data = bytes(self._buf[:size])
        del self._buf[:size]
        return data

    async def _until_eof(self) -> None:
        while await self._fill():
            pass

    def start_watch(self) -> asyncio.Task[None]:
        """A task that finishes when the peer closes; bytes it reads stay buffered."""
        if self._watch is None:
            self._watch = asyncio.get_running_loop().create_task(self._until_eof())
        return self._watch

    async def stop_watch(self) -> None:
        task, self._watch = self._watch, None
        if task is not None and not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    def write(self, data: bytes) -> None:
        if self.closed or self._writer.transport.is_closing():
            raise PeerGone
        self._writer.write(data)

    async def drain(self) -> None:
        try:
            await self._writer.drain()
        except (ConnectionError, RuntimeError, OSError) as exc:
            raise PeerGone from exc

    def abort(self) -> None:
        """Drop the TCP connection without a clean end of the body."""
        self.closed = True
        self._writer.transport.abort()

    async def close(self) -> None:
        await self.stop_watch()
        if self.closed:
            return
        self.closed = True
        self._writer.close()
        with contextlib.suppress(Exception):
            await self._writer.wait_closed()


@dataclass
class HttpRequest:
    method: str
    target: str
    version: str
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""

    @property
    def path(self) -> str:
        path = self.target.split("?", 1)[0]
        if "://" in path:
            path = "/" + path.split("://", 1)[1].partition("/")[2]
        return path or "/"

    @property
    def query(self) -> str:
        return self.target.partition("?")[2]

    @property
    def keep_alive(self) -> bool:
        tokens = {t.strip().lower() for t in self.headers.get("connection", "").split(",")}
        if self.version == "HTTP/1.0":
            return "keep-alive" in tokens
        return "close" not in tokens


async def _read_headers(conn: Connection) -> dict[str, str]:
    headers: dict[str, str] = {}
    for _ in range(MAX_HEADERS):
        line = await conn.read_line()
        if line is None:
            raise BadRequest("unexpected EOF in headers")
        text = line.decode("latin-1").rstrip("\r\n")
        if not text:
            return headers
        name, sep, value = text.partition(":")
        if not sep or not name or name != name.strip():
            raise BadRequest("malformed header")
        key, value = name.lower(), value.strip()
        headers[key] = f"{headers[key]}, {value}" if key in headers else value
    raise BadRequest("too many headers")


async def _read_chunked(conn: Connection) -> bytes:
    body = bytearray()
    while True:
        line = await conn.read_line()
        if line is None:
            raise BadRequest("unexpected EOF in chunked body")
        try:
            size = int(line.split(b";", 1)[0].strip(), 16)
        except ValueError:
            raise BadRequest("bad chunk size") from None
        if size == 0:
            break
        body += await conn.read_exact(size)
        await conn.read_exact(2)
        if len(body) > MAX_BODY:
            raise BadRequest("body too large")
    while (line := await conn.read_line()) not in (None, b"\r\n", b"\n"):
        pass
    return bytes(body)


async def read_request(conn: Connection) -> HttpRequest | None:
    """The next request on the connection, or ``None`` when the client closed it."""
    line = await conn.read_line()
    while line in (b"\r\n", b"\n"):
        line = await conn.read_line()
    if line is None:
        return None
    parts = line.decode("latin-1").strip().split(" ")
    if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
        raise BadRequest("malformed request line")
    req = HttpRequest(parts[0], parts[1], parts[2], await _read_headers(conn))
    if req.headers.get("expect", "").lower() == "100-continue":
        conn.write(b"HTTP/1.1 100 Continue\r\n\r\n")
    if "chunked" in req.headers.get("transfer-encoding", "").lower():
        req.body = await _read_chunked(conn)
    elif "content-length" in req.headers:
        try:
            length = int(req.headers["content-length"])
        except ValueError:
            raise BadRequest("bad content-length") from None
        if length < 0 or length > MAX_BODY:
            raise BadRequest("bad content-length")
        req.body = await conn.read_exact(length)
    return req


def encode_chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


def split_pieces(data: bytes, max_piece: int = 24) -> list[bytes]:
    """Cut inside every multi-byte UTF-8 character and at least every ``max_piece`` bytes."""
    pieces: list[bytes] = []
    start = 0
    for i, byte in enumerate(data):
        in_char_cut = byte & 0xC0 == 0x80 and data[i - 1] >= 0xC0
        if i > start and (in_char_cut or i - start >= max_piece):
            pieces.append(data[start:i])
            start = i
    pieces.append(data[start:])
    return pieces


class Responder:
    """Writes one response to a request, Go net/http style."""

    def __init__(self, conn: Connection, req: HttpRequest) -> None:
        self.conn = conn
        self.head_only = req.method == "HEAD"
        self.keep_alive = req.keep_alive
        self.chunked_ok = req.version != "HTTP/1.0"
        self.started = False

    def status_and_headers(self, status: int, headers: list[tuple[str, str]]) -> bytes:
        self.started = True
        headers = [*headers, ("Date", formatdate(usegmt=True))]
        if not self.keep_alive:
            headers.append(("Connection", "close"))
        lines = [f"HTTP/1.1 {status} {HTTPStatus(status).phrase}"]
        lines += [f"{name}: {value}" for name, value in headers]
        return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")

    async def send(self, status: int, body: bytes = b"", content_type: str | None = None) -> None:
        headers: list[tuple[str, str]] = []
        if content_type:
            headers.append(("Content-Type", content_type))
        chunked = len(body) >= GO_BUFFER and self.chunked_ok
        if chunked:
            headers.append(("Transfer-Encoding", "chunked"))
        else:
            headers.append(("Content-Length", str(len(body))))
        payload = self.status_and_headers(status, headers)
        if not self.head_only and body:
            payload += (encode_chunk(body) + b"0\r\n\r\n") if chunked else body
        elif chunked and not self.head_only:
            payload += b"0\r\n\r\n"
        self.conn.write(payload)
        await self.conn.drain()

    async def json(self, status: int, obj: Any) -> None:
        await self.send(status, go_json(obj), JSON_CT)

    async def error(self, status: int, message: str) -> None:
        await self.json(status, {"error": message})

    async def text(self, status: int, text: str, content_type: str = TEXT_CT) -> None:
        await self.send(status, text.encode("utf-8"), content_type)

    def stream(self, split: bool = False) -> ChunkedStream:
        return ChunkedStream(self, split)


class ChunkedStream:
    """An NDJSON body: headers go out with the first line, one chunk per line."""

    def __init__(self, responder: Responder, split: bool) -> None:
        self.responder = responder
        self.split = split

    @property
    def started(self) -> bool:
        return self.responder.started

    def _headers(self) -> bytes:
        headers = [("Content-Type", NDJSON_CT)]
        if self.responder.chunked_ok:
            headers.append(("Transfer-Encoding", "chunked"))
        else:
            self.responder.keep_alive = False
        return self.responder.status_and_headers(200, headers)

    def _frame(self, data: bytes) -> bytes:
        return encode_chunk(data) if self.responder.chunked_ok else data

    async def write_line(self, obj: Any) -> None:
        conn = self.responder.conn
        data = go_json(obj) + b"\n"
        prefix = b"" if self.started else self._headers()
        if not self.split:
            conn.write(prefix + self._frame(data))
            await conn.drain()
            return
        if prefix:
            conn.write(prefix)
        for piece in split_pieces(data):
            conn.write(self._frame(piece))
            await conn.drain()

    async def finish(self) -> None:
        conn = self.responder.conn
        prefix = b"" if self.started else self._headers()
        conn.write(prefix + (b"0\r\n\r\n" if self.responder.chunked_ok else b""))
        await conn.drain()
