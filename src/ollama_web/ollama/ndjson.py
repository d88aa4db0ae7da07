"""NDJSON from bytes: buffer, split on `\\n`, decode only whole lines.

HTTP chunk boundaries do not line up with lines, and a split can fall inside a multi-byte
UTF-8 character, so nothing is decoded until its line is complete. Lines may be long (the
generate `context` array, big tool-call arguments); the cap is far above Ollama's own 8 MB.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterable, AsyncIterator, Callable
from typing import Any

from ollama_web.ollama.errors import OllamaStreamError

MAX_LINE_BYTES = 32 * 1024 * 1024
JSON_WHITESPACE = " \t\n\r"
_scan: Callable[[str, int], tuple[Any, int]]
_scan = json.JSONDecoder().scan_once  # type: ignore[attr-defined]
"""json's C scanner (typeshed does not list the attribute): the value at an index, and where
it ends."""


class NDJSONDecoder:
    """Incremental decoder: `feed(data)` returns the objects completed by `data`."""

    def __init__(self, max_line_bytes: int = MAX_LINE_BYTES) -> None:
        self._buffer = bytearray()
        self._scanned = 0
        self._max_line_bytes = max_line_bytes

    def feed(self, data: bytes) -> list[dict[str, Any]]:
        if not self._buffer and data.find(b"\n") == len(data) - 1:
            # The usual streamed chunk: exactly one whole line.
            return [_decode_line(data)] if data.strip() else []
        self._buffer += data
        objects: list[dict[str, Any]] = []
        start = 0
        while True:
            end = self._buffer.find(b"\n", max(start, self._scanned))
            if end < 0:
                break
            line = bytes(self._buffer[start:end])
            start = end + 1
            if line.strip():
                objects.append(_decode_line(line))
        if start:
            del self._buffer[:start]
        self._scanned = len(self._buffer)
        if self._scanned > self._max_line_bytes:
            raise OllamaStreamError(
                "upstream_error", f"a line longer than {self._max_line_bytes} bytes"
            )
        return objects

    def close(self) -> list[dict[str, Any]]:
        """End of input: a last line without `\\n` still counts (single-object replies)."""
        line, self._buffer, self._scanned = bytes(self._buffer), bytearray(), 0
        return [_decode_line(line)] if line.strip() else []


def _decode_line(line: bytes) -> dict[str, Any]:
    try:  # decoded first: json.loads(bytes) also sniffs for UTF-16/32, ~0.7 µs a line
        text = line.decode()
        try:  # json's C scanner straight away: one line, one object, no whitespace before it
            value, end = _scan(text, 0)
        except StopIteration:
            end = -1
        if end != len(text) and (end < 0 or text[end:].strip(JSON_WHITESPACE)):
            value = json.loads(text)  # whitespace first, or an error: json's own message
    except ValueError as exc:  # includes UnicodeDecodeError
        raise OllamaStreamError("upstream_error", f"invalid JSON line: {exc}") from None
    if not isinstance(value, dict):
        raise OllamaStreamError("upstream_error", "a line that is not a JSON object")
    return value


async def iter_ndjson(
    chunks: AsyncIterable[bytes], max_line_bytes: int = MAX_LINE_BYTES
) -> AsyncIterator[dict[str, Any]]:
    """Objects from a byte stream, in order."""
    decoder = NDJSONDecoder(max_line_bytes)
    async for chunk in chunks:
        for value in decoder.feed(chunk):
            yield value
    for value in decoder.close():
        yield value
