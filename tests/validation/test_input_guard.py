"""The input guard: NUL and unpaired surrogates are refused at the edge, everything else
passes untouched (and is never buffered beyond MAX_REQUEST_BYTES)."""

from __future__ import annotations

import gzip
import json
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest
from fastapi import APIRouter, FastAPI

from ollama_web.core.config import Settings
from ollama_web.middleware.input_guard import (
    MAX_JSON_VALUES,
    has_non_json_constant,
    json_has_bad_escape,
    json_values_exceed,
)
from tests.conftest import asgi_client
from tests.fixtures.auth import create_test_user

echo_router = APIRouter()


@echo_router.post("/probe/echo/{value}")
async def echo(value: str, body: dict[str, str]) -> dict[str, object]:
    return {"value": value, "body": body}


@pytest.mark.parametrize(
    ("text", "bad"),
    [
        ('{"a": "plain"}', False),
        ('{"a": "\\u00e9\\u4e2d"}', False),
        ('{"a": "\\ud83d\\ude00"}', False),  # a proper surrogate pair (an emoji)
        ('{"a": "\\\\u0000"}', False),  # an escaped backslash, then the text u0000
        ('{"a": "\\u0000"}', True),
        ('{"a": "x\\\\\\u0000"}', True),  # backslash pair, then a real escape
        ('{"a": "\\ud800"}', True),
        ('{"a": "\\udc00\\ud800"}', True),
        ('{"a": "\\ud83dx\\ude00"}', True),
        ('{"a": "\\ud83d\\ud83d\\ude00"}', True),
        ('{"a": "\\\\\\ud83d\\ude00\\\\"}', False),  # pairs of backslashes around a pair
        ('{"a": "\\\\\\\\ud800"}', False),  # two escaped backslashes, then text
        ('{"a": "\\ud83d\\ude00\\udc00"}', True),  # a pair, then a lone low half
        ('{"a": "\\uD83D\\uDE00", "\\ud800": 1}', True),  # upper case; a key
        ('{"a": "\\\\\\u0000"}', True),
        ('{"a": "\\ud83d\\\\\\ude00"}', True),  # an escaped backslash between the halves
    ],
)
def test_json_escapes(text: str, bad: bool) -> None:
    assert json_has_bad_escape(text.encode()) is bad
    if not bad:
        json.loads(text)  # the cases really are JSON


@pytest.fixture
async def guarded(
    app_factory: Callable[[Settings], Awaitable[FastAPI]],
    settings_factory: Callable[..., Settings],
) -> FastAPI:
    app = await app_factory(settings_factory(max_request_bytes=4096))
    app.include_router(echo_router)
    return app


async def test_hostile_text_passes_verbatim_but_nul_and_surrogates_are_refused(
    guarded: FastAPI,
) -> None:
    hostile = "<script>'; DROP TABLE x; --../../etc"
    async with asgi_client(guarded) as client:
        ok = await client.post("/probe/echo/abc", json={"text": hostile})
        nul_body = await client.post(
            "/probe/echo/abc", content=b'{"text": "a\\u0000b"}',
            headers={"content-type": "application/json"},
        )  # fmt: skip
        untyped = await client.post("/probe/echo/abc", content=b'{"text": "\\ud800"}')
        nul_path = await client.post("/probe/echo/a%00b", json={"text": "x"})
        nul_query = await client.post("/probe/echo/abc?q=%00", json={"text": "x"})
    assert ok.json() == {"value": "abc", "body": {"text": hostile}}
    for refused in (nul_body, untyped, nul_path, nul_query):
        assert refused.status_code == 422
        assert refused.json()["error"] == "VALIDATION_ERROR"
        assert refused.json()["request_id"] == refused.headers["x-request-id"]
    locations = [
        [field["loc"] for field in response.json()["details"]["fields"]]
        for response in (nul_body, untyped, nul_path, nul_query)
    ]
    assert locations == [[["text"]], [["text"]], [["path"]], [["query", "q"]]]


async def test_invalid_json_is_left_to_the_route(guarded: FastAPI) -> None:
    async with asgi_client(guarded) as client:
        response = await client.post(
            "/probe/echo/abc", content=b'{"text": "\\\\u0000\\u0000',
            headers={"content-type": "application/json"},
        )  # fmt: skip
    assert response.status_code == 400
    assert response.json()["error"] == "INVALID_JSON"


@pytest.mark.parametrize(
    ("text", "found"),
    [
        ('{"a": NaN}', True),
        ('{"a": -Infinity}', True),
        ("[1, Infinity]", True),
        ('{"a":"x\\\\",  "b": NaN}', True),  # an escaped backslash ends the string
        ('{"a": "NaN", "b": "-Infinity"}', False),
        ('{"a": "say \\"NaN\\" or Infinity"}', False),  # inside an escaped quote
        ('{"NaN": 1.5e308}', False),
    ],
)
def test_nan_and_infinity_outside_strings(text: str, found: bool) -> None:
    assert has_non_json_constant(text.encode()) is found
    if not found:
        json.loads(text)


