"""CORS preflights: a refused one answers the error envelope; allowed ones are untouched."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import httpx
import pytest
from fastapi import FastAPI

from ollama_web.core.config import Settings
from tests.conftest import asgi_client

ALLOWED_ORIGIN = "https://chat.example.org"


@pytest.fixture
async def cors_client(
    app_factory: Callable[[Settings], Awaitable[FastAPI]],
    settings_factory: Callable[..., Settings],
) -> httpx.AsyncClient:
    app = await app_factory(settings_factory(cors_origins=ALLOWED_ORIGIN))
    return asgi_client(app)


async def preflight(
    client: httpx.AsyncClient, origin: str, method: str = "POST", headers: str = "content-type"
) -> httpx.Response:
    return await client.options(
        "/api/conversations",
        headers={
            "Origin": origin,
            "Access-Control-Request-Method": method,
            "Access-Control-Request-Headers": headers,
            "X-Request-ID": "preflight-1",
        },
    )


async def test_a_refused_preflight_answers_the_error_envelope(
    cors_client: httpx.AsyncClient,
) -> None:
    async with cors_client as client:
        origin = await preflight(client, "https://evil.example")
        method = await preflight(client, ALLOWED_ORIGIN, method="TRACE")
        header = await preflight(client, ALLOWED_ORIGIN, headers="content-type, X-Evil")
        everything = await preflight(client, "https://evil.example", "TRACE", "x-evil")
    for response in (origin, method, header, everything):
        assert response.status_code == 403
        assert response.headers["content-type"] == "application/json"
        assert response.headers["x-request-id"] == "preflight-1"
        assert "origin" in response.headers["vary"].lower()
        body = response.json()
        assert body["error"] == "FORBIDDEN"
        assert body["request_id"] == "preflight-1"
    assert origin.json()["details"] == {"refused": ["origin"], "origin": "https://evil.example"}
    assert "access-control-allow-origin" not in origin.headers
    assert method.json()["details"] == {"refused": ["method"], "method": "TRACE"}
    assert header.json()["details"] == {"refused": ["headers"], "headers": ["x-evil"]}
    assert everything.json()["details"]["refused"] == ["origin", "method", "headers"]
    assert everything.json()["message"] == (
        "CORS preflight refused: origin, method, headers not allowed."
    )


async def test_allowed_preflights_and_simple_requests_are_unchanged(
    cors_client: httpx.AsyncClient,
) -> None:
    async with cors_client as client:
        allowed = await preflight(client, ALLOWED_ORIGIN, headers="authorization, x-csrf-token")
        simple = await client.get("/info", headers={"Origin": ALLOWED_ORIGIN})
        foreign = await client.get("/info", headers={"Origin": "https://evil.example"})
        plain = await client.options("/api/conversations")
    assert allowed.status_code == 200
    assert allowed.text == "OK"
    assert allowed.headers["access-control-allow-origin"] == ALLOWED_ORIGIN
    assert allowed.headers["access-control-allow-credentials"] == "true"
    assert simple.status_code == 200
    assert simple.headers["access-control-allow-origin"] == ALLOWED_ORIGIN
    assert foreign.status_code == 200
    assert "access-control-allow-origin" not in foreign.headers
    assert plain.status_code == 405, "an OPTIONS that is no preflight reaches the routes"
