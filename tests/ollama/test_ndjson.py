"""NDJSON from bytes: chunk boundaries anywhere, UTF-8 split mid-character, long lines."""

from __future__ import annotations

import json

import pytest

from ollama_web.ollama.errors import OllamaStreamError
from ollama_web.ollama.ndjson import NDJSONDecoder, iter_ndjson

LINES = [
    {"message": {"role": "assistant", "content": "Hello wörld — 你好 🌍"}, "done": False},
    {"message": {"role": "assistant", "content": "\u003c&\u003e"}, "done": False},
    {"message": {"role": "assistant", "content": ""}, "done": True, "done_reason": "stop"},
]
BODY = b"".join(json.dumps(line, ensure_ascii=False).encode() + b"\n" for line in LINES)


def decode_in_pieces(data: bytes, size: int) -> list[dict[str, object]]:
    decoder = NDJSONDecoder()
    out = []
    for start in range(0, len(data), size):
        out += decoder.feed(data[start : start + size])
    return out + decoder.close()


@pytest.mark.parametrize("size", [1, 2, 3, 5, 7, 64, len(BODY)])
def test_any_chunking_gives_the_same_objects(size: int) -> None:
    assert decode_in_pieces(BODY, size) == LINES


def test_every_split_point_inside_multibyte_characters_is_handled() -> None:
    for cut in range(1, len(BODY)):
        decoder = NDJSONDecoder()
        assert decoder.feed(BODY[:cut]) + decoder.feed(BODY[cut:]) + decoder.close() == LINES


def test_a_line_longer_than_8_mb_is_parsed() -> None:
    context = list(range(1_500_000))  # about 11 MB of digits, like generate's `context`
    line = json.dumps({"done": True, "context": context}).encode() + b"\n"
    assert len(line) > 8 * 1024 * 1024
    (parsed,) = decode_in_pieces(line, 65536)
    assert parsed["context"] == context


def test_a_line_over_the_cap_is_an_upstream_error() -> None:
    decoder = NDJSONDecoder(max_line_bytes=1000)
    with pytest.raises(OllamaStreamError) as caught:
        decoder.feed(b"{" + b" " * 2000)
    assert caught.value.kind == "upstream_error"


def test_last_line_without_newline_and_blank_lines() -> None:
    decoder = NDJSONDecoder()
    assert decoder.feed(b'\n{"a":1}\n\r\n{"b"') == [{"a": 1}]
    assert decoder.feed(b":2}") == []
    assert decoder.close() == [{"b": 2}]
    assert decoder.close() == []


@pytest.mark.parametrize("line", [b"not json\n", b"[1,2]\n", b'{"a":"\xff"}\n'])
def test_garbage_lines_are_upstream_errors(line: bytes) -> None:
    with pytest.raises(OllamaStreamError) as caught:
        NDJSONDecoder().feed(line)
    assert caught.value.kind == "upstream_error"
    assert caught.value.code == "OLLAMA_STREAM_ERROR"


async def test_iter_ndjson_over_an_async_byte_stream() -> None:
    async def pieces():  # type: ignore[no-untyped-def]
        for start in range(0, len(BODY), 3):
            yield BODY[start : start + 3]

    assert [obj async for obj in iter_ndjson(pieces())] == LINES


@pytest.mark.parametrize(
    "line",
    [
        b'{"a":1}\n',
        b' \t{"a":[1,2]}\r\n',
        b'{"a":1} \n',
        b'{"a":1}x\n',
        b'{"a":1}{"b":2}\n',
        b'{"a":1}\xc2\xa0\n',  # a no-break space is not JSON whitespace
        b'{"a":NaN}\n',
        b'{"a"\n',
        b"[1]\n",
        b'"s"\n',
        b"\xff\n",
    ],
)
def test_a_line_is_decoded_exactly_as_json_loads_would(line: bytes) -> None:
    """The C scanner's shortcut changes nothing: what json.loads takes as an object is that
    object, and anything else is an upstream error."""
    try:
        expected = json.loads(line.decode())
    except ValueError:
        expected = None
    if isinstance(expected, dict):
        assert NDJSONDecoder().feed(line) == [expected]
    else:
        with pytest.raises(OllamaStreamError):
            NDJSONDecoder().feed(line)