async def test_nan_and_infinity_literals_are_not_json(guarded: FastAPI) -> None:
    """Python's parser reads them (the route would answer 422 as if a field were wrong);
    RFC 8259 has no such values: 400 INVALID_JSON, as for any other text that is not JSON.
    The words inside strings are text like any other."""
    async with asgi_client(guarded) as client:
        refused = [
            await client.post(
                "/probe/echo/abc", content=body, headers={"content-type": "application/json"}
            )
            for body in (b'{"text": NaN}', b'{"text": -Infinity}', b'{"a": "b", "c": Infinity}')
        ]
        words = await client.post("/probe/echo/abc", json={"text": "NaN is not -Infinity"})
    for response in refused:
        assert response.status_code == 400, response.text
        assert response.json()["error"] == "INVALID_JSON"
        assert "NaN" in response.json()["message"]
    assert words.json()["body"] == {"text": "NaN is not -Infinity"}


async def test_a_body_in_a_content_coding_is_415(guarded: FastAPI) -> None:
    """None is decoded: a gzip body was read as JSON that is not UTF-8 (400, saying so)."""
    document = json.dumps({"text": "compressed"}).encode()
    async with asgi_client(guarded) as client:
        gzipped = await client.post(
            "/probe/echo/abc",
            content=gzip.compress(document),
            headers={"content-type": "application/json", "content-encoding": "gzip"},
        )
        identity = await client.post(
            "/probe/echo/abc",
            content=document,
            headers={"content-type": "application/json", "content-encoding": "Identity"},
        )
    assert gzipped.status_code == 415, gzipped.text
    assert gzipped.json()["error"] == "UNSUPPORTED_MEDIA_TYPE"
    assert gzipped.json()["details"] == {"content_encoding": "gzip"}
    assert identity.json()["body"] == {"text": "compressed"}


@pytest.mark.parametrize("encoding", ["utf-16-le", "utf-16", "utf-32"])
async def test_json_that_is_not_utf8_is_refused(guarded: FastAPI, encoding: str) -> None:
    """Python's JSON parser also reads UTF-16 and UTF-32, where the escape scan would miss a
    lone surrogate or a NUL (a 500 when stored); RFC 8259 JSON is UTF-8."""
    async with asgi_client(guarded) as client:
        responses = [
            await client.post(
                "/probe/echo/abc",
                content=text.encode(encoding),
                headers={"content-type": "application/json"},
            )
            for text in ('{"text": "\\ud800"}', '{"text": "a\\u0000b"}', '{"text": "fine"}')
        ]
    for response in responses:
        assert response.status_code == 400, response.text
        assert response.json()["error"] == "INVALID_JSON"
        assert "UTF-8" in response.json()["message"]


async def test_a_chunked_body_is_still_cut_at_the_size_limit(guarded: FastAPI) -> None:
    async def chunks() -> AsyncIterator[bytes]:
        yield b'{"text": "'
        for _ in range(100):
            yield b"x" * 1024
        yield b'"}'

    async with asgi_client(guarded) as client:
        response = await client.post(
            "/probe/echo/abc", content=chunks(), headers={"content-type": "application/json"}
        )
    assert response.status_code == 413
    assert response.json()["error"] == "PAYLOAD_TOO_LARGE"


@pytest.mark.parametrize(
    "body",
    [
        b"[" + b"{}," * MAX_JSON_VALUES + b"{}]",  # ~200 MB of dicts once parsed
        b'{"a":[' + b'"ab",' * MAX_JSON_VALUES + b'"ab"]}',
        b"{" + b"".join(b'"k%d":0,' % n for n in range(MAX_JSON_VALUES)) + b'"k":0}',
    ],
)
async def test_a_json_body_of_too_many_values_is_refused_before_it_is_parsed(
    app_factory: Callable[[Settings], Awaitable[FastAPI]],
    settings_factory: Callable[..., Settings],
    body: bytes,
) -> None:
    """Before authentication too: the body is refused where the route reads it, so the
    caller gets 401 first, and the parser never builds the objects."""
    app = await app_factory(settings_factory())
    user = await create_test_user(app)
    async with asgi_client(app) as client:
        anonymous = await client.post("/api/conversations/import", content=body)
        refused = await client.post(
            "/api/conversations/import",
            content=body,
            headers={"Content-Type": "application/json", **user.headers},
        )
    assert anonymous.status_code == 401
    assert refused.status_code == 413, refused.text
    assert refused.json()["error"] == "PAYLOAD_TOO_LARGE"
    assert refused.json()["details"] == {"max_json_values": MAX_JSON_VALUES}


@pytest.mark.parametrize(
    "text",
    [
        # Structure inside strings is text: commas, brackets, escaped quotes and backslashes.
        json.dumps({"content": ',[{"' * MAX_JSON_VALUES}),
        json.dumps(["\\", ',"[{' * 10, 'x\\\\",,,'] * (MAX_JSON_VALUES // 4)),
    ],
)
def test_values_inside_strings_are_not_counted(text: str) -> None:
    assert not json_values_exceed(text.encode(), MAX_JSON_VALUES)
    assert json_values_exceed(text.encode() + b"," * MAX_JSON_VALUES, MAX_JSON_VALUES)


def test_a_body_just_under_the_values_limit_passes() -> None:
    values = MAX_JSON_VALUES - 1
    body = b"[" + b"0," * (values - 2) + b"0]"  # the array and values - 1 numbers
    assert not json_values_exceed(body, MAX_JSON_VALUES)
    assert len(json.loads(body)) + 1 == values
