"""Helpers for reading a `ChatStream` in tests."""

from __future__ import annotations

from ollama_web.ollama.chat import ChatStream
from ollama_web.ollama.chunks import ChatChunk

HI = [{"role": "user", "content": "Hi"}]


async def collect(stream: ChatStream) -> list[ChatChunk]:
    return [chunk async for chunk in stream]


async def drain(stream: ChatStream, into: list[ChatChunk]) -> None:
    """Iterate to the end (or the error), keeping what arrived before it."""
    async for chunk in stream:
        into.append(chunk)
