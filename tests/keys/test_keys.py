"""API keys: shown once and stored hashed, listed with pages, revoked, expired, rotated
with a grace period, used with throttled `last_used_at` writes, verified."""

from __future__ import annotations

import asyncio
import hashlib
import re
import sqlite3
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import delete, event, select, text, update

from ollama_web.core.config import Settings
from ollama_web.db import ApiKey, User
from ollama_web.db.base import utcnow
from ollama_web.keys import router as keys_router
from tests.conftest import asgi_client
from tests.fixtures.auth import TestUser, create_test_user, execute_sql
from tests.fixtures.races import delete_right_before, used_once

KEY_FORMAT = re.compile(r"^owk_[A-Za-z0-9_-]{43}$")


async def new_key(client: httpx.AsyncClient, user: TestUser, **body: Any) -> dict[str, Any]:
    response = await client.post("/api/keys", json={"name": "k", **body}, headers=user.headers)
    assert response.status_code == 201, response.text
    created: dict[str, Any] = response.json()
    return created


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


async def key_row(app: FastAPI, key_id: str) -> ApiKey:
    row: ApiKey = (await execute_sql(app, select(ApiKey).where(ApiKey.id == key_id))).scalar_one()
    return row


async def set_key(app: FastAPI, key_id: str, **values: Any) -> None:
    await execute_sql(app, update(ApiKey).where(ApiKey.id == key_id).values(**values))


async def test_created_key_is_shown_once_and_stored_only_as_a_hash(
    app: FastAPI, client: httpx.AsyncClient, regular_user: TestUser
) -> None:
    created = await new_key(client, regular_user, name="laptop")

    key = created["key"]
    assert KEY_FORMAT.match(key)
    assert created["prefix"] == key[:12]
    assert created["name"] == "laptop"
    assert created["expires_at"] is None
    row = await key_row(app, created["id"])
    assert row.key_hash == hashlib.sha256(key.encode()).hexdigest()
    dump = await execute_sql(app, text("SELECT * FROM api_keys"))
    assert key not in repr(dump.all())
    listed = (await client.get("/api/keys", headers=regular_user.headers)).json()["items"]
    assert all("key" not in item for item in listed)
    assert {item["prefix"] for item in listed} >= {key[:12]}


async def test_a_key_name_is_stored_as_titles_are(
    app: FastAPI, client: httpx.AsyncClient, regular_user: TestUser
) -> None:
    """Terminal escapes, BEL and CR are removed (SECURITY.md: names go through
    sanitize_string), tab and newline kept; a name of control characters only is empty."""
    created = await new_key(client, regular_user, name="laptop\u001b[2J\u0007\r\nX")
    assert created["name"] == "laptop[2J\nX"
    assert (await key_row(app, created["id"])).name == "laptop[2J\nX"
    empty = await client.post(
        "/api/keys", json={"name": "\u001b\u0007"}, headers=regular_user.headers
    )
    assert empty.status_code == 422


async def test_a_key_works_as_bearer_and_as_x_api_key(
    client: httpx.AsyncClient, regular_user: TestUser
) -> None:
    key = (await new_key(client, regular_user))["key"]

    for headers in (bearer(key), {"X-API-Key": key}):
        me = await client.get("/api/auth/me", headers=headers)
        assert me.status_code == 200
        assert me.json()["user"]["id"] == regular_user.id


async def test_garbage_keys_are_invalid(client: httpx.AsyncClient, regular_user: TestUser) -> None:
    for headers in (
        {"Authorization": "Bearer owk_not-a-real-key"},
        {"Authorization": "Bearer something-else"},
        {"Authorization": "Bearer "},
        {"X-API-Key": "owk_" + "A" * 43},
        {"X-API-Key": "owk_" + "A" * 400},
    ):
        response = await client.get("/api/auth/me", headers=headers)

        assert response.status_code == 401, headers
        assert response.json()["error"] == "INVALID_API_KEY"
        assert response.json()["details"] == {}


