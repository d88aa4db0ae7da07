"""One upstream HTTP/1.1 connection for `http11.Http11Transport`: an `asyncio.Protocol`
that feeds received bytes straight into httptools' parser, and the response body as it
arrives.

- Body chunks wait in a queue; a reader only waits (on one future) when it is empty. Or a
  `sink` takes them as they arrive, inside `data_received` (`ResponseStream.pump`): a
  streamed answer then costs no task wake per piece, only one at its end.
- The read timeout is one lazily re-armed timer per connection: a deadline is set per wait,
  and the timer is rescheduled only when it fires early.
- Reading pauses while the reader is more than `HIGH_WATER` bytes behind; writing waits
  while the socket's buffer is full.
- Bytes nobody asked for (while idle, or after the response) spoil the connection.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import AsyncIterator, Callable
from typing import cast

import httptools
import httpx

HIGH_WATER = 256 * 1024
"""Buffered body bytes at which the socket stops being read until the reader catches up."""

Origin = tuple[bytes, str, int]
_NO_RESPONSE = "Server disconnected without sending a response."  # httpcore's words
_UNASKED = "the server sent data that was not asked for"


class Connection(asyncio.Protocol):
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
        self._wait_seconds: float | None = None
        self._begin()

    def _begin(self) -> None:
        self.status = 0
        self.reason = b""
        self.headers: list[tuple[bytes, bytes]] = []
        self.head_done = False
        self.interim = False
        self.complete = False
        self.received = False
        self.framed = False
        """The body has a length or is chunked; otherwise it ends when the connection does."""
        self.keep = True
        """False: close the connection after this response, whatever the server said."""
        self.body: deque[bytes] = deque()
        self.buffered = 0
        self.sink: Callable[[bytes], bool] | None = None
        """While set, body bytes go to it as they arrive instead of into `body`; it returns
        True when it wants no more (see `ResponseStream.pump`)."""
        self.sink_ended: bool | Exception = False
        """What the sink last said from `data_received`: True (no more), or what it raised."""

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
        if self.sink is not None:
            if self.body:
                self._to_sink(self.sink)
            if self.sink is not None and not self.complete:
                if self._wait_seconds is not None:  # the read timeout counts from now on
                    self.deadline = self.loop.time() + self._wait_seconds
                return  # the pump sleeps on
        if (
            self.buffered > HIGH_WATER
            and not self.reading_paused
            and self.transport is not None
            and not self.complete
        ):
            self.reading_paused = True
            self.transport.pause_reading()
        self._wake()

    def _to_sink(self, sink: Callable[[bytes], bool]) -> None:
        try:
            ended: bool | Exception = sink(self.take())
        except Exception as exc:  # raised again by the pump, in its task
            ended = exc
        if ended is not False:
            self.sink = None
            self.sink_ended = ended

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
        self._drained()
        self.cancel_timer()

    def pause_writing(self) -> None:
        self.writing_paused = True

    def resume_writing(self) -> None:
        self.writing_paused = False
        self._drained()

    def _drained(self) -> None:
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
        status = self.parser.get_status_code()
        if 100 <= status < 200 and status != 101:
            # An interim answer (100 Continue, 103 Early Hints from a proxy): skipped, the
            # final one follows on the same connection (RFC 9110 15.2).
            self.interim = True
            return
        self.status = status
        # Asked here: once the message is complete the parser has forgotten its headers.
        self.keep = self.keep and self.parser.should_keep_alive()
        if self.status in (204, 304):
            self.framed = True
        self.head_done = True

    def on_body(self, body: bytes) -> None:
        self.body.append(body)
        self.buffered += len(body)

    def on_message_complete(self) -> None:
        if self.interim:
            self.interim = False
            self.reason = b""
            self.headers = []
            self.framed = False
            return
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

    def cancel_timer(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None

    def close(self) -> None:
        self.closed = True
        self.cancel_timer()
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

    async def more(self, seconds: float | None) -> None:
        """Wait for more of the response, or raise why none will come."""
        if self.error is not None or self.closed:
            raise self.error or httpx.ReadError("the connection was closed")
        await self.wait(seconds)

    async def wait(self, seconds: float | None) -> None:
        """Wait for more of the response; `httpx.ReadTimeout` after `seconds`."""
        waiter = self.waiter = self.loop.create_future()
        self._wait_seconds = seconds
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


class ResponseStream(httpx.AsyncByteStream):
    """A response body as it arrives; ending or closing it gives the connection back."""

    def __init__(
        self,
        connection: Connection,
        timeout: float | None,
        release: Callable[[Connection], None],
    ) -> None:
        self._connection = connection
        self._release_to = release
        self._timeout = timeout
        self._released = False

    async def __aiter__(self) -> AsyncIterator[bytes]:
        connection = self._connection
        while True:
            if connection.body:
                yield connection.take()
            elif connection.complete:
                break
            else:
                await connection.more(self._timeout)
        self._release()

    async def pump(self, sink: Callable[[bytes], bool]) -> bool:
        """Hand the body to `sink` as it arrives, called from the connection's own callback
        (no task wakes up per piece). True when `sink` returned True (it wants no more; the
        rest of the body is left to read), False once the body ended. Raises what reading
        would, and what `sink` raised; the read timeout applies between pieces."""
        connection = self._connection
        while True:
            if connection.body:
                if sink(connection.take()):
                    return True
            elif connection.complete:
                self._release()
                return False
            else:
                connection.sink = sink
                try:
                    await connection.more(self._timeout)
                finally:
                    connection.sink = None
                ended, connection.sink_ended = connection.sink_ended, False
                if isinstance(ended, Exception):
                    raise ended
                if ended:
                    return True

    async def aclose(self) -> None:
        self._release()

    def _release(self) -> None:
        if not self._released:
            self._released = True
            self._release_to(self._connection)
