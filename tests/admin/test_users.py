"""/api/admin/users: admins only; create, list, change, delete; the last admin stays."""

from __future__ import annotations

from typing import Any

import httpx
from fastapi import FastAPI
from sqlalchemy import func, select

from ollama_web.admin import service as admin_service
from ollama_web.core.db import session_scope
from ollama_web.db import ApiKey, User
from tests.conftest import asgi_client
from tests.fixtures.auth import TestUser, UserFactory, execute_sql, login_session

NEW_USER = {"username": "bob", "password": "bob's password", "email": "bob@example.org"}


async def create(client: httpx.AsyncClient, admin: TestUser, **body: Any) -> dict[str, Any]:
    response = await client.post(
        "/api/admin/users", json={**NEW_USER, **body}, headers=admin.headers
    )
    assert response.status_code == 201, response.text
    created: dict[str, Any] = response.json()
    return created


async def patch(
    client: httpx.AsyncClient, admin: TestUser, user_id: str, **body: Any
) -> httpx.Response:
    return await client.patch(f"/api/admin/users/{user_id}", json=body, headers=admin.headers)


async def test_admin_user_routes_are_forbidden_to_regular_users(
    client: httpx.AsyncClient, regular_user: TestUser, admin_user: TestUser
) -> None:
    # Every /api/admin route is also walked in tests/security/test_authorization_walk.py.
    for method, path in [
        ("GET", "/api/admin/users"),
        ("POST", "/api/admin/users"),
        ("GET", f"/api/admin/users/{admin_user.id}"),
        ("PATCH", f"/api/admin/users/{admin_user.id}"),
        ("DELETE", f"/api/admin/users/{admin_user.id}"),
        ("GET", "/api/admin/audit"),
    ]:
        response = await client.request(method, path, json=NEW_USER, headers=regular_user.headers)
        assert response.status_code == 403, (method, path)
        assert response.json()["error"] == "FORBIDDEN"


async def test_create_get_and_list_users(client: httpx.AsyncClient, admin_user: TestUser) -> None:
    created = await create(client, admin_user)

    assert created["username"] == "bob"
    assert created["role"] == "user"
    assert created["is_active"] is True
    fetched = await client.get(f"/api/admin/users/{created['id']}", headers=admin_user.headers)
    assert fetched.json() == created
    listed = await client.get("/api/admin/users", headers=admin_user.headers)
    assert [u["username"] for u in listed.json()["items"]] == ["bob", admin_user.username]
    login = await client.post(
        "/api/auth/login", json={"username": "bob", "password": NEW_USER["password"]}
    )
    assert login.status_code == 200


async def test_user_list_is_paginated_and_filtered(
    client: httpx.AsyncClient, admin_user: TestUser, user_factory: UserFactory
) -> None:
    for _ in range(3):
        await user_factory()
    await user_factory(role="admin")

    first = await client.get("/api/admin/users", params={"limit": 3}, headers=admin_user.headers)
    rest = await client.get(
        "/api/admin/users",
        params={"limit": 3, "cursor": first.json()["next_cursor"]},
        headers=admin_user.headers,
    )
    admins = await client.get(
        "/api/admin/users", params={"role": "admin"}, headers=admin_user.headers
    )
    wrong_scope = await client.get(
        "/api/admin/users",
        params={"role": "admin", "cursor": first.json()["next_cursor"]},
        headers=admin_user.headers,
    )

    assert len(first.json()["items"]) == 3
    assert len(rest.json()["items"]) == 2
    assert rest.json()["next_cursor"] is None
    assert {u["role"] for u in admins.json()["items"]} == {"admin"}
    assert len(admins.json()["items"]) == 2
    assert wrong_scope.status_code == 400


async def test_duplicate_username_is_a_conflict_whatever_the_case(
    client: httpx.AsyncClient, admin_user: TestUser
) -> None:
    await create(client, admin_user)

    for username in ("bob", "BOB", "Bob"):
        response = await client.post(
            "/api/admin/users", json={**NEW_USER, "username": username}, headers=admin_user.headers
        )

        assert response.status_code == 409, username
        assert response.json()["error"] == "USERNAME_TAKEN"


async def test_create_user_validates_input(client: httpx.AsyncClient, admin_user: TestUser) -> None:
    for body in (
        {"password": "short"},
        {"username": "a b c"},
        {"role": "root"},
        {"email": "nope"},
        {"unexpected": 1},
    ):
        response = await client.post(
            "/api/admin/users", json={**NEW_USER, **body}, headers=admin_user.headers
        )

        assert response.status_code == 422, body


async def test_disabling_a_user_locks_out_their_key_and_sessions_at_once(
    app: FastAPI, client: httpx.AsyncClient, admin_user: TestUser, regular_user: TestUser
) -> None:
    async with asgi_client(app) as browser:
        await login_session(browser, regular_user)

        response = await patch(client, admin_user, regular_user.id, is_active=False)

        assert response.status_code == 200
        assert response.json()["is_active"] is False
        assert (await browser.get("/api/auth/me")).status_code == 401
    by_key = await client.get("/api/auth/me", headers=regular_user.headers)
    assert by_key.status_code == 403
    assert by_key.json()["error"] == "ACCOUNT_DISABLED"

    await patch(client, admin_user, regular_user.id, is_active=True)
    assert (await client.get("/api/auth/me", headers=regular_user.headers)).status_code == 200


