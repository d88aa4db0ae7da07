"""Every operation in the OpenAPI schema requires a caller, except the documented public
set (tests/security/registry.py); every /api/admin operation requires an admin.

These walks read the live schema, so routes added later are covered without editing them.
"""

from __future__ import annotations

import asyncio
import re
from typing import Any

import httpx
from fastapi import FastAPI

from tests.fixtures.auth import TestUser
from tests.security.registry import (
    ADMIN_ONLY_PREFIXES,
    PUBLIC_OPERATIONS,
    PUBLIC_UNDOCUMENTED_PATHS,
)

DUMMY_ID = "0" * 32
HTTP_METHODS = {"get", "post", "put", "patch", "delete"}
REQUEST_TIMEOUT_SECONDS = 15


def operations(app: FastAPI) -> list[tuple[str, str]]:
    return [
        (method.upper(), path)
        for path, item in app.openapi()["paths"].items()
        for method in item
        if method in HTTP_METHODS
    ]


def concrete(template: str) -> str:
    return re.sub(r"\{[^}]+\}", DUMMY_ID, template)


async def send(
    client: httpx.AsyncClient, method: str, template: str, headers: dict[str, str] | None = None
) -> httpx.Response:
    kwargs: dict[str, Any] = {"headers": headers or {}}
    if method in {"POST", "PUT", "PATCH"}:
        kwargs["json"] = {}
    request = client.request(method, concrete(template), **kwargs)
    return await asyncio.wait_for(request, REQUEST_TIMEOUT_SECONDS)


async def test_public_set_matches_the_schema(app: FastAPI) -> None:
    stale = PUBLIC_OPERATIONS - set(operations(app))
    assert not stale, f"public operations that no longer exist: {sorted(stale)}"


async def test_every_operation_without_credentials_is_401_unless_public(
    app: FastAPI, client: httpx.AsyncClient
) -> None:
    wrong: list[str] = []
    for method, template in operations(app):
        response = await send(client, method, template)
        public = (method, template) in PUBLIC_OPERATIONS
        # /api/auth/verify is public, but with no key given it answers 401 itself.
        expected_401 = template == "/api/auth/verify" or not public
        if (response.status_code == 401) != expected_401:
            wrong.append(f"{method} {template} -> {response.status_code}")
        elif expected_401 and response.json()["error"] != "UNAUTHENTICATED":
            wrong.append(f"{method} {template} -> {response.json()['error']}")
    assert not wrong, "unexpected answers without credentials:\n" + "\n".join(wrong)


async def test_every_protected_operation_refuses_bad_credentials(
    app: FastAPI, client: httpx.AsyncClient
) -> None:
    garbage_key = {"Authorization": "Bearer owk_" + "x" * 43}
    garbage_cookie = {"Cookie": "ow_session=not-a-session"}
    wrong: list[str] = []
    for method, template in operations(app):
        if (method, template) in PUBLIC_OPERATIONS:
            continue
        for headers, code in ((garbage_key, "INVALID_API_KEY"), (garbage_cookie, None)):
            response = await send(client, method, template, headers)
            if response.status_code != 401 or (code and response.json()["error"] != code):
                wrong.append(f"{method} {template} {list(headers)} -> {response.status_code}")
    assert not wrong, "bad credentials were not refused:\n" + "\n".join(wrong)


async def test_public_pages_answer_without_credentials(client: httpx.AsyncClient) -> None:
    for path in PUBLIC_UNDOCUMENTED_PATHS:
        response = await client.get(path)
        assert response.status_code == 200, path


async def test_every_admin_operation_is_forbidden_to_a_regular_user(
    app: FastAPI, client: httpx.AsyncClient, regular_user: TestUser
) -> None:
    admin_operations = [
        (method, template)
        for method, template in operations(app)
        if template.startswith(ADMIN_ONLY_PREFIXES)
    ]
    assert admin_operations
    wrong: list[str] = []
    for method, template in admin_operations:
        response = await send(client, method, template, regular_user.headers)
        if response.status_code != 403 or response.json()["error"] != "FORBIDDEN":
            wrong.append(f"{method} {template} -> {response.status_code}")
    assert not wrong, "admin operations open to a regular user:\n" + "\n".join(wrong)