async def test_revoked_key_is_refused_at_once(
    client: httpx.AsyncClient, regular_user: TestUser
) -> None:
    created = await new_key(client, regular_user)

    revoked = await client.delete(f"/api/keys/{created['id']}", headers=regular_user.headers)
    again = await client.delete(f"/api/keys/{created['id']}", headers=regular_user.headers)
    response = await client.get("/api/auth/me", headers=bearer(created["key"]))

    assert revoked.status_code == again.status_code == 204
    assert response.status_code == 401
    assert response.json()["error"] == "API_KEY_REVOKED"
    active = (await client.get("/api/keys", headers=regular_user.headers)).json()["items"]
    assert created["id"] not in [item["id"] for item in active]
    everything = await client.get(
        "/api/keys", params={"include_revoked": "true"}, headers=regular_user.headers
    )
    statuses = {item["id"]: item["status"] for item in everything.json()["items"]}
    assert statuses[created["id"]] == "revoked"


async def test_revoking_the_key_in_use_locks_it_out_on_the_next_request(
    client: httpx.AsyncClient, regular_user: TestUser
) -> None:
    key_id = (await client.get("/api/auth/me", headers=regular_user.headers)).json()["api_key_id"]

    response = await client.delete(f"/api/keys/{key_id}", headers=regular_user.headers)

    assert response.status_code == 204
    assert (await client.get("/api/keys", headers=regular_user.headers)).status_code == 401


async def test_expired_key_is_refused(
    app: FastAPI, client: httpx.AsyncClient, regular_user: TestUser
) -> None:
    created = await new_key(client, regular_user, expires_in_days=30)
    expires_at = (await key_row(app, created["id"])).expires_at
    assert expires_at is not None
    assert abs(expires_at - (utcnow() + timedelta(days=30))) < timedelta(minutes=1)
    assert (await client.get("/api/auth/me", headers=bearer(created["key"]))).status_code == 200

    await set_key(app, created["id"], expires_at=utcnow() - timedelta(seconds=1))
    response = await client.get("/api/auth/me", headers=bearer(created["key"]))

    assert response.status_code == 401
    assert response.json()["error"] == "API_KEY_EXPIRED"


async def test_server_expiry_policy_is_the_default_and_the_maximum(
    settings_factory: Callable[..., Settings],
    app_factory: Callable[[Settings], Any],
    database_url: str | None,
) -> None:
    app = await app_factory(settings_factory(database_url=database_url, api_key_expiry_days=7))
    user = await create_test_user(app)
    async with asgi_client(app) as http:
        default = await new_key(http, user)
        too_long = await http.post(
            "/api/keys", json={"name": "k", "expires_in_days": 8}, headers=user.headers
        )
        shorter = await new_key(http, user, expires_in_days=2)

    assert default["expires_at"] is not None
    assert too_long.status_code == 422
    assert too_long.json()["details"]["max"] == 7
    assert shorter["expires_at"] < default["expires_at"]


async def test_rotation_keeps_the_old_key_during_the_grace_period(
    app: FastAPI, client: httpx.AsyncClient, regular_user: TestUser
) -> None:
    old = await new_key(client, regular_user, name="ci")

    rotated = await client.post(
        f"/api/keys/{old['id']}/rotate",
        json={"grace_period_minutes": 30},
        headers=regular_user.headers,
    )

    assert rotated.status_code == 201, rotated.text
    new = rotated.json()
    assert new["name"] == "ci"
    assert new["key"] != old["key"]
    assert KEY_FORMAT.match(new["key"])
    assert new["previous_key_id"] == old["id"]
    for key in (old["key"], new["key"]):
        assert (await client.get("/api/auth/me", headers=bearer(key))).status_code == 200
    row = await key_row(app, old["id"])
    assert row.replaced_by_id == new["id"]
    assert row.grace_until is not None
    assert abs(row.grace_until - (utcnow() + timedelta(minutes=30))) < timedelta(minutes=1)

    await set_key(app, old["id"], grace_until=utcnow() - timedelta(seconds=1))
    past_grace = await client.get("/api/auth/me", headers=bearer(old["key"]))

    assert past_grace.status_code == 401
    assert past_grace.json()["error"] == "API_KEY_EXPIRED"
    assert (await client.get("/api/auth/me", headers=bearer(new["key"]))).status_code == 200


async def test_rotation_with_zero_grace_stops_the_old_key_at_once(
    client: httpx.AsyncClient, regular_user: TestUser
) -> None:
    old = await new_key(client, regular_user)

    rotated = await client.post(
        f"/api/keys/{old['id']}/rotate",
        json={"grace_period_minutes": 0},
        headers=regular_user.headers,
    )

    assert rotated.status_code == 201
    response = await client.get("/api/auth/me", headers=bearer(old["key"]))
    assert response.json()["error"] == "API_KEY_EXPIRED"
    assert (await client.get("/api/auth/me", headers=bearer(rotated.json()["key"]))).is_success


