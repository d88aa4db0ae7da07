"""A body the server cannot read as JSON is refused for what it is, once the caller is known:
400 INVALID_JSON when it is not JSON (malformed, not UTF-8, nested deeper than the parser
follows), 415 UNSUPPORTED_MEDIA_TYPE when it was not sent as JSON. Never FastAPI's
BAD_REQUEST, never a 422 about a `body` that "should be a valid dictionary".

Callers without credentials: tests/security/test_auth_before_body.py.
"""

from __future__ import annotations

import httpx
import pytest

from tests.fixtures.auth import TestUser, login_session
from tests.security.test_auth_before_body import (
    DEEP_ARRAYS,
    DEEP_OBJECTS,
    JSON_BODY_ENDPOINTS,
    refusal_answers,
)

INVALID_JSON = (400, "INVALID_JSON")
NOT_SENT_AS_JSON = (415, "UNSUPPORTED_MEDIA_TYPE")
# What a caller gets for each of the refused bodies (REFUSED_BODIES there).
EXPECTED = {
    "arrays nested too deeply": INVALID_JSON,
    "objects nested too deeply": INVALID_JSON,
    "not UTF-8": INVALID_JSON,
    "text/plain": NOT_SENT_AS_JSON,
    "a form (curl -d)": NOT_SENT_AS_JSON,
    "multipart": NOT_SENT_AS_JSON,
    "no content type": NOT_SENT_AS_JSON,
}
JSON_HEADERS = {"content-type": "application/json"}


@pytest.mark.parametrize("path", JSON_BODY_ENDPOINTS)
async def test_a_caller_with_a_key_gets_the_refusal_of_the_body(
    client: httpx.AsyncClient, regular_user: TestUser, path: str
) -> None:
    assert await refusal_answers(client, path, regular_user.headers) == EXPECTED


async def test_a_caller_with_a_session_and_its_csrf_token_gets_the_refusal_of_the_body(
    client: httpx.AsyncClient, regular_user: TestUser
) -> None:
    csrf_token = await login_session(client, regular_user)
    answers = await refusal_answers(client, "/api/keys", {"X-CSRF-Token": csrf_token})
    assert answers == EXPECTED


async def test_a_public_route_refuses_the_body_itself(client: httpx.AsyncClient) -> None:
    """The same, but that a route needing no caller reads no body over LARGE_BODY_BYTES
    (the deeply nested ones are 200 KiB and 300 KiB)."""
    too_large = (413, "PAYLOAD_TOO_LARGE")
    assert await refusal_answers(client, "/api/auth/login") == {
        **EXPECTED,
        "arrays nested too deeply": too_large,
        "objects nested too deeply": too_large,
    }


@pytest.mark.parametrize(
    "body",
    [
        DEEP_ARRAYS,
        DEEP_OBJECTS,
        b'{"model": "m", "options": {"stop": ' + DEEP_ARRAYS + b"}}",
        # A \u escape makes the input guard parse the body too (middleware/input_guard.py).
        b'{"model": "a\\u0000b", "x": ' + DEEP_ARRAYS + b"}",
    ],
    ids=["arrays", "objects", "inside a valid body", "with an escape"],
)
async def test_json_nested_too_deeply_is_400_invalid_json(
    client: httpx.AsyncClient, regular_user: TestUser, body: bytes
) -> None:
    response = await client.post(
        "/api/conversations", content=body, headers={**JSON_HEADERS, **regular_user.headers}
    )
    assert response.status_code == 400, response.text
    assert response.json() == {
        "error": "INVALID_JSON",
        "message": "The request body is JSON nested too deeply to be read.",
        "details": {},
        "request_id": response.headers["x-request-id"],
    }


async def test_json_that_is_not_utf8_is_400_invalid_json(
    client: httpx.AsyncClient, regular_user: TestUser
) -> None:
    response = await client.post(
        "/api/conversations",
        content='{"model": "café"}'.encode("latin-1"),
        headers={**JSON_HEADERS, **regular_user.headers},
    )
    assert response.status_code == 400, response.text
    assert response.json()["error"] == "INVALID_JSON"
    assert "UTF-8" in response.json()["message"]


@pytest.mark.parametrize(
    "content_type",
    [
        "text/plain",
        "text/plain; charset=utf-8",
        "application/x-www-form-urlencoded",
        "multipart/form-data; boundary=x",
        "text/json",
        "application/xml",
        "application/octet-stream",
    ],
)
async def test_a_json_body_sent_as_another_media_type_is_415(
    client: httpx.AsyncClient, regular_user: TestUser, content_type: str
) -> None:
    response = await client.post(
        "/api/conversations",
        content=b'{"model": "m"}',
        headers={"content-type": content_type, **regular_user.headers},
    )
    assert response.status_code == 415, response.text
    body = response.json()
    assert body["error"] == "UNSUPPORTED_MEDIA_TYPE"
    assert "Content-Type: application/json" in body["message"]
    assert body["details"] == {"content_type": content_type.split(";")[0]}


async def test_a_json_body_without_a_content_type_is_415(
    client: httpx.AsyncClient, regular_user: TestUser
) -> None:
    """FastAPI's strict_content_type: a body without a Content-Type is not read as JSON (a
    cross-site page can send one without a CORS preflight). Refused before, as a 422."""
    response = await client.post(
        "/api/conversations", content=b'{"model": "m"}', headers=regular_user.headers
    )
    assert response.status_code == 415, response.text
    assert response.json()["details"] == {"content_type": None}


@pytest.mark.parametrize(
    "content_type",
    [
        "application/json",
        "application/json; charset=utf-8",
        "Application/JSON",
        "application/vnd.ollama-web+json",
        "application/merge-patch+json",
    ],
)
async def test_json_media_types_are_read(
    client: httpx.AsyncClient, regular_user: TestUser, content_type: str
) -> None:
    response = await client.post(
        "/api/keys",
        content=b'{"name": "typed"}',
        headers={"content-type": content_type, **regular_user.headers},
    )
    assert response.status_code == 201, response.text


async def test_no_body_under_another_media_type_is_still_a_missing_body(
    client: httpx.AsyncClient, regular_user: TestUser
) -> None:
    response = await client.post(
        "/api/keys", headers={"content-type": "text/plain", **regular_user.headers}
    )
    assert response.status_code == 422, response.text
    assert response.json()["details"]["fields"] == [
        {"loc": ["body"], "message": "Field required", "type": "missing"}
    ]


@pytest.mark.parametrize("content_type", ["application/json", "application/merge-patch+json"])
@pytest.mark.parametrize("path", ["/api/keys", "/api/chat/message"])
async def test_an_empty_body_sent_as_json_is_400_invalid_json(
    client: httpx.AsyncClient, regular_user: TestUser, content_type: str, path: str
) -> None:
    """Nothing is not a JSON document (API-CONTRACT: "body is not valid JSON"); it was a
    422 saying the body is missing."""
    response = await client.post(
        path, content=b"", headers={"content-type": content_type, **regular_user.headers}
    )
    assert (response.status_code, response.json()["error"]) == INVALID_JSON, response.text


async def test_no_body_and_no_content_type_is_a_missing_body(
    client: httpx.AsyncClient, regular_user: TestUser
) -> None:
    response = await client.post("/api/keys", headers=regular_user.headers)
    assert response.status_code == 422, response.text
    assert response.json()["details"]["fields"][0]["type"] == "missing"
