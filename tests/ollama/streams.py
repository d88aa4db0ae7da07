"""Helpers for reading a `ChatStream` in tests."""

from __future__ import annotations

from ollama_web.ollama.chat import ChatStream
from ollama_web.ollama.chunks import ChatChunk

HI = [{"role": "user", "content": "Hi"}]


async def collect(stream: ChatStream) -> list[ChatChunk]:
    chunks: list[ChatChunk] = []
    await stream.relay(chunks.append)
    return chunks


async def drain(stream: ChatStream, into: list[ChatChunk]) -> None:
    """Relay to the end (or the error), keeping what arrived before it."""
    await stream.relay(into.append)
