"""The transport under our one `httpx.AsyncClient`: HTTP/1.1 on asyncio, parsed by httptools.

Through httpx's own transport a request made about 1 900 Python calls (cProfile), most of
them in httpcore, h11 and anyio, and every streamed chunk a dozen more (h11's parser,
httpcore's locks and cancel scopes). Every request we send is simple (a JSON body or none;
Ollama answers with a length or a chunked body), so this transport does the same job with
httptools, the C parser uvicorn uses. Measured side by side on the chat path: 18-20 % less
server CPU per chat and 22-32 % less per relayed token (bench/streaming.py).

- one `asyncio.Protocol` per connection feeds received bytes straight into the parser; body
  chunks wait in a queue, and a reader only waits (on one future) when it is empty;
- the read timeout is one lazily re-armed timer per connection (a deadline set per wait, the
  timer rescheduled only when it fires early), not a timer per read;
- reading pauses while a reader is more than `HIGH_WATER` bytes behind;
- a pool per origin, keep-alive, most recently used first, with httpx's limits:
  `max_connections` (further requests wait, `PoolTimeout` after the pool timeout),
  `max_keepalive_connections` and `keepalive_expiry`; a connection the server closed, or
  that received bytes while idle, is never reused;
- a response closed before its end closes its socket at once: for a generation that is
  Ollama's cancel signal.

Failures are httpx's own exceptions (`ConnectError`, `ReadTimeout`, `RemoteProtocolError`,
...), so callers handle them as they would httpx's.
"""

from __future__ import annotations

import asyncio
import ssl
import sys
from collections import deque
from collections.abc import AsyncIterator
from typing import cast

import httptools
import httpx

HIGH_WATER = 256 * 1024
"""Buffered body bytes at which the socket stops being read until the reader catches up."""

Origin = tuple[bytes, str, int]
_NO_RESPONSE = "Server disconnected without sending a response."  # httpcore's words
_UNASKED = "the server sent data that was not asked for"


