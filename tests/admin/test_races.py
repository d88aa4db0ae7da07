"""Administrators changing the same accounts at once. What a user is when the change is
written decides, not what it was when the request loaded it: the other change commits in
between, injected deterministically right after the route's read."""

from __future__ import annotations

import asyncio

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import case, delete, func, select, update

from ollama_web.admin import router as admin_router
from ollama_web.db import AuditEvent, User
from tests.fixtures.auth import TestUser, UserFactory, execute_sql
from tests.fixtures.races import delete_right_after, used_once


async def active_admins(app: FastAPI) -> int:
    stmt = select(func.count()).where(User.role == "admin", User.is_active.is_(True))
    count: int = (await execute_sql(app, stmt)).scalar_one()
    return count


async def audit_count(app: FastAPI, action: str) -> int:
    stmt = select(func.count()).where(AuditEvent.action == action)
    count: int = (await execute_sql(app, stmt)).scalar_one()
    return count


@pytest.mark.parametrize("method", ["PATCH", "DELETE"])
async def test_a_user_promoted_meanwhile_is_not_removed_as_the_last_admin(
    app: FastAPI,
    client: httpx.AsyncClient,
    admin_user: TestUser,
    regular_user: TestUser,
    monkeypatch: pytest.MonkeyPatch,
    method: str,
) -> None:
    """Loaded as a plain user, then promoted while every other admin was demoted: the
    disable (or delete) was not checked as an admin's, and left no active admin at all
    (three requests at once did it on SQLite)."""
    await used_once(client, admin_user)
    only_admin = update(User).values(role=case((User.id == regular_user.id, "admin"), else_="user"))
    delete_right_after(monkeypatch, app, admin_router, "get_user_or_404", only_admin)

    response = await client.request(
        method,
        f"/api/admin/users/{regular_user.id}",
        json={"is_active": False} if method == "PATCH" else None,
        headers=admin_user.headers,
    )

    assert response.status_code == 409, response.text
    assert response.json()["error"] == "LAST_ADMIN"
    assert await active_admins(app) == 1


async def test_a_demotion_of_a_user_promoted_meanwhile_is_written(
    app: FastAPI,
    client: httpx.AsyncClient,
    admin_user: TestUser,
    regular_user: TestUser,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Loaded as a plain user, `role: "user"` looked like no change and was not written:
    200, and the user stayed an admin."""
    await used_once(client, admin_user)
    promote = update(User).where(User.id == regular_user.id).values(role="admin")
    delete_right_after(monkeypatch, app, admin_router, "get_user_or_404", promote)

    response = await client.patch(
        f"/api/admin/users/{regular_user.id}", json={"role": "user"}, headers=admin_user.headers
    )

    assert response.status_code == 200, response.text
    assert response.json()["role"] == "user"
    assert (await client.get("/api/admin/users", headers=regular_user.headers)).status_code == 403


async def test_a_change_already_made_is_not_recorded_again(
    app: FastAPI, client: httpx.AsyncClient, admin_user: TestUser, regular_user: TestUser
) -> None:
    """Each of ten disables at once recorded an `admin.user_updated`."""
    url = f"/api/admin/users/{regular_user.id}"
    for _ in range(2):
        response = await client.patch(url, json={"is_active": False}, headers=admin_user.headers)
        assert response.status_code == 200

    assert await audit_count(app, "admin.user_updated") == 1


async def test_a_user_deleted_meanwhile_is_deleted_and_recorded_once(
    app: FastAPI,
    client: httpx.AsyncClient,
    admin_user: TestUser,
    regular_user: TestUser,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    await used_once(client, admin_user)
    gone = delete(User).where(User.id == regular_user.id)
    delete_right_after(monkeypatch, app, admin_router, "get_user_or_404", gone)

    response = await client.delete(
        f"/api/admin/users/{regular_user.id}", headers=admin_user.headers
    )

    assert response.status_code == 204
    assert await audit_count(app, "admin.user_deleted") == 0  # the other delete records it


async def test_deletes_and_resets_of_the_same_users_at_once_never_fail(
    app: FastAPI, client: httpx.AsyncClient, admin_user: TestUser, user_factory: UserFactory
) -> None:
    """On PostgreSQL a delete (holding the admins' rows FOR UPDATE) and a password reset
    (holding the user, then checking its audit event's actor, an admin) deadlocked: 500."""
    await used_once(client, admin_user)
    for _ in range(5):
        user = await user_factory()
        url = f"/api/admin/users/{user.id}"
        responses = await asyncio.gather(
            client.delete(url, headers=admin_user.headers),
            client.patch(url, json={"password": "reset password"}, headers=admin_user.headers),
            client.patch(url, json={"is_active": False}, headers=admin_user.headers),
        )
        assert {r.status_code for r in responses} <= {200, 204, 404}, [r.text for r in responses]


@pytest.mark.parametrize("method", ["PATCH", "DELETE"])
async def test_an_admin_deleted_while_their_change_runs_gets_401_and_nothing_changes(
    app: FastAPI,
    client: httpx.AsyncClient,
    admin_user: TestUser,
    user_factory: UserFactory,
    monkeypatch: pytest.MonkeyPatch,
    method: str,
) -> None:
    """Two admins deleting each other at once: the one whose account went first had its
    change rejected by the database only at its audit event (the actor's row is gone), a
    500. It is the 401 of a deleted account, and its change is rolled back."""
    await user_factory(role="admin")  # a third: the last-admin rule is not what refuses
    target = await user_factory()
    await used_once(client, admin_user)
    gone = delete(User).where(User.id == admin_user.id)
    delete_right_after(monkeypatch, app, admin_router, "get_user_or_404", gone)

    url = f"/api/admin/users/{target.id}"
    if method == "DELETE":
        response = await client.delete(url, headers=admin_user.headers)
    else:
        response = await client.patch(url, json={"is_active": False}, headers=admin_user.headers)

    assert response.status_code == 401, response.text
    assert response.json()["error"] == "UNAUTHENTICATED"
    still = (await execute_sql(app, select(User.is_active).where(User.id == target.id))).all()
    assert still == [(True,)]
