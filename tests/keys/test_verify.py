"""POST /api/auth/verify: the key from a header or the body; distinct 401 codes."""

from __future__ import annotations

from datetime import timedelta

import httpx
from fastapi import FastAPI
from sqlalchemy import update

from ollama_web.db import ApiKey, User
from ollama_web.db.base import utcnow
from tests.fixtures.auth import TestUser, UserFactory, execute_sql


async def test_verify_accepts_the_key_from_a_header_or_the_body(
    client: httpx.AsyncClient, regular_user: TestUser
) -> None:
    for kwargs in (
        {"headers": regular_user.headers},
        {"headers": {"X-API-Key": regular_user.api_key}},
        {"json": {"api_key": regular_user.api_key}},
    ):
        response = await client.post("/api/auth/verify", **kwargs)

        assert response.status_code == 200, response.text
        body = response.json()
        assert body["valid"] is True
        assert body["user"]["id"] == regular_user.id
        assert body["user"]["username"] == regular_user.username
        assert set(body["key"]) == {"id", "name", "prefix", "expires_at"}
        assert body["key"]["prefix"] == regular_user.api_key[:12]


async def test_verify_without_a_key_is_unauthenticated(client: httpx.AsyncClient) -> None:
    response = await client.post("/api/auth/verify")

    assert response.status_code == 401
    assert response.json()["error"] == "UNAUTHENTICATED"


async def test_verify_answers_the_distinct_401_codes(
    app: FastAPI, client: httpx.AsyncClient, user_factory: UserFactory
) -> None:
    past = utcnow() - timedelta(seconds=1)
    for change, code in (
        (None, "INVALID_API_KEY"),
        ("revoked_at", "API_KEY_REVOKED"),
        ("expires_at", "API_KEY_EXPIRED"),
        ("grace_until", "API_KEY_EXPIRED"),
    ):
        user = await user_factory()
        key = user.api_key
        if change is None:
            key = "owk_" + "Z" * 43
        else:
            stmt = update(ApiKey).where(ApiKey.user_id == user.id).values({change: past})
            await execute_sql(app, stmt)

        response = await client.post("/api/auth/verify", json={"api_key": key})

        assert response.status_code == 401, change
        assert response.json()["error"] == code
        assert response.json()["details"] == {}


async def test_verify_refuses_a_disabled_users_key(
    app: FastAPI, client: httpx.AsyncClient, regular_user: TestUser
) -> None:
    await execute_sql(app, update(User).where(User.id == regular_user.id).values(is_active=False))

    response = await client.post("/api/auth/verify", headers=regular_user.headers)

    assert response.status_code == 403
    assert response.json()["error"] == "ACCOUNT_DISABLED"
