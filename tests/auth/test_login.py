"""Password login: one answer for unknown users and wrong passwords, disabled accounts,
failed-login throttling, rehashing, and the audit of it all."""

from __future__ import annotations

import asyncio
import contextlib
import secrets
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack
from typing import Any

import httpx
import pytest
from argon2 import PasswordHasher
from fastapi import FastAPI
from sqlalchemy import select, update

from ollama_web.auth.passwords import Passwords, passwords_for
from ollama_web.core.config import Settings
from ollama_web.db import AuditEvent, User
from tests.conftest import require_redis
from tests.fixtures.auth import TestUser, UserFactory, create_test_user, execute_sql
from tests.ollama.faults import closed_port_url


def login_body(user: TestUser, password: str | None = None) -> dict[str, str]:
    return {"username": user.username, "password": password or user.password}


def client_at(app: FastAPI, address: str) -> httpx.AsyncClient:
    transport = httpx.ASGITransport(app=app, client=(address, 40000))
    return httpx.AsyncClient(transport=transport, base_url="http://testserver")


async def audit_actions(app: FastAPI) -> list[tuple[str, dict[str, Any]]]:
    result = await execute_sql(app, select(AuditEvent).order_by(AuditEvent.created_at))
    return [(event.action, event.details) for event in result.scalars()]


async def test_login_sets_a_session_and_answers_user_and_csrf(
    app: FastAPI, client: httpx.AsyncClient, regular_user: TestUser
) -> None:
    response = await client.post("/api/auth/login", json=login_body(regular_user))

    assert response.status_code == 200, response.text
    body = response.json()
    assert body["user"]["id"] == regular_user.id
    assert body["user"]["last_login_at"] is not None
    assert body["csrf_token"]
    assert body["expires_at"]
    assert body["idle_timeout_minutes"] == 60
    assert "ow_session" in client.cookies
    me = await client.get("/api/auth/me")
    assert me.json()["auth_method"] == "session"
    assert ("auth.login", {}) in await audit_actions(app)


async def test_a_forwarded_address_with_a_long_zone_cannot_fail_a_login(
    app_factory: Callable[[Settings], Any],
    settings_factory: Callable[..., Settings],
    database_url: str | None,
) -> None:
    """The session stores the client's address in 64 characters; PostgreSQL refused a
    longer one (a zoned IPv6 address from X-Forwarded-For) and the login answered 500."""
    settings = settings_factory(database_url=database_url, trusted_proxies="127.0.0.1")
    app: FastAPI = await app_factory(settings)
    user = await create_test_user(app)
    forwarded = {"X-Forwarded-For": "fe80::1%" + "a" * 100}
    async with client_at(app, "127.0.0.1") as client:
        response = await client.post("/api/auth/login", json=login_body(user), headers=forwarded)
        sessions = await client.get("/api/auth/sessions")
    assert response.status_code == 200, response.text
    assert [item["ip_address"] for item in sessions.json()["items"]] == ["127.0.0.1"]


async def test_username_is_case_insensitive(
    client: httpx.AsyncClient, user_factory: UserFactory
) -> None:
    user = await user_factory(username="Alice")

    response = await client.post(
        "/api/auth/login", json={"username": "aLICE", "password": user.password}
    )

    assert response.status_code == 200
    assert response.json()["user"]["username"] == "Alice"


async def test_unknown_user_and_wrong_password_get_the_same_answer(
    app: FastAPI, client: httpx.AsyncClient, regular_user: TestUser
) -> None:
    wrong = await client.post("/api/auth/login", json=login_body(regular_user, "not it at all"))
    unknown = await client.post(
        "/api/auth/login", json={"username": "nobody", "password": "not it at all"}
    )

    assert wrong.status_code == unknown.status_code == 401
    strip = ("request_id",)
    assert {k: v for k, v in wrong.json().items() if k not in strip} == {
        k: v for k, v in unknown.json().items() if k not in strip
    }
    assert wrong.json()["error"] == "INVALID_CREDENTIALS"
    assert "ow_session" not in client.cookies
    failures = [d for action, d in await audit_actions(app) if action == "auth.login_failed"]
    assert [d["reason"] for d in failures] == ["bad_password", "unknown_user"]


def test_unknown_user_costs_one_argon2_verification(monkeypatch: pytest.MonkeyPatch) -> None:
    passwords = Passwords(time_cost=1, memory_kib=64)
    calls: list[str] = []
    original = PasswordHasher.verify

    def spy(self: PasswordHasher, hash: str, password: str) -> bool:
        calls.append(hash)
        return original(self, hash, password)

    monkeypatch.setattr(PasswordHasher, "verify", spy)
    real = passwords.hash("secret password")

    assert passwords.verify(None, "secret password") is False
    assert passwords.verify(real, "secret password") is True
    assert len(calls) == 2
    assert calls[0].startswith("$argon2id$")  # the dummy hash, with the same parameters
    assert calls[0].split("$")[3] == real.split("$")[3]


