"""The audit trail records account events and is listed, paginated, at /api/admin/audit."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import httpx
from fastapi import FastAPI

from tests.conftest import asgi_client

ADMIN = {"username": "root", "password": "root password"}


async def all_events(
    client: httpx.AsyncClient, headers: dict[str, str], **params: Any
) -> list[Any]:
    events: list[Any] = []
    cursor = None
    while True:
        query = {"limit": 3, **params, **({"cursor": cursor} if cursor else {})}
        response = await client.get("/api/admin/audit", params=query, headers=headers)
        assert response.status_code == 200, response.text
        events += response.json()["items"]
        cursor = response.json()["next_cursor"]
        if cursor is None:
            return events


async def test_account_events_are_recorded_with_actor_target_and_address(
    app: FastAPI, client: httpx.AsyncClient
) -> None:
    setup = (await client.post("/api/auth/setup", json=ADMIN)).json()
    admin = {"Authorization": f"Bearer {setup['api_key']}"}
    csrf = setup["csrf_token"]
    async with asgi_client(app) as other:
        await other.post("/api/auth/login", json={**ADMIN, "password": "wrong password"})
        await other.post("/api/auth/login", json=ADMIN)
    key = (await client.post("/api/keys", json={"name": "k"}, headers=admin)).json()
    rotated = (await client.post(f"/api/keys/{key['id']}/rotate", headers=admin)).json()
    await client.delete(f"/api/keys/{rotated['id']}", headers=admin)
    bob = {"username": "bob", "password": "bob password"}
    user = (await client.post("/api/admin/users", json=bob, headers=admin)).json()
    await client.patch(f"/api/admin/users/{user['id']}", json={"role": "admin"}, headers=admin)
    await client.delete(f"/api/admin/users/{user['id']}", headers=admin)
    await client.post("/api/auth/logout", headers={"X-CSRF-Token": csrf})
    password = {"current_password": ADMIN["password"], "new_password": "newer password"}
    await client.post("/api/auth/password", json=password, headers=admin)

    events = await all_events(client, admin)

    actions = [event["action"] for event in reversed(events)]
    assert actions == [
        "auth.setup",
        "auth.login_failed",
        "auth.login",
        "key.created",
        "key.rotated",
        "key.revoked",
        "admin.user_created",
        "admin.user_updated",
        "admin.user_deleted",
        "auth.logout",
        "auth.password_changed",
    ]
    admin_id = setup["user"]["id"]
    assert all(event["ip_address"] == "127.0.0.1" for event in events)
    assert all(event["actor_user_id"] == admin_id for event in events)
    by_action = {event["action"]: event for event in events}
    assert by_action["admin.user_updated"]["target_id"] == user["id"]
    assert by_action["admin.user_updated"]["details"]["role"] == {"from": "user", "to": "admin"}
    assert by_action["auth.login_failed"]["details"]["reason"] == "bad_password"
    assert by_action["key.rotated"]["target_id"] == key["id"]
    assert all(
        "password" not in str(event["details"]).replace("bad_password", "")
        or event["action"] == "admin.user_updated"
        for event in events
    )


async def test_audit_can_be_filtered_by_action(client: httpx.AsyncClient) -> None:
    setup = (await client.post("/api/auth/setup", json=ADMIN)).json()
    admin = {"Authorization": f"Bearer {setup['api_key']}"}
    for n in range(4):
        await client.post("/api/keys", json={"name": f"k{n}"}, headers=admin)

    created = await all_events(client, admin, action="key.created")
    mine = await all_events(client, admin, actor_user_id=setup["user"]["id"])

    assert [event["details"]["name"] for event in created] == ["k3", "k2", "k1", "k0"]
    assert len(mine) == 5


async def test_a_failed_login_is_recorded_although_the_request_fails(
    client: httpx.AsyncClient,
) -> None:
    setup = (await client.post("/api/auth/setup", json=ADMIN)).json()
    admin = {"Authorization": f"Bearer {setup['api_key']}"}

    response = await client.post(
        "/api/auth/login", json={"username": "ghost", "password": "whatever it is"}
    )

    assert response.status_code == 401
    failures = await all_events(client, admin, action="auth.login_failed")
    assert len(failures) == 1
    assert failures[0]["actor_user_id"] is None
    assert failures[0]["details"] == {"username": "ghost", "reason": "unknown_user"}


async def test_audit_since_takes_any_offset_and_refuses_a_time_without_a_utc_form(
    client: httpx.AsyncClient,
) -> None:
    setup = (await client.post("/api/auth/setup", json=ADMIN)).json()
    admin = {"Authorization": f"Bearer {setup['api_key']}"}
    await client.post("/api/keys", json={"name": "k"}, headers=admin)
    events = await all_events(client, admin)
    newest = datetime.fromisoformat(events[0]["created_at"])

    def at(moment: datetime) -> list[Any]:
        return [e["action"] for e in events if datetime.fromisoformat(e["created_at"]) >= moment]

    tokyo = newest.astimezone(timezone(timedelta(hours=9)))
    assert [e["action"] for e in await all_events(client, admin, since=tokyo.isoformat())] == at(
        newest
    )
    naive_utc = newest.astimezone(UTC).replace(tzinfo=None).isoformat()  # read as UTC
    assert [e["action"] for e in await all_events(client, admin, since=naive_utc)] == at(newest)
    later = (newest + timedelta(seconds=1)).isoformat()
    assert await all_events(client, admin, since=later) == []

    for value in ("9999-12-31T23:59:59-14:00", "0001-01-01T00:00:00+14:00", "yesterday"):
        response = await client.get("/api/admin/audit", params={"since": value}, headers=admin)
        assert response.status_code == 422, response.text
        body = response.json()
        assert body["error"] == "VALIDATION_ERROR"
        assert body["details"]["fields"][0]["loc"] == ["query", "since"]


async def test_an_api_key_typed_as_a_username_is_not_kept_in_the_audit_log(
    client: httpx.AsyncClient,
) -> None:
    """Every admin reads the audit log, and backups keep it: a key pasted into the login
    form's username field is recorded redacted, as the log files would write it."""
    setup = (await client.post("/api/auth/setup", json=ADMIN)).json()
    admin = {"Authorization": f"Bearer {setup['api_key']}"}
    key = setup["api_key"]
    response = await client.post("/api/auth/login", json={"username": key, "password": "x" * 8})
    assert response.status_code == 401
    (failure,) = await all_events(client, admin, action="auth.login_failed")
    assert failure["details"] == {"username": "owk_[REDACTED]", "reason": "unknown_user"}
    everything = (await client.get("/api/admin/audit", headers=admin, params={"limit": 200})).text
    assert key not in everything


async def test_a_failed_login_name_keeps_no_terminal_escapes_in_the_audit_log(
    client: httpx.AsyncClient,
) -> None:
    """Anyone may post a login: its unknown name reaches every admin's audit view without
    the control characters that would drive their terminal."""
    setup = (await client.post("/api/auth/setup", json=ADMIN)).json()
    admin = {"Authorization": f"Bearer {setup['api_key']}"}
    name = "ghost\u001b[2J\u001b[31m\rFAKE\u0007"
    response = await client.post("/api/auth/login", json={"username": name, "password": "x" * 8})
    assert response.status_code == 401
    (failure,) = await all_events(client, admin, action="auth.login_failed")
    assert failure["details"] == {"username": "ghost[2J[31mFAKE", "reason": "unknown_user"}
