"""`ChatStream`: one streamed `/api/chat` on the node the router picked.

    async with gateway.open_chat(model, messages) as stream:   # node picked, headers received
        await stream.relay(on_chunk)                           # ChatChunk; the done chunk last

Entering raises the translated errors (not found, unreachable, busy, timeout...). Relaying
raises `OllamaStreamError` for an error line after the 200, an end without `done`, or a lost
connection. Leaving (or `aclose()`) closes the upstream connection at once unless the body
was read to its end: that is Ollama's only cancel signal.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from types import TracebackType
from typing import Any

import httpx

from ollama_web.ollama.chunks import ChatChunk
from ollama_web.ollama.connection import ResponseStream
from ollama_web.ollama.errors import (
    OllamaStreamError,
    StreamFailure,
    describe_decoding_error,
    describe_transport_error,
)
from ollama_web.ollama.http11 import BODY_EXTENSION
from ollama_web.ollama.ndjson import NDJSONDecoder
from ollama_web.ollama.nodes import Node

Opener = Callable[[], Awaitable[tuple[Node, httpx.Response]]]
DRAIN_SECONDS = 1.0
Releaser = Callable[[Node], None]


def _pumpable(response: httpx.Response) -> ResponseStream | None:
    """Our transport's own body stream, to be pumped, if the body is read as it arrives:
    uncompressed (streams ask for `identity`), without httpx's decoder and chunker layers."""
    stream = response.extensions.get(BODY_EXTENSION)
    if "content-encoding" in response.headers or not isinstance(stream, ResponseStream):
        return None
    return stream


class ChatStream:
    def __init__(self, opener: Opener, releaser: Releaser, on_failure: Callable[[Node, str], None]):
        self._opener = opener
        self._releaser = releaser
        self._on_failure = on_failure
        self._node: Node | None = None
        self._response: httpx.Response | None = None
        self._relaying = False
        self._closed = False
        self.done_chunk: ChatChunk | None = None
        """The final chunk (with the metrics) once it arrived."""

    @property
    def node_url(self) -> str | None:
        """The node serving this stream (set once entered; kept after closing)."""
        return self._node.url if self._node else None

    async def __aenter__(self) -> ChatStream:
        self._node, self._response = await self._opener()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def relay(self, on_chunk: Callable[[ChatChunk], None]) -> None:
        """Hand each chunk to `on_chunk` as it arrives, the done chunk last. With our
        transport `on_chunk` is called from the connection's callback, not from this task:
        it must not block, and what it raises ends the relay."""
        if self._response is None or self._closed:
            raise RuntimeError("enter the ChatStream (async with) before relaying it")
        if self._relaying:
            raise RuntimeError("a ChatStream can be relayed only once")
        self._relaying = True
        response = self._response
        decoder = NDJSONDecoder()

        def sink(data: bytes) -> bool:
            """True once the done chunk came."""
            for obj in decoder.feed(data):
                chunk = self._parse(obj)
                on_chunk(chunk)
                if chunk.done:
                    return True
            return False

        try:
            stream = _pumpable(response)
            if stream is not None:
                done = await stream.pump(sink)
                rest: AsyncIterator[bytes] = aiter(stream)
            else:
                done = False
                rest = response.aiter_bytes()
                async for data in rest:
                    if sink(data):
                        done = True
                        break
            if done:
                await self._drain(rest)
                return
            for obj in decoder.close():
                chunk = self._parse(obj)
                on_chunk(chunk)
                if chunk.done:
                    return
        except httpx.DecodingError as exc:
            raise self._failed("upstream_error", describe_decoding_error(exc)) from exc
        except (httpx.TransportError, httpx.StreamError) as exc:
            if self._closed:
                return
            reason = describe_transport_error(exc) if isinstance(exc, httpx.TransportError) else ""
            raise self._failed("disconnected", reason or "stream closed") from exc
        if not self._closed:
            raise self._failed("incomplete", "the stream ended without a done chunk")

    def _parse(self, obj: dict[str, Any]) -> ChatChunk:
        try:
            chunk = ChatChunk.from_object(obj)
        except OllamaStreamError as exc:
            raise self._failed(exc.kind, exc.upstream_message) from None
        if chunk.done:
            self.done_chunk = chunk
        return chunk

    @staticmethod
    async def _drain(body: AsyncIterator[bytes]) -> None:
        """Read the (empty) rest of the body so the connection can go back to the pool.
        Ollama ends it with the done chunk; a node or proxy that holds it open must not
        hold the answer back: after DRAIN_SECONDS the connection is dropped instead."""
        try:
            async with asyncio.timeout(DRAIN_SECONDS):
                async for _ in body:
                    pass
        except (httpx.TransportError, httpx.StreamError, httpx.DecodingError, TimeoutError):
            return

    def _failed(self, kind: StreamFailure, message: str) -> OllamaStreamError:
        if self._node is not None:
            self._on_failure(self._node, f"stream {kind}: {message}"[:300])
        return OllamaStreamError(kind, message)

    async def aclose(self) -> None:
        """Close the upstream response: the connection is dropped if the body is unread."""
        if self._closed:
            return
        self._closed = True
        response, self._response = self._response, None
        try:
            if response is not None:
                await response.aclose()
        finally:
            if self._node is not None:
                self._releaser(self._node)