async def test_disabled_account_is_told_only_after_a_correct_password(
    app: FastAPI, client: httpx.AsyncClient, regular_user: TestUser
) -> None:
    await execute_sql(app, update(User).where(User.id == regular_user.id).values(is_active=False))

    wrong = await client.post("/api/auth/login", json=login_body(regular_user, "wrong password"))
    right = await client.post("/api/auth/login", json=login_body(regular_user))

    assert wrong.status_code == 401
    assert wrong.json()["error"] == "INVALID_CREDENTIALS"
    assert right.status_code == 403
    assert right.json()["error"] == "ACCOUNT_DISABLED"
    assert "ow_session" not in client.cookies


@pytest.fixture
async def strict_app(
    settings_factory: Callable[..., Settings],
    app_factory: Callable[[Settings], Any],
    database_url: str | None,
) -> FastAPI:
    """Three failures allowed; RATE_LIMIT_ENABLED stays false to prove throttling is apart."""
    settings = settings_factory(
        database_url=database_url, login_max_failures=3, rate_limit_enabled=False
    )
    application: FastAPI = await app_factory(settings)
    return application


async def test_repeated_failures_for_a_username_are_throttled(strict_app: FastAPI) -> None:
    user = await create_test_user(strict_app)
    async with (
        client_at(strict_app, "10.0.0.1") as first,
        client_at(strict_app, "10.0.0.2") as second,
    ):
        for _ in range(3):
            response = await first.post("/api/auth/login", json=login_body(user, "bad guess!"))
            assert response.status_code == 401
        # Locked out even with the right password, and from another address too.
        locked = await second.post("/api/auth/login", json=login_body(user))

    assert locked.status_code == 429
    assert locked.json()["error"] == "RATE_LIMITED"
    retry_after = int(locked.headers["Retry-After"])
    assert 0 < retry_after <= 15 * 60


async def test_repeated_failures_from_an_address_are_throttled(strict_app: FastAPI) -> None:
    victim = await create_test_user(strict_app)
    async with (
        client_at(strict_app, "10.0.0.3") as attacker,
        client_at(strict_app, "10.0.0.4") as bystander,
    ):
        for n in range(3):
            body = {"username": f"guess{n}", "password": "bad guess!"}
            assert (await attacker.post("/api/auth/login", json=body)).status_code == 401
        refused = await attacker.post("/api/auth/login", json=login_body(victim))
        allowed = await bystander.post("/api/auth/login", json=login_body(victim))

    assert refused.status_code == 429
    assert allowed.status_code == 200


@contextlib.asynccontextmanager
async def gated_password_checks() -> AsyncIterator[tuple[list[str], asyncio.Event]]:
    """Every password check waits for the yielded event (set it to let them finish); the
    list holds the passwords being checked."""
    checking: list[str] = []
    gate = asyncio.Event()
    original = Passwords.verify_async

    async def gated(self: Passwords, password_hash: str | None, password: str) -> bool:
        checking.append(password)
        await gate.wait()
        return await original(self, password_hash, password)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(Passwords, "verify_async", gated)
        yield checking, gate


async def _until(condition: Callable[[], bool], what: str) -> None:
    for _ in range(500):
        if condition():
            return
        await asyncio.sleep(0.01)
    pytest.fail(f"not within 5 s: {what}")


async def test_guesses_sent_all_at_once_get_no_more_checks_than_one_by_one(
    strict_app: FastAPI,
) -> None:
    """Three failures allowed: ten guesses at once (from ten addresses) get three password
    checks, the rest 429 before any check, as they would one after another."""
    user = await create_test_user(strict_app)
    async with AsyncExitStack() as stack, gated_password_checks() as (checking, gate):
        clients = [
            await stack.enter_async_context(client_at(strict_app, f"10.0.2.{n}")) for n in range(10)
        ]
        guesses = [
            asyncio.ensure_future(http.post("/api/auth/login", json=login_body(user, f"no{n}!!!")))
            for n, http in enumerate(clients)
        ]

        def refused() -> int:
            return sum(guess.done() for guess in guesses)

        await _until(lambda: refused() == 7 and len(checking) == 3, "3 checked, 7 refused")
        await asyncio.sleep(0.1)
        assert (refused(), len(checking)) == (7, 3)  # and no more
        gate.set()
        statuses = sorted(response.status_code for response in await asyncio.gather(*guesses))
        right = await clients[0].post("/api/auth/login", json=login_body(user))
    assert statuses == [401] * 3 + [429] * 7
    assert right.status_code == 429  # three failures: locked out


