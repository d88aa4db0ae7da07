"""First-user setup: once only, an admin with a key and a session, same-site only."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import httpx
from fastapi import FastAPI

from ollama_web.core.config import Settings
from tests.conftest import asgi_client
from tests.fixtures.auth import UserFactory

SETUP = {"username": "root", "password": "a strong password"}


def session_cookie_header(response: httpx.Response) -> str:
    cookies = [c for c in response.headers.get_list("set-cookie") if c.startswith("ow_session=")]
    assert len(cookies) == 1, response.headers
    return cookies[0]


async def test_setup_creates_the_first_admin_with_key_and_session(
    client: httpx.AsyncClient,
) -> None:
    response = await client.post("/api/auth/setup", json={**SETUP, "email": "root@example.org"})

    assert response.status_code == 201, response.text
    body = response.json()
    assert body["user"]["role"] == "admin"
    assert body["user"]["email"] == "root@example.org"
    assert body["api_key"].startswith("owk_")
    assert len(body["csrf_token"]) == 64
    cookie = session_cookie_header(response)
    assert "HttpOnly" in cookie
    assert "Path=/" in cookie
    assert "samesite=lax" in cookie.lower()
    assert "Secure" not in cookie

    by_key = await client.get(
        "/api/auth/me", headers={"Authorization": f"Bearer {body['api_key']}"}
    )
    assert by_key.json()["auth_method"] == "api_key"
    by_cookie = await client.get("/api/auth/me")
    assert by_cookie.json()["auth_method"] == "session"
    assert by_cookie.json()["user"]["username"] == "root"


async def test_setup_answers_409_once_done(client: httpx.AsyncClient) -> None:
    assert (await client.post("/api/auth/setup", json=SETUP)).status_code == 201

    again = await client.post("/api/auth/setup", json={**SETUP, "username": "other"})

    assert again.status_code == 409
    assert again.json()["error"] == "SETUP_ALREADY_COMPLETED"


async def test_setup_is_refused_when_users_already_exist(
    client: httpx.AsyncClient, user_factory: UserFactory
) -> None:
    await user_factory()

    response = await client.post("/api/auth/setup", json=SETUP)

    assert response.status_code == 409
    assert response.json()["error"] == "SETUP_ALREADY_COMPLETED"


async def test_concurrent_setups_create_exactly_one_admin(app: FastAPI) -> None:
    async def attempt(name: str) -> int:
        async with asgi_client(app) as http:
            response = await http.post("/api/auth/setup", json={**SETUP, "username": name})
            return response.status_code

    statuses = await asyncio.gather(*(attempt(f"admin{n}") for n in range(4)))

    assert sorted(statuses) == [201, 409, 409, 409]


# Cases are looped inside one test (not parametrised) to keep the database fixtures few.
INVALID_SETUPS: list[tuple[dict[str, Any], str]] = [
    ({"username": "root", "password": "short"}, "password"),
    ({"username": "root", "password": "x" * 1025}, "password"),
    ({"username": "ro", "password": "long enough"}, "username"),
    ({"username": "-root", "password": "long enough"}, "username"),
    ({"username": "root", "password": "long enough", "email": "not-an-email"}, "email"),
]
CROSS_SITE: list[dict[str, str]] = [
    {"Origin": "https://evil.example"},
    {"Origin": "null"},
    {"Sec-Fetch-Site": "cross-site"},
    {"Origin": "http://testserver", "Sec-Fetch-Site": "cross-site"},
    # DNS rebinding: a page of attacker.example, its name re-pointed at this server, posts
    # "same-origin" with its own name as Host; a DNS name must be listed in CORS_ORIGINS.
    {"Host": "attacker.example:8000", "Origin": "http://attacker.example:8000"},
    {"Origin": "http://testserver", "Sec-Fetch-Site": "same-origin"},
    {"Host": "127.0.0.1:8000", "Origin": "http://localhost:8000"},
]
SAME_SITE: list[dict[str, str]] = [
    {"Origin": "http://localhost:5173"},  # in CORS_ORIGINS
    {"Host": "127.0.0.1:8000", "Origin": "http://127.0.0.1:8000", "Sec-Fetch-Site": "same-origin"},
    {"Host": "[::1]:8000", "Origin": "http://[::1]:8000"},
    {"Host": "localhost:8000", "Origin": "http://localhost:8000"},
    {"Sec-Fetch-Site": "same-site"},
    {},  # not a browser
]


async def test_setup_rejects_weak_or_malformed_input_with_the_reason(
    client: httpx.AsyncClient,
) -> None:
    for payload, field in INVALID_SETUPS:
        response = await client.post("/api/auth/setup", json=payload)

        assert response.status_code == 422, payload
        body = response.json()
        assert body["error"] == "VALIDATION_ERROR"
        assert [f["loc"] for f in body["details"]["fields"]] == [[field]], payload
        assert body["details"]["fields"][0]["message"]


async def test_whitespace_only_password_is_refused(client: httpx.AsyncClient) -> None:
    response = await client.post("/api/auth/setup", json={"username": "root", "password": " " * 9})

    assert response.status_code == 422
    assert "whitespace" in response.json()["message"]


async def test_cross_site_setup_and_login_are_refused(client: httpx.AsyncClient) -> None:
    for headers in CROSS_SITE:
        for path in ("/api/auth/setup", "/api/auth/login"):
            response = await client.post(path, json=SETUP, headers=headers)
            assert response.status_code == 403, (path, headers)
            body = response.json()
            assert body["error"] == "CROSS_SITE_REQUEST"
            assert body["details"] == {"origin": headers.get("Origin")}
            # Says why: a page elsewhere is told to share the API's host name, a listed-origin
            # problem names CORS_ORIGINS.
            cross = headers.get("Sec-Fetch-Site") == "cross-site"
            site = "another site" if cross else "CORS_ORIGINS"
            assert site in body["message"] or headers.get("Origin") == "null", body
    assert (await client.post("/api/auth/setup", json=SETUP)).status_code == 201


async def test_same_site_setup_and_login_are_accepted(client: httpx.AsyncClient) -> None:
    setup = await client.post("/api/auth/setup", json=SETUP, headers=SAME_SITE[0])
    assert setup.status_code == 201

    for headers in SAME_SITE:
        response = await client.post("/api/auth/login", json=SETUP, headers=headers)
        assert response.status_code == 200, headers


async def test_cookie_is_secure_behind_a_trusted_https_proxy(
    settings_factory: Callable[..., Settings],
    app_factory: Callable[[Settings], Any],
    database_url: str | None,
) -> None:
    app = await app_factory(
        settings_factory(database_url=database_url, trusted_proxies=["127.0.0.1/32"])
    )
    async with asgi_client(app) as http:
        response = await http.post(
            "/api/auth/setup", json=SETUP, headers={"X-Forwarded-Proto": "https"}
        )
    assert "Secure" in session_cookie_header(response)


async def test_forwarded_proto_from_an_untrusted_peer_is_ignored(
    client: httpx.AsyncClient,
) -> None:
    response = await client.post(
        "/api/auth/setup", json=SETUP, headers={"X-Forwarded-Proto": "https"}
    )

    assert "Secure" not in session_cookie_header(response)


async def test_cookie_secure_setting_forces_secure_cookies(
    settings_factory: Callable[..., Settings],
    app_factory: Callable[[Settings], Any],
    database_url: str | None,
) -> None:
    app = await app_factory(settings_factory(database_url=database_url, cookie_secure=True))
    async with asgi_client(app) as http:
        response = await http.post("/api/auth/setup", json=SETUP)
    assert "Secure" in session_cookie_header(response)


async def test_https_request_gets_a_secure_cookie(app: FastAPI) -> None:
    transport = httpx.ASGITransport(app=app, client=("127.0.0.1", 50000))
    async with httpx.AsyncClient(transport=transport, base_url="https://testserver") as http:
        response = await http.post("/api/auth/setup", json=SETUP)
    assert "Secure" in session_cookie_header(response)
