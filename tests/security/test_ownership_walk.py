"""Every operation on a path that takes a resource id answers 404 to a user who does not
own the resource — read, update, delete and actions alike — and not 404 to its owner.

Resources come from the registry in tests/security/registry.py (plus each domain's
tests/<domain>/ownership.py). An id-taking path with no registry entry fails loudly.
"""

from __future__ import annotations

import asyncio
import re
from typing import Any

import httpx
from fastapi import FastAPI

from tests.fixtures.auth import TestUser, UserFactory
from tests.security.registry import entry_for, exclusion_for, owned_resources
from tests.security.test_authorization_walk import HTTP_METHODS, REQUEST_TIMEOUT_SECONDS

PARAMETER = re.compile(r"\{([^}]+)\}")


def id_taking_operations(app: FastAPI) -> list[tuple[str, str]]:
    return [
        (method.upper(), path)
        for path, item in app.openapi()["paths"].items()
        if PARAMETER.search(path) and exclusion_for(path) is None
        for method in item
        if method in HTTP_METHODS
    ]


def fill(template: str, values: dict[str, str]) -> str:
    missing = set(PARAMETER.findall(template)) - values.keys()
    assert not missing, f"{template}: the registry entry returned no value for {missing}"
    return PARAMETER.sub(lambda match: values[match.group(1)], template)


async def call(
    client: httpx.AsyncClient, method: str, path: str, user: TestUser, body: Any
) -> httpx.Response:
    kwargs: dict[str, Any] = {"headers": user.headers}
    if method in {"POST", "PUT", "PATCH"}:
        kwargs["json"] = body
    return await asyncio.wait_for(client.request(method, path, **kwargs), REQUEST_TIMEOUT_SECONDS)


async def test_every_id_taking_route_has_a_registry_entry(app: FastAPI) -> None:
    registry = owned_resources()
    missing = sorted(
        {template for _, template in id_taking_operations(app) if not entry_for(template, registry)}
    )
    assert not missing, (
        "routes taking a resource id without an ownership registry entry "
        f"(see tests/security/registry.py): {missing}"
    )


async def test_other_users_resources_are_not_found(
    app: FastAPI, client: httpx.AsyncClient, user_factory: UserFactory
) -> None:
    owner = await user_factory()
    stranger = await user_factory()
    registry = owned_resources()
    operations = id_taking_operations(app)
    assert operations
    wrong: list[str] = []
    for method, template in operations:
        entry = entry_for(template, registry)
        assert entry is not None, f"{template} has no registry entry"
        path = fill(template, await entry.create(app, owner))  # a fresh resource each time
        body = entry.body_for(method, template)

        refused = await call(client, method, path, stranger, body)
        if refused.status_code != 404:
            wrong.append(f"stranger {method} {template} -> {refused.status_code}")
            continue
        if f"{method} {template}" in entry.no_owner_probe:
            continue
        allowed = await call(client, method, path, owner, body)
        if allowed.status_code == 404 or allowed.status_code >= 500:
            wrong.append(f"owner {method} {template} -> {allowed.status_code}")
    assert not wrong, "ownership is not enforced as expected:\n" + "\n".join(wrong)