class _Connection(asyncio.Protocol):
    """One HTTP/1.1 connection: receives and parses; `_Response` reads from it."""

    def __init__(self, loop: asyncio.AbstractEventLoop, origin: Origin) -> None:
        self.loop = loop
        self.origin = origin
        self.transport: asyncio.Transport | None = None
        self.parser: httptools.HttpResponseParser | None = None
        """The parser of the response in progress; None while idle."""
        self.closed = False
        self.error: httpx.TransportError | None = None
        self.idle_since = 0.0
        self.waiter: asyncio.Future[None] | None = None
        self.deadline = float("inf")
        self.timer: asyncio.TimerHandle | None = None
        self.drained: asyncio.Future[None] | None = None
        self.writing_paused = False
        self.reading_paused = False
        self._begin()

    def _begin(self) -> None:
        self.status = 0
        self.reason = b""
        self.headers: list[tuple[bytes, bytes]] = []
        self.head_done = False
        self.complete = False
        self.received = False
        self.framed = False
        """The body has a length or is chunked; otherwise it ends when the connection does."""
        self.keep = True
        """False: close the connection after this response, whatever the server said."""
        self.body: deque[bytes] = deque()
        self.buffered = 0

    def start(self) -> None:
        """Expect a new response (the connection is taken for a request)."""
        self._begin()
        self.parser = httptools.HttpResponseParser(self)

    # -- asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, but have its methods.
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        parser = self.parser
        if parser is None or self.complete:
            # Bytes nobody asked for: the server broke the protocol; never reuse this.
            self._fail(httpx.RemoteProtocolError(_UNASKED))
            return
        self.received = True
        try:
            parser.feed_data(data)
        except httptools.HttpParserError as exc:
            if self.complete:  # stopped by on_message_begin; the response itself is whole
                self._fail(httpx.RemoteProtocolError(_UNASKED))
            else:
                self._fail(httpx.RemoteProtocolError(f"invalid HTTP response: {exc}"))
            return
        if (
            self.buffered > HIGH_WATER
            and not self.reading_paused
            and self.transport is not None
            and not self.complete
        ):
            self.reading_paused = True
            self.transport.pause_reading()
        self._wake()

    def eof_received(self) -> bool:
        return False  # the transport closes itself; connection_lost follows

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self.head_done and not self.complete and not self.framed and exc is None:
            self.complete = True  # a body without length or chunks ends with the connection
        elif not self.complete and self.error is None:
            if exc is not None:
                self.error = httpx.ReadError(str(exc) or type(exc).__name__)
            elif self.received:
                self.error = httpx.RemoteProtocolError("the server hung up mid-response")
            else:
                self.error = httpx.RemoteProtocolError(_NO_RESPONSE)
        self._wake()
        drained, self.drained = self.drained, None
        if drained is not None and not drained.done():
            drained.set_result(None)
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None

    def pause_writing(self) -> None:
        self.writing_paused = True

    def resume_writing(self) -> None:
        self.writing_paused = False
        drained, self.drained = self.drained, None
        if drained is not None and not drained.done():
            drained.set_result(None)

    # -- httptools callbacks

    def on_message_begin(self) -> None:
        if self.complete:  # a second response nobody asked for, in the same packet: stop
            raise httptools.HttpParserError(_UNASKED)

    def on_status(self, status: bytes) -> None:
        self.reason += status

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name, value))
        lowered = name.lower()
        if lowered == b"content-length" or (
            lowered == b"transfer-encoding" and b"chunked" in value.lower()
        ):
            self.framed = True

    def on_headers_complete(self) -> None:
        assert self.parser is not None
        self.status = self.parser.get_status_code()
        # Asked here: once the message is complete the parser has forgotten its headers.
        self.keep = self.keep and self.parser.should_keep_alive()
        if self.status in (204, 304):
            self.framed = True
        self.head_done = True

    def on_body(self, body: bytes) -> None:
        self.body.append(body)
        self.buffered += len(body)

    def on_message_complete(self) -> None:
        self.complete = True

    # -- for requests and responses

    def _fail(self, error: httpx.TransportError) -> None:
        if self.error is None:
            self.error = error
        self.close()
        self._wake()

    def _wake(self) -> None:
        waiter = self.waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    @property
    def reusable(self) -> bool:
        return (
            self.complete and self.keep and not self.closed and self.error is None and not self.body
        )

    def close(self) -> None:
        self.closed = True
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        if self.transport is not None:
            self.transport.close()

    async def write(self, data: bytes, seconds: float | None) -> None:
        """Send `data`; `httpx.WriteTimeout` if the socket stays full for `seconds`."""
        assert self.transport is not None
        if self.closed or self.transport.is_closing():
            raise self.error or httpx.WriteError("the connection is closed")
        self.transport.write(data)
        if not self.writing_paused:
            return
        drained = self.drained = self.loop.create_future()
        try:
            async with asyncio.timeout(seconds):
                await drained
        except TimeoutError:
            raise httpx.WriteTimeout("timed out sending the request") from None
        if self.closed:
            raise self.error or httpx.WriteError("the connection was lost")

    async def wait(self, seconds: float | None) -> None:
        """Wait for more of the response; `httpx.ReadTimeout` after `seconds`."""
        waiter = self.waiter = self.loop.create_future()
        if seconds is not None:
            self.deadline = self.loop.time() + seconds
            timer = self.timer
            if timer is None or timer.when() > self.deadline:
                if timer is not None:
                    timer.cancel()
                self.timer = self.loop.call_at(self.deadline, self._on_timer)
        else:
            self.deadline = float("inf")
        try:
            await waiter
        finally:
            self.waiter = None

    def _on_timer(self) -> None:
        self.timer = None
        waiter = self.waiter
        if waiter is None or waiter.done():
            return
        if self.loop.time() < self.deadline:  # a later wait moved the deadline on
            if self.deadline != float("inf"):
                self.timer = self.loop.call_at(self.deadline, self._on_timer)
            return
        waiter.set_exception(httpx.ReadTimeout("timed out waiting for the response"))

    def take(self) -> bytes:
        """All the body bytes received so far (the caller checked there are some)."""
        body = self.body
        data = body.popleft() if len(body) == 1 else b"".join(body)
        body.clear()
        self.buffered = 0
        if self.reading_paused and self.transport is not None:
            self.reading_paused = False
            self.transport.resume_reading()
        return data


