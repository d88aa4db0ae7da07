"""Rotating or revoking a key while another request rotates or revokes it: the one that
commits first wins, the other changes nothing (injected deterministically: the other's
write commits between this request's read of the key and its own write)."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import func, select, update

from ollama_web.db import ApiKey, AuditEvent
from ollama_web.db.base import utcnow
from ollama_web.keys import router as keys_router
from ollama_web.keys import service as keys_service
from tests.fixtures.auth import TestUser, execute_sql
from tests.fixtures.races import delete_right_before, used_once


async def audit_count(app: FastAPI, action: str) -> int:
    stmt = select(func.count()).where(AuditEvent.action == action)
    count: int = (await execute_sql(app, stmt)).scalar_one()
    return count


async def the_key(client: httpx.AsyncClient, user: TestUser) -> str:
    await used_once(client, user)
    listed = await client.get("/api/keys", headers=user.headers)
    key_id: str = listed.json()["items"][0]["id"]
    return key_id


@pytest.mark.parametrize(
    "meanwhile",
    [
        {"revoked_at": utcnow()},
        {"rotated_at": utcnow(), "grace_until": utcnow()},  # another rotation, grace 0
    ],
    ids=["revoked", "rotated"],
)
async def test_a_key_revoked_or_rotated_meanwhile_is_not_rotated(
    app: FastAPI,
    client: httpx.AsyncClient,
    regular_user: TestUser,
    monkeypatch: pytest.MonkeyPatch,
    meanwhile: dict[str, Any],
) -> None:
    """Twenty rotations of one key at once left ten live replacements on SQLite; a
    revocation racing a rotation (by whoever holds the leaked key) left a live successor."""
    key_id = await the_key(client, regular_user)
    other = update(ApiKey).where(ApiKey.id == key_id).values(**meanwhile)
    delete_right_before(monkeypatch, app, keys_service, "create_key", other)

    response = await client.post(
        f"/api/keys/{key_id}/rotate",
        json={"grace_period_minutes": 5},
        headers=regular_user.headers,
    )

    assert response.status_code == 409, response.text
    assert response.json()["error"] == "API_KEY_NOT_ACTIVE"
    keys = await execute_sql(app, select(ApiKey.id, ApiKey.replaced_by_id))
    assert keys.all() == [(key_id, None)]  # no new key
    assert await audit_count(app, "key.rotated") == 0


async def test_a_key_revoked_meanwhile_is_revoked_and_recorded_once(
    app: FastAPI,
    client: httpx.AsyncClient,
    regular_user: TestUser,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Twenty revocations of one key at once recorded twenty `key.revoked` events."""
    created = await client.post("/api/keys", json={"name": "k"}, headers=regular_user.headers)
    key_id = created.json()["id"]
    revoked = update(ApiKey).where(ApiKey.id == key_id).values(revoked_at=utcnow())
    delete_right_before(monkeypatch, app, keys_router, "revoke_key", revoked)

    response = await client.delete(f"/api/keys/{key_id}", headers=regular_user.headers)

    assert response.status_code == 204
    assert await audit_count(app, "key.revoked") == 0  # the other revocation records it
