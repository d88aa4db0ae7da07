"""Authentication runs before body validation (API-CONTRACT): FastAPI reads the body before
it resolves dependencies, so body errors must not answer an unauthenticated caller first."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import httpx
import pytest

from tests.fixtures.auth import create_test_user, login_session

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


@pytest.mark.parametrize("path", ["/api/models/pull", "/api/admin/users"])
async def test_invalid_json_from_a_user_to_an_administrators_route_is_403(
    client: httpx.AsyncClient, regular_user: Any, path: str
) -> None:
    """As a valid body or one sent as text is: who may call comes before the body."""
    headers = {"content-type": "application/json", **regular_user.headers}
    response = await client.post(path, content=BROKEN_JSON, headers=headers)
    assert (response.status_code, response.json()["error"]) == (403, "FORBIDDEN")


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


# -- a body is read only once its caller may send one (a real server, raw sockets) --------

LARGE = 5_000_000  # announced, above LARGE_BODY_BYTES and below MAX_REQUEST_BYTES


async def _answer_to_head(
    base_url: str, path: str, headers: dict[str, str], *, wait: float = 5.0
) -> tuple[int | None, asyncio.StreamWriter, asyncio.StreamReader]:
    """Send only a request's head (its body announced, not sent): the status the server
    answers without the body, or None when it waits for the body."""
    url = httpx.URL(base_url)
    reader, writer = await asyncio.open_connection(url.host, url.port)
    lines = [f"POST {path} HTTP/1.1", f"Host: {url.host}", "Content-Type: application/json"]
    lines += [f"{name}: {value}" for name, value in headers.items()]
    writer.write(("\r\n".join(lines) + "\r\n\r\n").encode())
    await writer.drain()
    try:
        status_line = await asyncio.wait_for(reader.readline(), wait)
    except TimeoutError:
        return None, writer, reader
    return int(status_line.split()[1]), writer, reader


@pytest.mark.parametrize(
    "credentials",
    [{}, {"Authorization": "Bearer ow_not_a_key_at_all_000000000000"}, {"X-API-Key": "nope"}],
    ids=["none", "a wrong bearer key", "a wrong X-API-Key"],
)
@pytest.mark.parametrize("length", ["Content-Length", "Transfer-Encoding"])
async def test_a_large_body_is_refused_before_it_is_sent_without_valid_credentials(
    app: Any, live_server: Any, credentials: dict[str, str], length: str
) -> None:
    """No one unauthenticated has megabytes parsed: 401 comes before the body is read
    (without credentials whatever its size; with credentials that fail, when it is large
    or of unknown length)."""
    size = {"Content-Length": str(LARGE)} if length == "Content-Length" else {}
    chunked = {"Transfer-Encoding": "chunked"} if length == "Transfer-Encoding" else {}
    async with live_server(app) as base_url:
        for path in JSON_BODY_ENDPOINTS:
            headers = {**credentials, **size, **chunked}
            status, writer, _ = await _answer_to_head(base_url, path, headers)
            writer.close()
            assert status == 401, path


async def test_a_large_body_of_a_known_caller_is_read(
    app: Any, live_server: Any, regular_user: Any
) -> None:
    """With a valid key the server waits for the body, then answers on it."""
    content = "x" * 200_000
    body = json.dumps({"model": "llama3.2", "system_prompt": content}).encode()
    async with live_server(app) as base_url:
        headers = {**regular_user.headers, "Content-Length": str(len(body))}
        status, writer, reader = await _answer_to_head(
            base_url, "/api/conversations", headers, wait=0.5
        )
        assert status is None  # waiting for the body
        writer.write(body)
        status_line = await asyncio.wait_for(reader.readline(), 5)
        writer.close()
    assert int(status_line.split()[1]) == 422  # the prompt is over SYSTEM_PROMPT_CHARS


async def test_a_large_body_with_a_session_is_authenticated_first_and_its_route_works(
    app: Any, live_server: Any, regular_user: Any
) -> None:
    """A browser session (CSRF checked before the body) posting a large body: the caller
    is authenticated before it is read, and the route runs in its own transaction."""
    prompt = "<script>" + "é" * 70_000
    async with live_server(app) as base_url, httpx.AsyncClient(base_url=base_url) as http:
        token = await login_session(http, regular_user)
        body = {"model": "llama3.2", "system_prompt": prompt}
        refused = await http.post("/api/conversations", json=body)
        assert refused.status_code == 403  # no CSRF token
        created = await http.post("/api/conversations", json=body, headers={"X-CSRF-Token": token})
        assert created.status_code == 201, created.text
        # The user's row, changed by the route, is its own transaction's (not the one that
        # authenticated): padded past LARGE_BODY_BYTES with JSON whitespace.
        change = {"current_password": regular_user.password, "new_password": "N3w-passw0rd!"}
        padded = json.dumps(change).encode() + b" " * 70_000
        changed = await http.post(
            "/api/auth/password",
            content=padded,
            headers={"X-CSRF-Token": token, "content-type": "application/json"},
        )
        assert changed.status_code == 200, changed.text
        again = await http.post(
            "/api/auth/login",
            json={"username": regular_user.username, "password": "N3w-passw0rd!"},
        )
        assert again.status_code == 200, again.text
    assert created.json()["system_prompt"] == prompt


PUBLIC_BODY_ENDPOINTS = ("/api/auth/login", "/api/auth/setup", "/api/auth/verify")


async def test_a_large_body_to_a_route_that_needs_no_caller_is_refused_unread(
    app: Any, live_server: Any
) -> None:
    """Login, setup and key verification take a few fields: a body announced over
    LARGE_BODY_BYTES is 413 before it is sent, one sent chunked is read up to that much.
    Anyone could otherwise have 10 MiB parsed a request, before any rate limit counts it."""
    async with live_server(app) as base_url:
        for path in PUBLIC_BODY_ENDPOINTS:
            status, writer, _ = await _answer_to_head(
                base_url, path, {"Content-Length": str(LARGE)}
            )
            writer.close()
            assert status == 413, path
        async with httpx.AsyncClient(base_url=base_url) as http:

            async def chunks() -> Any:
                yield b'{"username": "someone", "password": "'
                for _ in range(64):
                    yield b"\\u00e9" * 1000
                yield b'"}'

            refused = await http.post(
                "/api/auth/login", content=chunks(), headers={"content-type": "application/json"}
            )
            small = await http.post(
                "/api/auth/login",
                json={"username": "someone", "password": "é" * 1024},
            )
    assert refused.status_code == 413
    assert refused.json()["error"] == "PAYLOAD_TOO_LARGE"
    assert refused.json()["details"] == {"max_bytes": 64 * 1024}
    assert (small.status_code, small.json()["error"]) == (401, "INVALID_CREDENTIALS")


async def test_a_large_body_over_the_rate_limit_is_refused_before_it_is_sent(
    app_factory: Any, settings_factory: Any, database_url: Any, live_server: Any
) -> None:
    """The rate limit is a dependency, run after the body is read; a large one (over
    LARGE_BODY_BYTES) is counted with its caller, before it is read: 429 unread, counted
    once."""
    app = await app_factory(
        settings_factory(
            database_url=database_url, rate_limit_enabled=True, rate_limit_per_minute=3
        )
    )
    user = await create_test_user(app)
    body = json.dumps({"model": "llama3.2", "system_prompt": "x" * 200_000}).encode()
    async with live_server(app) as base_url:
        async with httpx.AsyncClient(base_url=base_url) as http:
            sent = await http.post(
                "/api/conversations",
                content=body,
                headers={**user.headers, "Content-Type": "application/json"},
            )
            listed = await http.get("/api/conversations", headers=user.headers)
        headers = {**user.headers, "Content-Length": str(LARGE)}
        third, writer, _ = await _answer_to_head(base_url, "/api/conversations", headers, wait=0.5)
        writer.close()
        fourth, writer, _ = await _answer_to_head(base_url, "/api/conversations", headers)
        writer.close()
    assert sent.status_code == 422  # read, and counted once (its prompt is too long)
    assert sent.headers["x-ratelimit-remaining"] == "2"
    assert listed.headers["x-ratelimit-remaining"] == "1"
    assert third is None  # allowed: the server waits for its body
    assert fourth == 429  # over the limit: refused before its body is sent
