"""Cookie sessions: CSRF, idle and absolute expiry, throttled activity writes, listing and
ending sessions, logout, password change."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import event, insert, select, update
from sqlalchemy.exc import OperationalError

from ollama_web.auth import context as auth_context
from ollama_web.auth.sessions import prune_sessions
from ollama_web.core.config import Settings
from ollama_web.core.db import session_scope
from ollama_web.core.state import CoreState
from ollama_web.db import UserSession
from ollama_web.db.base import utcnow
from tests.conftest import asgi_client
from tests.fixtures.auth import TestUser, create_test_user, execute_sql, login_session


async def session_row(app: FastAPI, session_id: str) -> UserSession:
    result = await execute_sql(app, select(UserSession).where(UserSession.id == session_id))
    row: UserSession = result.scalar_one()
    return row


async def current_session_id(client: httpx.AsyncClient) -> str:
    session_id: str = (await client.get("/api/auth/me")).json()["session_id"]
    return session_id


async def test_cookie_writes_need_the_sessions_csrf_token(
    client: httpx.AsyncClient, regular_user: TestUser
) -> None:
    csrf = await login_session(client, regular_user)
    body = {"name": "from the browser"}

    missing = await client.post("/api/keys", json=body)
    wrong = await client.post("/api/keys", json=body, headers={"X-CSRF-Token": "0" * 64})
    right = await client.post("/api/keys", json=body, headers={"X-CSRF-Token": csrf})

    assert missing.status_code == wrong.status_code == 403
    assert missing.json()["error"] == wrong.json()["error"] == "CSRF_TOKEN_INVALID"
    assert right.status_code == 201
    key_id = right.json()["id"]
    assert (await client.delete(f"/api/keys/{key_id}")).status_code == 403
    deleted = await client.delete(f"/api/keys/{key_id}", headers={"X-CSRF-Token": csrf})
    assert deleted.status_code == 204
    assert (await client.get("/api/keys")).status_code == 200  # reads need no token


async def test_api_key_requests_need_no_csrf_token(
    client: httpx.AsyncClient, regular_user: TestUser
) -> None:
    await login_session(client, regular_user)  # a cookie is present too, the key wins

    response = await client.post("/api/keys", json={"name": "cli"}, headers=regular_user.headers)

    assert response.status_code == 201


async def test_csrf_protection_can_be_disabled(
    settings_factory: Callable[..., Settings],
    app_factory: Callable[[Settings], Any],
    database_url: str | None,
) -> None:
    app = await app_factory(
        settings_factory(database_url=database_url, csrf_protection_enabled=False)
    )
    user = await create_test_user(app)
    async with asgi_client(app) as http:
        await login_session(http, user)
        response = await http.post("/api/keys", json={"name": "no csrf"})
    assert response.status_code == 201


async def test_csrf_endpoint_returns_the_sessions_token(
    client: httpx.AsyncClient, regular_user: TestUser
) -> None:
    anonymous = await client.get("/api/auth/csrf")
    csrf = await login_session(client, regular_user)
    logged_in = await client.get("/api/auth/csrf")

    assert anonymous.json() == {"csrf_token": None, "authenticated": False}
    assert logged_in.json() == {"csrf_token": csrf, "authenticated": True}


async def test_idle_session_expires_and_the_cookie_is_cleared(
    app: FastAPI, client: httpx.AsyncClient, regular_user: TestUser
) -> None:
    await login_session(client, regular_user)
    session_id = await current_session_id(client)
    await execute_sql(
        app,
        update(UserSession)
        .where(UserSession.id == session_id)
        .values(last_seen_at=utcnow() - timedelta(minutes=61)),
    )

    response = await client.get("/api/auth/me")

    assert response.status_code == 401
    assert response.json()["error"] == "UNAUTHENTICATED"
    assert any(
        c.startswith('ow_session=""') or "Max-Age=0" in c
        for c in response.headers.get_list("set-cookie")
    )
    assert (await client.get("/api/auth/csrf")).json()["csrf_token"] is None


async def test_activity_extends_even_a_one_minute_session(
    app_factory: Callable[..., Any], settings_factory: Callable[..., Settings]
) -> None:
    """Activity was written at most once a minute, so with SESSION_TIMEOUT_MINUTES=1 none
    was ever written: a session used every 40 s ended after its first minute. It is now
    written at most every tenth of the timeout (6 s here)."""
    app = await app_factory(settings_factory(session_timeout_minutes=1))
    user = await create_test_user(app)
    async with asgi_client(app) as client:
        await login_session(client, user)
        session_id = await current_session_id(client)
        stmt = update(UserSession).where(UserSession.id == session_id)
        recent = utcnow() - timedelta(seconds=3)
        await execute_sql(app, stmt.values(last_seen_at=recent))
        assert (await client.get("/api/auth/me")).status_code == 200
        assert (await session_row(app, session_id)).last_seen_at == recent  # not yet
        await execute_sql(app, stmt.values(last_seen_at=utcnow() - timedelta(seconds=40)))
        assert (await client.get("/api/auth/me")).status_code == 200
        seen = (await session_row(app, session_id)).last_seen_at
        assert utcnow() - seen < timedelta(seconds=5)


async def test_activity_extends_the_session_but_writes_at_most_once_a_minute(
    app: FastAPI, client: httpx.AsyncClient, regular_user: TestUser
) -> None:
    await login_session(client, regular_user)
    session_id = await current_session_id(client)
    recent = utcnow() - timedelta(seconds=30)
    older = utcnow() - timedelta(minutes=50)
    stmt = update(UserSession).where(UserSession.id == session_id)

    await execute_sql(app, stmt.values(last_seen_at=recent))
    assert (await client.get("/api/auth/me")).status_code == 200
    assert (await session_row(app, session_id)).last_seen_at == recent

    await execute_sql(app, stmt.values(last_seen_at=older))
    assert (await client.get("/api/auth/me")).status_code == 200
    seen = (await session_row(app, session_id)).last_seen_at
    assert utcnow() - seen < timedelta(seconds=10)


async def test_session_ends_at_its_absolute_lifetime_despite_activity(
    app: FastAPI, client: httpx.AsyncClient, regular_user: TestUser
) -> None:
    await login_session(client, regular_user)
    session_id = await current_session_id(client)
    row = await session_row(app, session_id)
    assert row.expires_at - row.created_at == timedelta(hours=24 * 7)
    await execute_sql(
        app,
        update(UserSession)
        .where(UserSession.id == session_id)
        .values(expires_at=utcnow() - timedelta(seconds=1)),
    )

    assert (await client.get("/api/auth/me")).status_code == 401


async def test_unknown_session_cookie_is_unauthenticated(client: httpx.AsyncClient) -> None:
    client.cookies.set("ow_session", "made-up-token")

    response = await client.get("/api/auth/me")

    assert response.status_code == 401
    assert response.json()["error"] == "UNAUTHENTICATED"


async def test_list_and_end_my_sessions(
    app: FastAPI, client: httpx.AsyncClient, regular_user: TestUser
) -> None:
    csrf = await login_session(client, regular_user)
    async with asgi_client(app) as laptop:
        await login_session(laptop, regular_user)
        laptop_id = await current_session_id(laptop)

        listed = await client.get("/api/auth/sessions")
        assert listed.status_code == 200
        items = listed.json()["items"]
        assert len(items) == 2
        assert [item["current"] for item in items] == [False, True]  # newest first
        assert items[0]["id"] == laptop_id
        assert items[0]["ip_address"] == "127.0.0.1"

        ended = await client.delete(
            f"/api/auth/sessions/{laptop_id}", headers={"X-CSRF-Token": csrf}
        )
        assert ended.status_code == 204
        assert (await laptop.get("/api/auth/me")).status_code == 401
    assert (await client.get("/api/auth/me")).status_code == 200
    assert len((await client.get("/api/auth/sessions")).json()["items"]) == 1


async def test_sessions_list_is_paginated(
    app: FastAPI, client: httpx.AsyncClient, regular_user: TestUser
) -> None:
    for _ in range(3):
        async with asgi_client(app) as other:
            await login_session(other, regular_user)

    first = await client.get(
        "/api/auth/sessions", params={"limit": 2}, headers=regular_user.headers
    )
    second = await client.get(
        "/api/auth/sessions",
        params={"limit": 2, "cursor": first.json()["next_cursor"]},
        headers=regular_user.headers,
    )

    assert len(first.json()["items"]) == 2
    assert len(second.json()["items"]) == 1
    assert second.json()["next_cursor"] is None
    ids = [s["id"] for s in first.json()["items"] + second.json()["items"]]
    assert len(set(ids)) == 3


async def test_logout_ends_this_session_only(
    app: FastAPI, client: httpx.AsyncClient, regular_user: TestUser
) -> None:
    csrf = await login_session(client, regular_user)
    async with asgi_client(app) as other:
        await login_session(other, regular_user)

        assert (await client.post("/api/auth/logout")).status_code == 403  # CSRF applies
        response = await client.post("/api/auth/logout", headers={"X-CSRF-Token": csrf})

        assert response.status_code == 204
        assert "ow_session" not in client.cookies
        assert (await other.get("/api/auth/me")).status_code == 200


async def test_logout_all_ends_every_session(
    app: FastAPI, client: httpx.AsyncClient, regular_user: TestUser
) -> None:
    csrf = await login_session(client, regular_user)
    async with asgi_client(app) as other:
        await login_session(other, regular_user)
        token = other.cookies["ow_session"]

        response = await client.post("/api/auth/logout?all=true", headers={"X-CSRF-Token": csrf})

        assert response.status_code == 204
        other.cookies.set("ow_session", token)
        assert (await other.get("/api/auth/me")).status_code == 401
    # The API key is not a session: it keeps working.
    assert (await client.get("/api/auth/me", headers=regular_user.headers)).status_code == 200


async def test_password_change_ends_my_other_sessions(
    app: FastAPI, client: httpx.AsyncClient, regular_user: TestUser
) -> None:
    csrf = await login_session(client, regular_user)
    async with asgi_client(app) as other:
        await login_session(other, regular_user)
        body = {"current_password": regular_user.password, "new_password": "a brand new secret"}

        response = await client.post(
            "/api/auth/password", json=body, headers={"X-CSRF-Token": csrf}
        )

        assert response.status_code == 200, response.text
        assert response.json() == {"sessions_ended": 1}
        assert (await other.get("/api/auth/me")).status_code == 401
    assert (await client.get("/api/auth/me")).status_code == 200
    old = {"username": regular_user.username, "password": regular_user.password}
    new = {"username": regular_user.username, "password": "a brand new secret"}
    assert (await client.post("/api/auth/login", json=old)).status_code == 401
    assert (await client.post("/api/auth/login", json=new)).status_code == 200


async def test_password_change_refusals(client: httpx.AsyncClient, regular_user: TestUser) -> None:
    for current, new, status, code in (
        ("wrong current password", "a brand new secret", 400, "INVALID_CURRENT_PASSWORD"),
        (regular_user.password, "short", 422, "VALIDATION_ERROR"),
        (regular_user.password, "z" * 1025, 422, "VALIDATION_ERROR"),
        (regular_user.password, " " * 12, 422, "VALIDATION_ERROR"),
    ):
        body = {"current_password": current, "new_password": new}

        response = await client.post("/api/auth/password", json=body, headers=regular_user.headers)

        assert response.status_code == status, body
        assert response.json()["error"] == code
    login = {"username": regular_user.username, "password": regular_user.password}
    assert (await client.post("/api/auth/login", json=login)).status_code == 200


@pytest.mark.parametrize("db_backend", ["sqlite"])  # PostgreSQL has no inline connection
async def test_on_sqlite_a_session_is_checked_inline_or_through_the_engine_when_locked(
    app: FastAPI, client: httpx.AsyncClient, regular_user: TestUser
) -> None:
    """A cookie's lookup and its activity write skip SQLAlchemy's engine, as a key's do;
    with the database locked by another process, the write goes through the engine and
    waits on its thread. The CSRF check reads the token the same way."""
    core = app.state.core
    assert core.inline is not None
    csrf = await login_session(client, regular_user)
    session_id = await current_session_id(client)
    stmt = update(UserSession).where(UserSession.id == session_id)
    await execute_sql(app, stmt.values(last_seen_at=utcnow() - timedelta(minutes=2)))
    through_engine: list[str] = []
    inline: list[str] = []

    def record(*args: Any) -> None:
        through_engine.append(args[2].split()[0] + " " + args[2].split("FROM")[-1])

    event.listen(core.engine.sync_engine, "before_cursor_execute", record)
    core.inline.trace(inline.append)
    try:
        response = await client.post(
            "/api/keys", json={"name": "k"}, headers={"X-CSRF-Token": csrf}
        )
        assert response.status_code == 201, response.text
        assert not [s for s in through_engine if "user_sessions" in s]
        assert [s.split()[0] for s in inline][:2] == ["SELECT", "UPDATE"]
        assert all("user_sessions" in statement for statement in inline[:2])
        missing = await client.post("/api/keys", json={"name": "k"})
        assert missing.json()["error"] == "CSRF_TOKEN_INVALID"

        await execute_sql(app, stmt.values(last_seen_at=utcnow() - timedelta(minutes=2)))
        through_engine.clear()
        holder = sqlite3.connect(core.settings.embedded_database_file, isolation_level=None)
        holder.execute("BEGIN IMMEDIATE")
        asyncio.get_running_loop().call_later(0.3, holder.execute, "COMMIT")
        try:
            response = await client.get("/api/auth/me")
        finally:
            holder.close()
        assert response.status_code == 200
        assert any(s.startswith("UPDATE") for s in through_engine)
        assert utcnow() - (await session_row(app, session_id)).last_seen_at < timedelta(seconds=10)
    finally:
        event.remove(core.engine.sync_engine, "before_cursor_execute", record)
        core.inline.trace(None)


@pytest.mark.parametrize("db_backend", ["sqlite"])  # the inline connection is SQLite's
async def test_a_database_that_refuses_writes_does_not_fail_a_session_s_reads(
    app: FastAPI, client: httpx.AsyncClient, regular_user: TestUser
) -> None:
    """A full disk (or a read-only file) refuses the write that extends a session: the
    request that only reads still answers; a later request extends it."""
    core = app.state.core
    assert core.inline is not None
    await login_session(client, regular_user)
    session_id = await current_session_id(client)
    older = utcnow() - timedelta(minutes=2)
    await execute_sql(
        app, update(UserSession).where(UserSession.id == session_id).values(last_seen_at=older)
    )
    core.inline._connection.execute("PRAGMA query_only = ON")  # writes refused, as when full
    try:
        response = await client.get("/api/auth/me")
    finally:
        core.inline._connection.execute("PRAGMA query_only = OFF")
    assert response.status_code == 200, response.text
    assert response.json()["user"]["username"] == regular_user.username
    assert (await session_row(app, session_id)).last_seen_at == older
    assert (await client.get("/api/auth/me")).status_code == 200
    assert utcnow() - (await session_row(app, session_id)).last_seen_at < timedelta(seconds=10)


async def _insert_sessions(app: FastAPI, user_id: str, states: dict[str, dict[str, Any]]) -> None:
    """One session row per name, live unless its values say otherwise."""
    now = utcnow()
    for name, values in states.items():
        row = {
            "id": f"session-{name}",
            "user_id": user_id,
            "token_hash": f"{name:0>64}"[:64],
            "csrf_token": "0" * 64,
            "created_at": now - timedelta(days=3),
            "last_seen_at": now,
            "expires_at": now + timedelta(days=4),
            **values,
        }
        await execute_sql(app, insert(UserSession).values(**row))


async def _session_ids(app: FastAPI) -> set[str]:
    return set((await execute_sql(app, select(UserSession.id))).scalars())


async def test_ended_sessions_are_deleted_a_day_after_they_ended(
    app: FastAPI, settings: Settings, regular_user: TestUser
) -> None:
    now = utcnow()
    long_ago, lately = now - timedelta(days=1, minutes=5), now - timedelta(hours=23)
    idle = timedelta(minutes=settings.session_timeout_minutes)
    await _insert_sessions(
        app,
        regular_user.id,
        {
            "live": {},
            "revoked-long-ago": {"revoked_at": long_ago},
            "revoked-lately": {"revoked_at": lately},
            "expired-long-ago": {"expires_at": long_ago},
            "expired-lately": {"expires_at": lately},
            "idle-long-ago": {"last_seen_at": long_ago - idle},
            "idle-lately": {"last_seen_at": lately - idle},
        },
    )
    core: CoreState = app.state.core

    async with session_scope(core.sessionmaker) as session:
        pruned = await prune_sessions(session, settings, utcnow())

    assert pruned == 3
    assert await _session_ids(app) == {
        "session-live",
        "session-revoked-lately",
        "session-expired-lately",
        "session-idle-lately",
    }


async def test_every_server_prunes_ended_sessions_at_start_and_then_periodically(
    app_factory: Callable[[Settings], Any],
    settings: Settings,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(auth_context, "PRUNE_INTERVAL_SECONDS", 0.2)
    first = await app_factory(settings)
    user = await create_test_user(first)
    old = utcnow() - timedelta(days=2)
    await _insert_sessions(first, user.id, {"live": {}, "revoked-at-start": {"revoked_at": old}})
    # A second server on the same database deletes it as it starts; then, a round later,
    # one that ends while both run.
    second = await app_factory(settings)
    await _until(lambda: _session_ids(second), {"session-live"})
    await _insert_sessions(second, user.id, {"revoked-later": {"revoked_at": old}})
    await _until(lambda: _session_ids(second), {"session-live"})


async def _until(read: Callable[[], Any], expected: set[str]) -> None:
    for _ in range(100):
        if await read() == expected:
            return
        await asyncio.sleep(0.05)
    assert await read() == expected


async def test_a_failed_pruning_round_is_logged_in_a_line_and_tried_again(
    app_factory: Callable[[Settings], Any],
    settings: Settings,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    monkeypatch.setattr(auth_context, "PRUNE_INTERVAL_SECONDS", 0.1)
    calls = 0
    real = prune_sessions

    async def failing_once(*args: Any) -> int:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise OperationalError("DELETE", {}, sqlite3.OperationalError("database is locked"))
        return await real(*args)

    monkeypatch.setattr(auth_context, "prune_sessions", failing_once)
    with caplog.at_level("WARNING", logger="ollama_web.auth"):
        await app_factory(settings)
        for _ in range(100):
            if calls >= 2:
                break
            await asyncio.sleep(0.05)

    assert calls >= 2
    lines = [r for r in caplog.records if r.name == "ollama_web.auth"]
    assert [r.getMessage() for r in lines] == [
        "could not delete ended sessions: OperationalError: database is locked"
    ]
    assert lines[0].exc_info is None
