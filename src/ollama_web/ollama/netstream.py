"""An asyncio network backend for httpcore, the transport under our one `httpx.AsyncClient`.

httpcore's default backend goes through anyio: every `read` opens a `fail_after` cancel
scope, and every pool checkout asks each idle connection whether its socket is readable with
a `select` call. On a streamed chat that is paid once per token. This backend keeps the same
contract (httpcore's `AsyncNetworkBackend` / `AsyncNetworkStream`, the same exceptions) on a
plain `asyncio.Protocol`:

- the event loop pushes received bytes into a buffer; `read` returns them at once when
  there are some, and only waits (on one future) when there are none;
- the read timeout is one lazily re-armed timer per connection (a deadline is set per read,
  the timer is only rescheduled when it fires early), not a timer per read;
- "is this idle connection still usable?" is answered from what the protocol already knows
  (bytes or an end of stream arrived while it was idle), without a system call;
- reading pauses when a reader falls behind by more than `HIGH_WATER` bytes.

Closing a stream closes its socket at once: for a generation that is Ollama's cancel signal.
"""

# ruff: noqa: ASYNC109 - the `timeout` parameters are httpcore's interface, not ours

from __future__ import annotations

import asyncio
import socket
import ssl
from collections import deque
from collections.abc import Iterable
from typing import Any, cast

import httpcore

HIGH_WATER = 256 * 1024
"""Buffered bytes at which the socket stops being read until `read` catches up."""

SocketOption = (
    tuple[int, int, int] | tuple[int, int, bytes | bytearray] | tuple[int, int, None, int]
)
"""httpcore's `SOCKET_OPTION`: the arguments of one `socket.setsockopt` call."""


