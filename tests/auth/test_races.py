"""Logins and password changes racing a change to the same account: a password change, an
administrator's reset, a disable. The other request commits while this one checks the
password (argon2 takes a while), injected deterministically by wrapping the check."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import Executable, func, select, update

from ollama_web.auth import router as auth_router
from ollama_web.auth.passwords import Passwords, passwords_for
from ollama_web.db import AuditEvent, User, UserSession
from ollama_web.db.base import utcnow
from tests.conftest import asgi_client
from tests.fixtures.auth import TestUser, execute_sql, login_session
from tests.fixtures.races import delete_right_before


def commit_after_password_check(
    monkeypatch: pytest.MonkeyPatch, app: FastAPI, statement: Executable
) -> None:
    """The next password check runs `statement` in a transaction of its own once it has
    checked the password, as a request that commits meanwhile would."""
    original: Callable[..., Awaitable[bool]] = Passwords.verify_async
    pending = [statement]

    async def check_then_commit(self: Passwords, *args: Any) -> bool:
        verified = await original(self, *args)
        if pending:
            await execute_sql(app, pending.pop())
        return verified

    monkeypatch.setattr(Passwords, "verify_async", check_then_commit)


def hash_of(app: FastAPI, password: str) -> str:
    return passwords_for(app.state.core.settings).hash(password)


def password_hash_of(user: TestUser) -> Executable:
    return select(User.password_hash).where(User.id == user.id)


async def live_sessions(app: FastAPI, user_id: str) -> int:
    stmt = select(func.count()).where(
        UserSession.user_id == user_id, UserSession.revoked_at.is_(None)
    )
    count: int = (await execute_sql(app, stmt)).scalar_one()
    return count


def a_password_change(app: FastAPI, user: TestUser, password: str) -> Executable:
    return update(User).where(User.id == user.id).values(password_hash=hash_of(app, password))


async def test_a_login_whose_password_is_changed_meanwhile_gets_no_session(
    app: FastAPI,
    client: httpx.AsyncClient,
    regular_user: TestUser,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The change ended the sessions there were when it ran; a session made afterwards from
    the old password outlived it (each of 40 logins at once did, on PostgreSQL)."""
    commit_after_password_check(monkeypatch, app, a_password_change(app, regular_user, "new pw 1"))

    response = await client.post(
        "/api/auth/login",
        json={"username": regular_user.username, "password": regular_user.password},
    )

    assert response.status_code == 401, response.text
    assert response.json()["error"] == "INVALID_CREDENTIALS"
    assert "set-cookie" not in response.headers
    assert await live_sessions(app, regular_user.id) == 0


async def test_a_login_whose_account_is_disabled_meanwhile_gets_no_session(
    app: FastAPI,
    client: httpx.AsyncClient,
    regular_user: TestUser,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The session made after the disable survived it, and worked again on re-enabling."""
    disable = update(User).where(User.id == regular_user.id).values(is_active=False)
    commit_after_password_check(monkeypatch, app, disable)

    response = await client.post(
        "/api/auth/login",
        json={"username": regular_user.username, "password": regular_user.password},
    )

    assert response.status_code == 403, response.text
    assert response.json()["error"] == "ACCOUNT_DISABLED"
    assert await live_sessions(app, regular_user.id) == 0


async def test_a_login_that_rehashes_does_not_undo_a_password_change(
    app: FastAPI,
    client: httpx.AsyncClient,
    regular_user: TestUser,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A login rehashing the old password (made with older parameters) wrote that hash back
    over the new one."""
    monkeypatch.setattr(Passwords, "needs_rehash", lambda self, password_hash: True)
    change = a_password_change(app, regular_user, "new pw 2")
    commit_after_password_check(monkeypatch, app, change)

    response = await client.post(
        "/api/auth/login",
        json={"username": regular_user.username, "password": regular_user.password},
    )

    assert response.status_code == 401
    stored = (await execute_sql(app, password_hash_of(regular_user))).scalar_one()
    assert passwords_for(app.state.core.settings).verify(stored, "new pw 2")


async def test_a_password_change_racing_an_admin_reset_does_not_undo_it(
    app: FastAPI, regular_user: TestUser, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The change was checked against the password the reset replaced, and overwrote the
    reset with a password its caller (perhaps who the reset was meant to lock out) chose."""
    async with asgi_client(app) as browser:
        csrf = await login_session(browser, regular_user)
        reset = a_password_change(app, regular_user, "reset by admin")
        commit_after_password_check(monkeypatch, app, reset)

        response = await browser.post(
            "/api/auth/password",
            json={"current_password": regular_user.password, "new_password": "chosen by me"},
            headers={"X-CSRF-Token": csrf},
        )

    assert response.status_code == 400, response.text
    assert response.json()["error"] == "INVALID_CURRENT_PASSWORD"
    stored = (await execute_sql(app, password_hash_of(regular_user))).scalar_one()
    assert passwords_for(app.state.core.settings).verify(stored, "reset by admin")
    events = select(func.count()).where(AuditEvent.action == "auth.password_changed")
    assert (await execute_sql(app, events)).scalar_one() == 0


async def test_ending_a_session_ended_meanwhile_is_recorded_once(
    app: FastAPI, regular_user: TestUser, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two requests ending the same session at once each recorded an `auth.session_revoked`."""
    async with asgi_client(app) as browser, asgi_client(app) as other:
        await login_session(browser, regular_user)
        csrf = await login_session(other, regular_user)
        session_id = (await browser.get("/api/auth/me")).json()["session_id"]
        ended = update(UserSession).where(UserSession.id == session_id).values(revoked_at=utcnow())
        delete_right_before(monkeypatch, app, auth_router, "revoke_session", ended)

        response = await other.delete(
            f"/api/auth/sessions/{session_id}", headers={"X-CSRF-Token": csrf}
        )

    assert response.status_code == 204
    events = select(func.count()).where(AuditEvent.action == "auth.session_revoked")
    assert (await execute_sql(app, events)).scalar_one() == 0
