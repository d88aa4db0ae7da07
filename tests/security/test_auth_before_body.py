"""Authentication runs before body validation (API-CONTRACT): FastAPI reads the body before
it resolves dependencies, so body errors must not answer an unauthenticated caller first."""

from __future__ import annotations

from typing import Any

import httpx

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
