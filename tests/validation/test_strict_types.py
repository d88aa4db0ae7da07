"""Request fields take their own JSON type only: `true` is not 1 day, "5" is not 5, "yes" is
not true, an unknown key is refused, and an empty string is not an image (found by an HTTP
fuzz run: each was accepted). Every refusal is a 422 at the field's location."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from tests.fixtures.auth import TestUser

CASES: list[tuple[str, str, dict[str, Any], list[str | int]]] = [
    ("user", "/api/keys", {"name": "k", "expires_in_days": True}, ["expires_in_days"]),
    ("user", "/api/keys", {"name": "k", "expires_in_days": "5"}, ["expires_in_days"]),
    ("admin", "/api/models/pull", {"name": "llama3.2", "extra": 1}, ["extra"]),
    (
        "user",
        "/api/chat/message",
        {"model": "llava", "content": "", "images": [""]},
        ["images", 0],
    ),
]


@pytest.mark.parametrize(("who", "path", "body", "loc"), CASES)
async def test_a_field_of_the_wrong_type_or_an_empty_image_is_422(
    client: httpx.AsyncClient,
    admin_user: TestUser,
    regular_user: TestUser,
    who: str,
    path: str,
    body: dict[str, Any],
    loc: list[str | int],
) -> None:
    user = admin_user if who == "admin" else regular_user
    response = await client.post(path, json=body, headers=user.headers)
    assert response.status_code == 422, response.text
    error = response.json()
    assert error["error"] == "VALIDATION_ERROR"
    assert [field["loc"] for field in error["details"]["fields"]] == [loc]


async def test_key_rotation_grace_and_account_activity_take_their_own_types(
    client: httpx.AsyncClient, admin_user: TestUser, regular_user: TestUser
) -> None:
    key = await client.post("/api/keys", json={"name": "k"}, headers=regular_user.headers)
    rotate = await client.post(
        f"/api/keys/{key.json()['id']}/rotate",
        json={"grace_period_minutes": "5"},
        headers=regular_user.headers,
    )
    assert rotate.status_code == 422, rotate.text
    for value in ("yes", 1, "true"):
        update = await client.patch(
            f"/api/admin/users/{regular_user.id}",
            json={"is_active": value},
            headers=admin_user.headers,
        )
        assert update.status_code == 422, update.text
        assert update.json()["details"]["fields"][0]["loc"] == ["is_active"]