class _Response(httpx.AsyncByteStream):
    """A response body as it arrives; ending or closing it gives the connection back."""

    def __init__(self, pool: Http11Transport, connection: _Connection, timeout: float | None):
        self._pool = pool
        self._connection = connection
        self._timeout = timeout
        self._released = False

    async def __aiter__(self) -> AsyncIterator[bytes]:
        connection = self._connection
        while True:
            if connection.body:
                yield connection.take()
            elif connection.complete:
                break
            elif connection.error is not None or connection.closed:
                raise connection.error or httpx.ReadError("the connection was closed")
            else:
                await connection.wait(self._timeout)
        self._release()

    async def aclose(self) -> None:
        self._release()

    def _release(self) -> None:
        if not self._released:
            self._released = True
            self._pool._release(self._connection)


class Http11Transport(httpx.AsyncBaseTransport):
    """HTTP/1.1 with keep-alive and httpx's pool limits (see the module docstring)."""

    def __init__(self, limits: httpx.Limits, ssl_context: ssl.SSLContext) -> None:
        unlimited = sys.maxsize
        self._max_connections = limits.max_connections or unlimited
        keepalive = limits.max_keepalive_connections
        self._max_keepalive = unlimited if keepalive is None else keepalive
        self._expiry = limits.keepalive_expiry
        self._ssl_context = ssl_context
        self._idle: dict[Origin, list[_Connection]] = {}
        self._idle_count = 0
        self._open: set[_Connection] = set()
        self._opening = 0
        self._waiters: deque[asyncio.Future[None]] = deque()
        self._closed = False

    @property
    def max_connections(self) -> int:
        return self._max_connections

    @property
    def connection_count(self) -> int:
        """Connections open or being opened (in use and idle)."""
        return len(self._open) + self._opening

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if self._closed:
            raise RuntimeError("the transport is closed")
        timeouts: dict[str, float | None] = request.extensions.get("timeout", {})
        url = request.url
        scheme = url.raw_scheme
        if scheme not in (b"http", b"https"):
            raise httpx.UnsupportedProtocol(f"unsupported URL scheme {url.scheme!r}")
        port = url.port or (443 if scheme == b"https" else 80)
        origin: Origin = (scheme, url.host, port)
        body = await request.aread()
        if body and "transfer-encoding" in request.headers:  # a streamed body, read whole
            body = b"%x\r\n%s\r\n0\r\n\r\n" % (len(body), body)
        head = [b"%s %s HTTP/1.1\r\n" % (request.method.encode("ascii"), url.raw_path)]
        head.extend(b"%s: %s\r\n" % pair for pair in request.headers.raw)
        head.append(b"\r\n")
        connection = await self._acquire(origin, timeouts)
        read_timeout = timeouts.get("read")
        try:
            await connection.write(b"".join(head) + body, timeouts.get("write"))
            while not connection.head_done:
                if connection.error is not None or connection.closed:
                    raise connection.error or httpx.ReadError("the connection was closed")
                await connection.wait(read_timeout)
            if request.method == "HEAD":  # no body follows, whatever the headers say
                connection.complete = True
                connection.keep = False
        except BaseException:
            connection.close()
            self._release(connection)
            raise
        return httpx.Response(
            connection.status,
            headers=connection.headers,
            stream=_Response(self, connection, read_timeout),
            extensions={"http_version": b"HTTP/1.1", "reason_phrase": connection.reason},
        )

    # -- the pool

    async def _acquire(self, origin: Origin, timeouts: dict[str, float | None]) -> _Connection:
        loop = asyncio.get_running_loop()
        deadline: float | None = None
        while True:
            connection = self._take_idle(origin, loop.time())
            if connection is not None:
                connection.start()
                return connection
            if self.connection_count >= self._max_connections and self._idle_count:
                self._evict_one()  # an idle connection to another node makes room
            if self.connection_count < self._max_connections:
                return await self._connect(origin, timeouts.get("connect"))
            pool_timeout = timeouts.get("pool")
            if deadline is None and pool_timeout is not None:
                deadline = loop.time() + pool_timeout
            waiter = loop.create_future()
            self._waiters.append(waiter)
            try:
                async with asyncio.timeout_at(deadline):
                    await waiter
            except BaseException as exc:
                if waiter.done() and not waiter.cancelled():
                    self._wake_one()  # the turn this waiter was given goes to the next one
                else:
                    waiter.cancel()
                if isinstance(exc, TimeoutError):
                    raise httpx.PoolTimeout("timed out waiting for a connection") from None
                raise

    def _take_idle(self, origin: Origin, now: float) -> _Connection | None:
        idle = self._idle.get(origin)
        while idle:
            connection = idle.pop()  # the most recently used: least likely closed by the server
            self._idle_count -= 1
            if connection.closed or connection.error is not None:
                self._forget(connection)
            elif self._expiry is not None and now - connection.idle_since > self._expiry:
                connection.close()
                self._forget(connection)
            else:
                return connection
        return None

    def _evict_one(self) -> None:
        oldest: _Connection | None = None
        for idle in self._idle.values():
            if idle and (oldest is None or idle[0].idle_since < oldest.idle_since):
                oldest = idle[0]
        if oldest is not None:
            self._idle[oldest.origin].remove(oldest)
            self._idle_count -= 1
            oldest.close()
            self._forget(oldest)

    async def _connect(self, origin: Origin, seconds: float | None) -> _Connection:
        scheme, host, port = origin
        loop = asyncio.get_running_loop()
        tls = self._ssl_context if scheme == b"https" else None
        self._opening += 1
        try:
            async with asyncio.timeout(seconds):
                _, connection = await loop.create_connection(
                    lambda: _Connection(loop, origin),
                    host,
                    port,
                    ssl=tls,
                    server_hostname=host if tls is not None else None,
                )
        except BaseException as exc:
            self._opening -= 1
            self._wake_one()  # the place this connection held is free again
            if isinstance(exc, TimeoutError):  # before OSError: TimeoutError is one
                raise httpx.ConnectTimeout("timed out connecting") from None
            if isinstance(exc, OSError | ssl.SSLError):
                raise httpx.ConnectError(str(exc) or type(exc).__name__) from exc
            raise
        self._opening -= 1
        self._open.add(connection)
        connection.start()
        return connection

    def _release(self, connection: _Connection) -> None:
        """The request on `connection` is over: keep it for the next one, or close it."""
        if not self._closed and connection.reusable:
            connection.parser = None
            connection.idle_since = connection.loop.time()
            if connection.timer is not None:
                connection.timer.cancel()
                connection.timer = None
            self._idle.setdefault(connection.origin, []).append(connection)
            self._idle_count += 1
            if self._idle_count > self._max_keepalive:
                self._evict_one()
        else:
            connection.close()
            self._forget(connection)
        self._wake_one()

    def _forget(self, connection: _Connection) -> None:
        self._open.discard(connection)

    def _wake_one(self) -> None:
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return

    async def aclose(self) -> None:
        self._closed = True
        for idle in self._idle.values():
            idle.clear()
        self._idle_count = 0
        for connection in list(self._open):
            connection.close()
        self._open.clear()
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)

    def __repr__(self) -> str:  # pragma: no cover - debugging aid
        return f"<Http11Transport open={self.connection_count} idle={self._idle_count}>"