class _Protocol(asyncio.Protocol):
    """Receives for one connection; `AsyncioStream` reads from it."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.transport: asyncio.Transport | None = None
        self.chunks: deque[bytes] = deque()
        self.buffered = 0
        self.ended = False
        """No more bytes will come (the peer closed, or the connection was lost)."""
        self.error: BaseException | None = None
        self.reading_paused = False
        self.waiter: asyncio.Future[None] | None = None
        self.deadline = 0.0
        self.timer: asyncio.TimerHandle | None = None
        self.writing_paused = False
        self.drained: asyncio.Future[None] | None = None

    # -- asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, but have its methods.
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        self.chunks.append(data)
        self.buffered += len(data)
        if self.buffered > HIGH_WATER and not self.reading_paused and self.transport is not None:
            self.reading_paused = True
            self.transport.pause_reading()
        self._wake()

    def eof_received(self) -> bool:
        self.ended = True
        self._wake()
        return False  # let the transport close itself

    def connection_lost(self, exc: Exception | None) -> None:
        self.ended = True
        if exc is not None and self.error is None:
            self.error = exc
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

    # -- for the stream

    def _wake(self) -> None:
        waiter = self.waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def take(self, max_bytes: int) -> bytes:
        """Up to `max_bytes` of what is buffered (the caller checked there is some)."""
        chunks = self.chunks
        first = chunks.popleft()
        if len(first) > max_bytes:
            chunks.appendleft(first[max_bytes:])
            first = first[:max_bytes]
        elif chunks and len(first) + len(chunks[0]) <= max_bytes:
            parts = [first]
            size = len(first)
            while chunks and size + len(chunks[0]) <= max_bytes:
                part = chunks.popleft()
                parts.append(part)
                size += len(part)
            first = b"".join(parts)
        self.buffered -= len(first)
        if self.reading_paused and self.buffered <= HIGH_WATER // 4 and self.transport is not None:
            self.reading_paused = False
            self.transport.resume_reading()
        return first

    async def wait_readable(self, timeout: float | None) -> None:
        """Wait for bytes or the end of the stream; `httpcore.ReadTimeout` after `timeout`."""
        waiter = self.loop.create_future()
        self.waiter = waiter
        if timeout is not None:
            self.deadline = self.loop.time() + timeout
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
        if self.loop.time() < self.deadline:  # a later read moved the deadline on
            if self.deadline != float("inf"):
                self.timer = self.loop.call_at(self.deadline, self._on_timer)
            return
        waiter.set_exception(httpcore.ReadTimeout("timed out waiting for data"))


class AsyncioStream(httpcore.AsyncNetworkStream):
    def __init__(self, transport: asyncio.Transport, protocol: _Protocol) -> None:
        self._transport = transport
        self._protocol = protocol

    async def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        protocol = self._protocol
        if not protocol.chunks:
            if not protocol.ended:
                await protocol.wait_readable(timeout)
            if not protocol.chunks:
                if protocol.error is not None:
                    raise httpcore.ReadError(str(protocol.error) or "connection lost")
                return b""
        return protocol.take(max_bytes)

    async def write(self, buffer: bytes, timeout: float | None = None) -> None:
        if not buffer:
            return
        protocol = self._protocol
        if self._transport.is_closing():
            raise httpcore.WriteError(str(protocol.error or "") or "connection closed")
        self._transport.write(buffer)
        if not protocol.writing_paused:
            return
        drained = protocol.loop.create_future()
        protocol.drained = drained
        try:
            async with asyncio.timeout(timeout):
                await drained
        except TimeoutError:
            raise httpcore.WriteTimeout("timed out sending data") from None
        if protocol.error is not None:
            raise httpcore.WriteError(str(protocol.error) or "connection lost")

    async def aclose(self) -> None:
        protocol = self._protocol
        if protocol.timer is not None:
            protocol.timer.cancel()
            protocol.timer = None
        self._transport.close()

    async def start_tls(
        self,
        ssl_context: ssl.SSLContext,
        server_hostname: str | None = None,
        timeout: float | None = None,
    ) -> httpcore.AsyncNetworkStream:
        loop = self._protocol.loop
        try:
            async with asyncio.timeout(timeout):
                transport = await loop.start_tls(
                    self._transport, self._protocol, ssl_context, server_hostname=server_hostname
                )
        except TimeoutError:
            self._transport.abort()
            raise httpcore.ConnectTimeout("timed out in the TLS handshake") from None
        except (OSError, ssl.SSLError) as exc:
            self._transport.abort()
            raise httpcore.ConnectError(str(exc)) from exc
        assert transport is not None
        self._protocol.transport = transport
        return AsyncioStream(transport, self._protocol)

    def get_extra_info(self, info: str) -> Any:
        transport = self._transport
        if info == "is_readable":
            # Asked of idle keep-alive connections: anything received, or an end of stream,
            # means the server closed it (or broke the protocol), so it must not be reused.
            protocol = self._protocol
            return protocol.ended or bool(protocol.chunks)
        if info == "ssl_object":
            return transport.get_extra_info("ssl_object")
        if info == "client_addr":
            return transport.get_extra_info("sockname")
        if info == "server_addr":
            return transport.get_extra_info("peername")
        if info == "socket":
            return transport.get_extra_info("socket")
        return None


class AsyncioBackend(httpcore.AsyncNetworkBackend):
    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[SocketOption] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        loop = asyncio.get_running_loop()
        local = (local_address, 0) if local_address else None
        try:
            async with asyncio.timeout(timeout):
                transport, protocol = await loop.create_connection(
                    lambda: _Protocol(loop), host, port, local_addr=local
                )
        except TimeoutError:  # before OSError: TimeoutError is one
            raise httpcore.ConnectTimeout("timed out connecting") from None
        except OSError as exc:
            raise httpcore.ConnectError(str(exc) or type(exc).__name__) from exc
        _apply(transport, socket_options)
        return AsyncioStream(transport, protocol)

    async def connect_unix_socket(
        self,
        path: str,
        timeout: float | None = None,
        socket_options: Iterable[SocketOption] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(timeout):
                transport, protocol = await loop.create_unix_connection(
                    lambda: _Protocol(loop), path
                )
        except TimeoutError:
            raise httpcore.ConnectTimeout("timed out connecting") from None
        except OSError as exc:
            raise httpcore.ConnectError(str(exc) or type(exc).__name__) from exc
        _apply(transport, socket_options)
        return AsyncioStream(transport, protocol)

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)


def _apply(transport: asyncio.Transport, options: Iterable[SocketOption] | None) -> None:
    sock: socket.socket | None = transport.get_extra_info("socket")
    if sock is None:
        return
    for option in options or ():
        sock.setsockopt(*option)