async def test_promotion_and_demotion_take_effect_on_the_next_request(
    client: httpx.AsyncClient, admin_user: TestUser, regular_user: TestUser
) -> None:
    assert (await client.get("/api/admin/users", headers=regular_user.headers)).status_code == 403

    await patch(client, admin_user, regular_user.id, role="admin")
    assert (await client.get("/api/admin/users", headers=regular_user.headers)).status_code == 200

    await patch(client, admin_user, regular_user.id, role="user")
    assert (await client.get("/api/admin/users", headers=regular_user.headers)).status_code == 403


async def test_password_reset_ends_sessions_and_sets_the_new_password(
    app: FastAPI, client: httpx.AsyncClient, admin_user: TestUser, regular_user: TestUser
) -> None:
    async with asgi_client(app) as browser:
        await login_session(browser, regular_user)

        response = await patch(client, admin_user, regular_user.id, password="reset by admin")

        assert response.status_code == 200
        assert (await browser.get("/api/auth/me")).status_code == 401
    login = await client.post(
        "/api/auth/login",
        json={"username": regular_user.username, "password": "reset by admin"},
    )
    assert login.status_code == 200


async def test_email_can_be_changed_and_cleared(
    client: httpx.AsyncClient, admin_user: TestUser, regular_user: TestUser
) -> None:
    changed = await patch(client, admin_user, regular_user.id, email="new@example.org")
    kept = await patch(client, admin_user, regular_user.id, role="user")
    cleared = await patch(client, admin_user, regular_user.id, email=None)

    assert changed.json()["email"] == "new@example.org"
    assert kept.json()["email"] == "new@example.org"
    assert cleared.json()["email"] is None


async def test_the_last_active_admin_cannot_be_demoted_or_disabled(
    client: httpx.AsyncClient, admin_user: TestUser, user_factory: UserFactory
) -> None:
    for change in ({"role": "user"}, {"is_active": False}):
        response = await patch(client, admin_user, admin_user.id, **change)
        assert response.status_code == 409
        assert response.json()["error"] == "LAST_ADMIN"

    other = await user_factory(role="admin")
    assert (await patch(client, admin_user, other.id, is_active=False)).status_code == 200
    # `other` is disabled, so admin_user is again the last active admin.
    response = await patch(client, admin_user, admin_user.id, role="user")
    assert response.status_code == 409
    assert (await client.get("/api/admin/users", headers=admin_user.headers)).status_code == 200


async def test_admins_demoting_each_other_leave_one_admin(
    client: httpx.AsyncClient, admin_user: TestUser, user_factory: UserFactory
) -> None:
    other = await user_factory(role="admin")

    first = await patch(client, admin_user, other.id, role="user")
    second = await patch(client, other, admin_user.id, role="user")

    assert first.status_code == 200
    assert second.status_code == 403  # `other` is no longer an admin


async def test_delete_user_removes_their_keys(
    app: FastAPI, client: httpx.AsyncClient, admin_user: TestUser, regular_user: TestUser
) -> None:
    response = await client.delete(
        f"/api/admin/users/{regular_user.id}", headers=admin_user.headers
    )

    assert response.status_code == 204
    gone = await client.get(f"/api/admin/users/{regular_user.id}", headers=admin_user.headers)
    assert gone.status_code == 404
    key = await client.get("/api/auth/me", headers=regular_user.headers)
    assert key.json()["error"] == "INVALID_API_KEY"
    count = await execute_sql(
        app, select(func.count()).select_from(ApiKey).where(ApiKey.user_id == regular_user.id)
    )
    assert count.scalar_one() == 0


async def test_a_user_delete_that_finds_the_row_already_gone_succeeds_without_a_warning(
    app: FastAPI, regular_user: TestUser
) -> None:
    """As for conversations (tests/conversations/test_crud.py): two deletes at once."""
    sessionmaker = app.state.core.sessionmaker
    async with session_scope(sessionmaker) as first, session_scope(sessionmaker) as second:
        mine = await first.get_one(User, regular_user.id)
        late = await second.get_one(User, regular_user.id)
        await admin_service.delete_user(first, mine)
        await first.commit()
        await admin_service.delete_user(second, late)
    async with session_scope(sessionmaker) as session:
        assert await session.get(User, regular_user.id) is None


async def test_an_admin_cannot_delete_themselves(
    client: httpx.AsyncClient, admin_user: TestUser
) -> None:
    response = await client.delete(f"/api/admin/users/{admin_user.id}", headers=admin_user.headers)

    assert response.status_code == 409
    assert response.json()["error"] == "CANNOT_DELETE_SELF"


async def test_unknown_user_is_not_found(client: httpx.AsyncClient, admin_user: TestUser) -> None:
    for method in ("GET", "PATCH", "DELETE"):
        response = await client.request(
            method, "/api/admin/users/" + "0" * 32, json={}, headers=admin_user.headers
        )

        assert response.status_code == 404, method