async def test_rotation_defaults_to_the_configured_grace_and_keeps_the_lifetime(
    client: httpx.AsyncClient, regular_user: TestUser
) -> None:
    old = await new_key(client, regular_user, expires_in_days=10)

    rotated = await client.post(f"/api/keys/{old['id']}/rotate", headers=regular_user.headers)

    assert rotated.status_code == 201
    body = rotated.json()
    assert body["previous_key_valid_until"] > old["created_at"]
    assert body["expires_at"] > old["expires_at"]
    listed = (await client.get("/api/keys", headers=regular_user.headers)).json()["items"]
    statuses = {item["id"]: item["status"] for item in listed}
    assert statuses[old["id"]] == "rotated"
    assert statuses[body["id"]] == "active"


async def test_only_an_active_key_can_be_rotated(
    client: httpx.AsyncClient, regular_user: TestUser
) -> None:
    old = await new_key(client, regular_user)
    first = await client.post(f"/api/keys/{old['id']}/rotate", headers=regular_user.headers)

    second = await client.post(f"/api/keys/{old['id']}/rotate", headers=regular_user.headers)

    assert first.status_code == 201
    assert second.status_code == 409
    assert second.json()["error"] == "API_KEY_NOT_ACTIVE"


async def test_rotation_grace_is_validated(
    client: httpx.AsyncClient, regular_user: TestUser
) -> None:
    old = await new_key(client, regular_user)

    for grace in (-1, 60 * 24 * 91, "soon"):
        response = await client.post(
            f"/api/keys/{old['id']}/rotate",
            json={"grace_period_minutes": grace},
            headers=regular_user.headers,
        )

        assert response.status_code == 422, grace


async def test_last_used_at_is_written_at_most_once_a_minute(
    app: FastAPI, client: httpx.AsyncClient, regular_user: TestUser
) -> None:
    created = await new_key(client, regular_user)
    assert (await key_row(app, created["id"])).last_used_at is None

    await client.get("/api/auth/me", headers=bearer(created["key"]))
    first = (await key_row(app, created["id"])).last_used_at
    await client.get("/api/auth/me", headers=bearer(created["key"]))
    second = (await key_row(app, created["id"])).last_used_at
    await set_key(app, created["id"], last_used_at=utcnow() - timedelta(minutes=2))
    await client.get("/api/auth/me", headers=bearer(created["key"]))
    third = (await key_row(app, created["id"])).last_used_at

    assert first is not None
    assert second == first
    assert third is not None
    assert utcnow() - third < timedelta(seconds=10)


