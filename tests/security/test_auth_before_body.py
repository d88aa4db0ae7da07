"""Authentication runs before body validation (API-CONTRACT): FastAPI reads the body before
it resolves dependencies, so body errors must not answer an unauthenticated caller first."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from tests.fixtures.auth import login_session

BROKEN_JSON = b'{"name": '


async def test_invalid_json_without_credentials_is_401(client: httpx.AsyncClient) -> None:
    response = await client.post(
        "/api/keys", content=BROKEN_JSON, headers={"content-type": "application/json"}
    )
    assert response.status_code == 401
    assert response.json()["error"] == "UNAUTHENTICATED"


async def test_invalid_json_with_credentials_is_400(
    client: httpx.AsyncClient, regular_user: Any
) -> None:
    response = await client.post(
        "/api/keys",
        content=BROKEN_JSON,
        headers={"content-type": "application/json", **regular_user.headers},
    )
    assert response.status_code == 400
    assert response.json()["error"] == "INVALID_JSON"


async def test_public_route_with_invalid_json_is_400(client: httpx.AsyncClient) -> None:
    response = await client.post(
        "/api/auth/login", content=BROKEN_JSON, headers={"content-type": "application/json"}
    )
    assert response.status_code == 400
    assert response.json()["error"] == "INVALID_JSON"


async def test_nul_in_body_without_credentials_is_401(client: httpx.AsyncClient) -> None:
    response = await client.post(
        "/api/keys",
        content=b'{"name": "a\\u0000b"}',
        headers={"content-type": "application/json"},
    )
    assert response.status_code == 401


async def test_nul_in_body_with_credentials_is_422(
    client: httpx.AsyncClient, regular_user: Any
) -> None:
    response = await client.post(
        "/api/keys",
        content=b'{"name": "a\\u0000b"}',
        headers={"content-type": "application/json", **regular_user.headers},
    )
    assert response.status_code == 422
    assert response.json()["error"] == "VALIDATION_ERROR"


# Deeper than any JSON parser's recursion limit, far below MAX_REQUEST_BYTES (200 kB).
DEEP_ARRAYS = b"[" * 100_000 + b"]" * 100_000
DEEP_OBJECTS = b'{"a": ' * 50_000 + b"1" + b"}" * 50_000
A_VALID_BODY = b'{"name": "k", "model": "m", "content": "hi"}'
# Bodies refused for what they are (bad JSON or not sent as JSON): label -> (body, type).
REFUSED_BODIES: dict[str, tuple[bytes, str | None]] = {
    "arrays nested too deeply": (DEEP_ARRAYS, "application/json"),
    "objects nested too deeply": (DEEP_OBJECTS, "application/json"),
    "not UTF-8": (b'{"name": "caf\xe9"}', "application/json"),
    "text/plain": (A_VALID_BODY, "text/plain"),
    "a form (curl -d)": (A_VALID_BODY, "application/x-www-form-urlencoded"),
    "multipart": (A_VALID_BODY, "multipart/form-data; boundary=x"),
    "no content type": (A_VALID_BODY, None),
}
JSON_BODY_ENDPOINTS = ("/api/conversations", "/api/chat/stream", "/api/keys")


async def refusal_answers(
    client: httpx.AsyncClient, path: str, headers: dict[str, str] | None = None
) -> dict[str, tuple[int, str]]:
    """label -> (status, error code) for each refused body posted to `path`."""
    answers = {}
    for label, (body, content_type) in REFUSED_BODIES.items():
        sent = {**(headers or {}), **({"content-type": content_type} if content_type else {})}
        response = await client.post(path, content=body, headers=sent)
        answers[label] = (response.status_code, response.json()["error"])
    return answers


@pytest.mark.parametrize("path", JSON_BODY_ENDPOINTS)
async def test_any_refused_body_without_credentials_is_401(
    client: httpx.AsyncClient, path: str
) -> None:
    answers = await refusal_answers(client, path)
    assert answers == dict.fromkeys(REFUSED_BODIES, (401, "UNAUTHENTICATED"))


async def test_any_refused_body_with_a_session_but_no_csrf_token_is_403(
    client: httpx.AsyncClient, regular_user: Any
) -> None:
    """Authentication, its CSRF check included, comes before the body's refusal."""
    await login_session(client, regular_user)
    answers = await refusal_answers(client, "/api/conversations")
    assert answers == dict.fromkeys(REFUSED_BODIES, (403, "CSRF_TOKEN_INVALID"))
