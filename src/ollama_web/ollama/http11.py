"""The transport under our one `httpx.AsyncClient`: HTTP/1.1 on asyncio, parsed by httptools.

Through httpx's own transport a request made about 1 900 Python calls (cProfile), most of
them in httpcore, h11 and anyio, and every streamed chunk a dozen more (h11's parser,
httpcore's locks and cancel scopes). Every request we send is simple (a JSON body or none;
Ollama answers with a length or a chunked body), so this transport does the same job with
httptools, the C parser uvicorn uses. Measured side by side on the chat path: 18-20 % less
server CPU per chat and 22-32 % less per relayed token (bench/streaming.py).

- one `asyncio.Protocol` per connection parses as bytes arrive, with one read timer and
  flow control both ways (`connection`);
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
from collections.abc import Callable

import httpx

from ollama_web.ollama.connection import Connection, Origin, ResponseStream

BODY_EXTENSION = "ollama_web.body"
"""A response's extension holding its `ResponseStream`, for `ResponseStream.pump`."""
SENT_EXTENSION = "ollama_web.sent"
"""A request's extension: a callable, called once the request is written on a connection
(the node is reachable; its answer's head may come much later, with its first token)."""
HEAD_TIMEOUT_EXTENSION = "ollama_web.head_timeout"
"""A request's extension: seconds to wait for each read of the answer's head, when its
body's reads may take longer (a pull's head comes at once; its progress lines may pause)."""


_SPENT = httpx.ByteStream(b"")


class _Response(httpx.Response):
    """A response that lets go of its body stream once closed. httpx's client wraps the
    stream in one that refers back to the response (to time it): a reference loop, which
    only the cyclic collector freed. A streamed answer's response lives for seconds, long
    enough to be moved to the oldest generation, and the full collections that freed them
    walked every object alive (one took 38 ms under the steady bench load)."""

    async def aclose(self) -> None:
        await super().aclose()
        self.stream = _SPENT


class Http11Transport(httpx.AsyncBaseTransport):
    """HTTP/1.1 with keep-alive and httpx's pool limits (see the module docstring)."""

    def __init__(self, limits: httpx.Limits, tls: Callable[[], ssl.SSLContext]) -> None:
        """`tls` makes the TLS context of https nodes, on the first connection to one:
        loading the system's certificates takes ~25 ms, which a server of plain-http nodes
        (the usual Ollama on loopback or a LAN) never needs to spend at start."""
        unlimited = sys.maxsize
        self._max_connections = limits.max_connections or unlimited
        keepalive = limits.max_keepalive_connections
        self._max_keepalive = unlimited if keepalive is None else keepalive
        self._expiry = limits.keepalive_expiry
        self._make_tls = tls
        self._tls: ssl.SSLContext | None = None
        self._idle: dict[Origin, list[Connection]] = {}
        self._idle_count = 0
        self._open: set[Connection] = set()
        self._opening = 0
        self._waiters: deque[asyncio.Future[None]] = deque()
        self._closed = False
        self._sweep: asyncio.TimerHandle | None = None
        """Closes idle connections once expired, while no request takes them (one timer for
        the pool, at the oldest idle connection's expiry)."""

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
            sent = request.extensions.get(SENT_EXTENSION)
            if sent is not None:
                sent()
            head_timeout = request.extensions.get(HEAD_TIMEOUT_EXTENSION, read_timeout)
            while not connection.head_done:
                await connection.more(head_timeout)
            if request.method == "HEAD":  # no body follows, whatever the headers say
                connection.complete = True
                connection.keep = False
        except BaseException:
            connection.close()
            self._release(connection)
            raise
        stream = ResponseStream(connection, read_timeout, self._release)
        return _Response(
            connection.status,
            headers=connection.headers,
            stream=stream,
            extensions={
                "http_version": b"HTTP/1.1",
                "reason_phrase": connection.reason,
                BODY_EXTENSION: stream,
            },
        )

    # -- the pool

    async def _acquire(self, origin: Origin, timeouts: dict[str, float | None]) -> Connection:
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

    def _take_idle(self, origin: Origin, now: float) -> Connection | None:
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
        oldest: Connection | None = None
        for idle in self._idle.values():
            if idle and (oldest is None or idle[0].idle_since < oldest.idle_since):
                oldest = idle[0]
        if oldest is not None:
            self._idle[oldest.origin].remove(oldest)
            self._idle_count -= 1
            oldest.close()
            self._forget(oldest)

    async def _connect(self, origin: Origin, seconds: float | None) -> Connection:
        scheme, host, port = origin
        loop = asyncio.get_running_loop()
        self._opening += 1
        try:
            tls = None
            if scheme == b"https":  # a context that cannot be made fails as a connect does
                if self._tls is None:
                    self._tls = self._make_tls()
                tls = self._tls
            async with asyncio.timeout(seconds):
                _, connection = await loop.create_connection(
                    lambda: Connection(loop, origin),
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

    def _release(self, connection: Connection) -> None:
        """The request on `connection` is over: keep it for the next one, or close it."""
        if not self._closed and connection.reusable:
            connection.parser = None
            connection.idle_since = connection.loop.time()
            connection.cancel_timer()
            self._idle.setdefault(connection.origin, []).append(connection)
            self._idle_count += 1
            if self._idle_count > self._max_keepalive:
                self._evict_one()
            if self._sweep is None and self._expiry is not None:
                self._sweep = connection.loop.call_at(
                    connection.idle_since + self._expiry, self._close_expired
                )
        else:
            connection.close()
            self._forget(connection)
        self._wake_one()

    def _close_expired(self) -> None:
        """Close the idle connections past their expiry (a server at rest kept every
        connection of its last burst open for as long as no request came to take one and
        find it expired); then wait for the next one to expire, if any is idle."""
        self._sweep = None
        assert self._expiry is not None
        oldest: Connection | None = None
        for idle in self._idle.values():
            while idle:  # in the order they became idle: the oldest first
                connection = idle[0]
                if connection.loop.time() - connection.idle_since < self._expiry:
                    if oldest is None or connection.idle_since < oldest.idle_since:
                        oldest = connection
                    break
                idle.pop(0)
                self._idle_count -= 1
                connection.close()
                self._forget(connection)
        if oldest is not None:
            self._sweep = oldest.loop.call_at(oldest.idle_since + self._expiry, self._close_expired)

    def _forget(self, connection: Connection) -> None:
        self._open.discard(connection)

    def _wake_one(self) -> None:
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return

    async def aclose(self) -> None:
        self._closed = True
        if self._sweep is not None:
            self._sweep.cancel()
            self._sweep = None
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