async def test_failed_logins_hold_no_connection_while_their_password_is_checked(
    app: FastAPI,
) -> None:
    """A burst of failed logins larger than the pool (each from its own address, for
    unknown users) waited 30 s for connections: each held one through its password check
    and wanted a second for its audit event. Now none is held during the check."""
    pool = app.state.core.engine.sync_engine.pool
    burst = 40  # more than either pool holds (SQLite 16 + 16, PostgreSQL 10 + 20)
    async with AsyncExitStack() as stack, gated_password_checks() as (checking, gate):
        clients = [
            await stack.enter_async_context(client_at(app, f"10.0.3.{n}")) for n in range(burst)
        ]
        attempts = [
            asyncio.ensure_future(
                http.post("/api/auth/login", json={"username": f"ghost{n}", "password": "x" * 12})
            )
            for n, http in enumerate(clients)
        ]
        await _until(lambda: len(checking) == burst, "every password being checked")
        assert pool.checkedout() == 0
        gate.set()
        responses = await asyncio.wait_for(asyncio.gather(*attempts), 10)
    assert {response.status_code for response in responses} == {401}


async def test_a_successful_login_clears_the_username_failures(strict_app: FastAPI) -> None:
    user = await create_test_user(strict_app)
    for round_number in range(2):
        async with client_at(strict_app, f"10.0.1.{round_number}") as http:
            for _ in range(2):
                response = await http.post("/api/auth/login", json=login_body(user, "bad!bad!"))
                assert response.status_code == 401
            assert (await http.post("/api/auth/login", json=login_body(user))).status_code == 200


async def test_login_rehashes_a_password_hashed_with_old_parameters(
    app: FastAPI, client: httpx.AsyncClient, regular_user: TestUser
) -> None:
    old_hash = Passwords(time_cost=2, memory_kib=128).hash(regular_user.password)
    await execute_sql(
        app, update(User).where(User.id == regular_user.id).values(password_hash=old_hash)
    )

    assert (await client.post("/api/auth/login", json=login_body(regular_user))).status_code == 200

    result = await execute_sql(app, select(User.password_hash).where(User.id == regular_user.id))
    new_hash = result.scalar_one()
    assert new_hash != old_hash
    assert not passwords_for(app.state.settings).needs_rehash(new_hash)


async def test_malformed_login_is_a_validation_error(client: httpx.AsyncClient) -> None:
    for payload in (
        {"username": "x"},
        {"username": "x", "password": ""},
        {"username": "x", "password": "y" * 1025},
        {"username": "x" * 65, "password": "long enough"},
    ):
        response = await client.post("/api/auth/login", json=payload)

        assert response.status_code == 422, payload
        assert response.json()["error"] == "VALIDATION_ERROR"


@pytest.mark.parametrize("carrier", ["redis", "host", "redis down"])
async def test_failures_are_counted_across_workers(
    settings_factory: Callable[..., Settings],
    app_factory: Callable[[Settings], Any],
    database_url: str | None,
    carrier: str,
) -> None:
    """Two app instances (as two workers) share the failed-login counts: through Redis, or
    without it, and while it is unreachable, through the host's file in their DATA_DIR
    (each counted alone before: two workers let twice LOGIN_MAX_FAILURES guesses through)."""
    redis_url = None
    if carrier == "redis":
        redis_url = require_redis()
    elif carrier == "redis down":
        redis_url = closed_port_url().replace("http://", "redis://")
    settings = settings_factory(
        database_url=database_url, login_max_failures=2, redis_url=redis_url
    )
    worker_a = await app_factory(settings)
    worker_b = await app_factory(settings)
    user = await create_test_user(worker_a, username=f"shared{secrets.token_hex(6)}")
    address = f"10.{secrets.randbelow(250)}.{secrets.randbelow(250)}.{secrets.randbelow(250)}"

    async with client_at(worker_a, address) as first, client_at(worker_b, address) as second:
        wrong = login_body(user, "bad!bad!")
        assert (await first.post("/api/auth/login", json=wrong)).status_code == 401
        assert (await second.post("/api/auth/login", json=wrong)).status_code == 401
        locked = await first.post("/api/auth/login", json=login_body(user))

    assert locked.status_code == 429
    if carrier == "redis":  # counted in Redis, not passed by the host's file
        for worker in (worker_a, worker_b):
            assert not worker.state.login_throttle.storage.using_fallback