async def test_key_list_pages_with_signed_cursors(
    client: httpx.AsyncClient, regular_user: TestUser, user_factory: Any
) -> None:
    for n in range(4):
        await new_key(client, regular_user, name=f"k{n}")
    seen: list[str] = []
    cursor = None
    while True:
        params: dict[str, Any] = {"limit": 2}
        if cursor:
            params["cursor"] = cursor
        page = (await client.get("/api/keys", params=params, headers=regular_user.headers)).json()
        seen += [item["name"] for item in page["items"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
        last_cursor = cursor

    assert seen == ["k3", "k2", "k1", "k0", "tests"]
    other = await user_factory()
    foreign = await client.get("/api/keys", params={"cursor": last_cursor}, headers=other.headers)
    # One character of the signature, surely changed: the last two replaced by "AA" were
    # "AA" already about one run in 4 096, and the "tampered" cursor was a 200.
    changed = "B" if last_cursor[-5] == "A" else "A"
    tampered_cursor = last_cursor[:-5] + changed + last_cursor[-4:]
    tampered = await client.get(
        "/api/keys", params={"cursor": tampered_cursor}, headers=regular_user.headers
    )
    for response in (foreign, tampered):
        assert response.status_code == 400
        assert response.json()["error"] == "INVALID_CURSOR"


async def test_list_limit_is_bounded(client: httpx.AsyncClient, regular_user: TestUser) -> None:
    for limit in (0, 201, "x"):
        response = await client.get(
            "/api/keys", params={"limit": limit}, headers=regular_user.headers
        )

        assert response.status_code == 422, limit


async def test_key_creation_is_validated(client: httpx.AsyncClient, regular_user: TestUser) -> None:
    for body in ({}, {"name": ""}, {"name": "x" * 101}, {"name": "k", "expires_in_days": 0}):
        response = await client.post("/api/keys", json=body, headers=regular_user.headers)

        assert response.status_code == 422, body


async def test_keys_of_another_user_are_not_found(
    client: httpx.AsyncClient, regular_user: TestUser, user_factory: Any
) -> None:
    other = await user_factory()
    theirs = await new_key(client, other)

    for method, path in (
        ("GET", f"/api/keys/{theirs['id']}"),
        ("DELETE", f"/api/keys/{theirs['id']}"),
        ("POST", f"/api/keys/{theirs['id']}/rotate"),
    ):
        response = await client.request(method, path, headers=regular_user.headers)
        assert response.status_code == 404, (method, path)
    assert (await client.get("/api/auth/me", headers=bearer(theirs["key"]))).status_code == 200


@pytest.mark.parametrize("db_backend", ["sqlite"])  # PostgreSQL has no inline connection
async def test_on_sqlite_a_key_is_checked_inline_or_through_the_engine_when_locked(
    app: FastAPI, client: httpx.AsyncClient, regular_user: TestUser
) -> None:
    """The lookup and the use record skip SQLAlchemy's engine; with the database locked by
    another process, the record goes through the engine and waits on its thread."""
    core = app.state.core
    assert core.inline is not None
    created = await new_key(client, regular_user)
    through_engine: list[str] = []
    inline: list[str] = []
    event.listen(
        core.engine.sync_engine,
        "before_cursor_execute",
        lambda *args: through_engine.append(args[2].split()[0] + " " + args[2].split("FROM")[-1]),
    )
    core.inline.trace(inline.append)
    try:
        response = await client.get("/api/auth/me", headers=bearer(created["key"]))
        assert response.status_code == 200
        assert response.json()["user"]["username"] == regular_user.username
        assert not [s for s in through_engine if "api_keys" in s]
        assert [s.split()[0] for s in inline] == ["SELECT", "UPDATE"]

        await set_key(app, created["id"], last_used_at=utcnow() - timedelta(minutes=2))
        through_engine.clear()
        holder = sqlite3.connect(core.settings.embedded_database_file, isolation_level=None)
        holder.execute("BEGIN IMMEDIATE")
        asyncio.get_running_loop().call_later(0.3, holder.execute, "COMMIT")
        try:
            response = await client.get("/api/auth/me", headers=bearer(created["key"]))
        finally:
            holder.close()
        assert response.status_code == 200
        assert any(s.startswith("UPDATE") for s in through_engine)
        used = (await key_row(app, created["id"])).last_used_at
        assert used is not None
        assert utcnow() - used < timedelta(seconds=10)
    finally:
        core.inline.trace(None)


@pytest.mark.parametrize("db_backend", ["sqlite"])  # the inline connection is SQLite's
async def test_a_database_that_refuses_writes_does_not_fail_a_key_s_reads(
    app: FastAPI, client: httpx.AsyncClient, regular_user: TestUser
) -> None:
    """A full disk (or a read-only file) refuses the write that records a key's use: the
    request that only reads still answers; the use is recorded by a later request."""
    core = app.state.core
    assert core.inline is not None
    created = await new_key(client, regular_user)
    await set_key(app, created["id"], last_used_at=utcnow() - timedelta(minutes=2))
    core.inline._connection.execute("PRAGMA query_only = ON")  # writes refused, as when full
    try:
        response = await client.get("/api/auth/me", headers=bearer(created["key"]))
    finally:
        core.inline._connection.execute("PRAGMA query_only = OFF")
    assert response.status_code == 200, response.text
    assert response.json()["user"]["username"] == regular_user.username
    assert utcnow() - (await key_row(app, created["id"])).last_used_at > timedelta(minutes=1)


@pytest.mark.parametrize("operation", ["create", "rotate"])
async def test_a_key_for_an_account_deleted_meanwhile_is_401_and_not_stored(
    app: FastAPI,
    client: httpx.AsyncClient,
    regular_user: TestUser,
    monkeypatch: pytest.MonkeyPatch,
    operation: str,
) -> None:
    """Authenticated, then the account is deleted (by an administrator) before the new key
    is written: the creation's lock on the user's row finds none, a rotation's foreign key
    fails (an IntegrityError was a 500), and the caller, gone, is told so as on its next
    request."""
    await used_once(client, regular_user)
    listed = await client.get("/api/keys", headers=regular_user.headers)
    key_id = listed.json()["items"][0]["id"]
    gone = delete(User).where(User.id == regular_user.id)
    with monkeypatch.context() as patched:
        if operation == "create":  # before the first write: the user's row is locked
            delete_right_before(patched, app, keys_router, "check_key_room", gone)
            raced = await client.post(
                "/api/keys", json={"name": "late"}, headers=regular_user.headers
            )
        else:
            delete_right_before(patched, app, keys_router, "rotate_key", gone)
            raced = await client.post(f"/api/keys/{key_id}/rotate", headers=regular_user.headers)
    assert raced.status_code == 401, raced.text
    assert raced.json()["error"] == "UNAUTHENTICATED"
    assert raced.json()["message"] == "This account no longer exists."
    later = await client.get("/api/keys", headers=regular_user.headers)
    assert later.status_code == 401
    keys = await execute_sql(app, select(ApiKey.id))
    assert keys.scalars().all() == []


async def test_a_key_deleted_while_it_is_revoked_is_not_found(
    app: FastAPI,
    client: httpx.AsyncClient,
    regular_user: TestUser,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Its row goes (its account deleted, say) between the route's read and its write: the
    write matches no row. Not found, as a moment later; it was a 500."""
    created = await new_key(client, regular_user)
    gone = delete(ApiKey).where(ApiKey.id == created["id"])
    with monkeypatch.context() as patched:
        delete_right_before(patched, app, keys_router, "revoke_key", gone)
        raced = await client.delete(f"/api/keys/{created['id']}", headers=regular_user.headers)
    assert raced.status_code == 404, raced.text
    assert raced.json()["error"] == "NOT_FOUND"


async def test_a_user_holds_at_most_max_api_keys_per_user_usable_keys(
    settings_factory: Callable[..., Settings],
    app_factory: Callable[[Settings], Any],
    database_url: str | None,
) -> None:
    """Revoked and expired keys do not count; a key rotated and still in its grace does."""
    app = await app_factory(settings_factory(database_url=database_url, max_api_keys_per_user=3))
    user = await create_test_user(app)  # holds one key: its credentials here
    async with asgi_client(app) as http:
        first, second = await new_key(http, user), await new_key(http, user)
        refused = await http.post("/api/keys", json={"name": "k"}, headers=user.headers)
        assert (refused.status_code, refused.json()["error"]) == (409, "CONFLICT")
        assert refused.json()["details"] == {"max_keys": 3}

        revoked = await http.delete(f"/api/keys/{first['id']}", headers=user.headers)
        assert revoked.status_code in (200, 204)
        third = await new_key(http, user)
        await set_key(app, third["id"], expires_at=utcnow() - timedelta(seconds=1))
        fourth = await new_key(http, user)
        rotated = await http.post(
            f"/api/keys/{second['id']}/rotate",
            json={"grace_period_minutes": 5},
            headers=user.headers,
        )
        assert rotated.status_code == 201  # a rotation replaces a key: never refused
        refused_again = await http.post("/api/keys", json={"name": "k"}, headers=user.headers)
    assert fourth["id"]
    assert refused_again.status_code == 409


async def test_keys_created_at_once_stop_at_the_limit(
    settings_factory: Callable[..., Settings],
    app_factory: Callable[[Settings], Any],
    database_url: str | None,
) -> None:
    """The user's row is locked before the keys are counted: twenty creations at once with
    room for two create two."""
    app = await app_factory(settings_factory(database_url=database_url, max_api_keys_per_user=3))
    user = await create_test_user(app)
    async with asgi_client(app) as http:
        answers = await asyncio.gather(
            *(
                http.post("/api/keys", json={"name": f"k{i}"}, headers=user.headers)
                for i in range(20)
            )
        )
    statuses = sorted(answer.status_code for answer in answers)
    assert statuses.count(201) == 2, statuses
    assert set(statuses) <= {201, 409, 503}, statuses
    usable = await execute_sql(
        app, select(ApiKey).where(ApiKey.user_id == user.id, ApiKey.revoked_at.is_(None))
    )
    assert len(usable.scalars().all()) == 3
