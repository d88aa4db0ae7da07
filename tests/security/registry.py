"""What the authorization walks need to know about the API, stated explicitly.

`PUBLIC_OPERATIONS` — the only operations a caller without credentials may use; every other
operation in the OpenAPI schema must answer 401. `POST /api/auth/verify` is listed because
it checks a key given in its body: without one it answers 401 on its own.

`OWNED_RESOURCES` — for every family of paths that take a resource id, an async function that
creates such a resource for a user and returns the values of the path parameters. The
ownership walk creates the resource as one user and proves that every operation on it (read,
update, delete, actions) answers 404 to another user, and something other than 404 to the
owner. A path with `{...}` parameters that matches no entry (and is not excluded) fails the
walk, so a new id-taking route cannot slip through.

To register your domain, add a module `tests/<domain>/ownership.py` defining
`OWNED_RESOURCES: dict[str, OwnedResource]` (it is discovered automatically), e.g.::

    from tests.security.registry import OwnedResource

    async def _conversation(app: FastAPI, owner: TestUser) -> dict[str, str]:
        async with asgi_client(app) as http:
            response = await http.post("/api/conversations", json={...}, headers=owner.headers)
        return {"conversation_id": response.json()["id"]}

    OWNED_RESOURCES = {
        "/api/conversations/{conversation_id}": OwnedResource(
            _conversation,
            bodies={"PUT": {"title": "t", "model": "m"}},  # a valid body where one is needed
            no_owner_probe={"GET /api/conversations/{conversation_id}/events"},  # streams
        ),
    }

The key is a path-template prefix ending at the id parameter; the longest matching prefix
wins, so nested paths (`.../{conversation_id}/messages/{message_id}`) can have their own
entry returning both ids.
"""

from __future__ import annotations

import importlib
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fastapi import FastAPI

from tests.conftest import asgi_client
from tests.fixtures.auth import TestUser, login_session

PUBLIC_OPERATIONS: frozenset[tuple[str, str]] = frozenset(
    {
        ("GET", "/health"),
        ("GET", "/health/live"),
        ("GET", "/health/ready"),
        ("GET", "/info"),
        ("POST", "/api/auth/setup"),
        ("POST", "/api/auth/login"),
        ("GET", "/api/auth/csrf"),
        ("POST", "/api/auth/verify"),  # public, but without a key it answers 401 itself
    }
)
# Served outside the OpenAPI schema, public too.
PUBLIC_UNDOCUMENTED_PATHS = ("/docs", "/redoc", "/openapi.json", "/docs/static/swagger-ui.css")

# Operations under these prefixes are for admins only (metrics also take METRICS_TOKEN): the
# 403 walk proves a regular user is refused on every one of them.
ADMIN_ONLY_PREFIXES: tuple[str, ...] = ("/api/admin/", "/backup", "/metrics")

# Id-taking paths the ownership walk does not cover, and why.
NOT_OWNED_PREFIXES: Mapping[str, str] = {
    # Accounts and nodes that admins manage for everyone (proved admin-only by the 403 walk).
    "/api/admin/": "admin routes act on any account by design",
    # Server-wide database backups, admin-only (proved by the 403 walk).
    "/backup/": "backups belong to the server, not to a user",
    # Models live on the Ollama nodes and are shared by every user: nothing to own.
    "/api/models/": "models are global, not owned",
}

CreateResource = Callable[[FastAPI, TestUser], Awaitable[dict[str, str]]]


@dataclass(frozen=True)
class OwnedResource:
    """How to make a resource of this family for `owner`; returns path parameter values.

    `bodies`: JSON body per method (or per "METHOD /template") where `{}` would fail
    validation before the ownership check. `no_owner_probe`: "METHOD /template" operations
    whose owner request must not be sent (e.g. an endless event stream).
    """

    create: CreateResource
    bodies: Mapping[str, Any] = field(default_factory=dict)
    no_owner_probe: frozenset[str] = frozenset()

    def body_for(self, method: str, template: str) -> Any:
        return self.bodies.get(f"{method} {template}", self.bodies.get(method, {}))


async def _api_key(app: FastAPI, owner: TestUser) -> dict[str, str]:
    async with asgi_client(app) as http:
        response = await http.post("/api/keys", json={"name": "owned"}, headers=owner.headers)
    assert response.status_code == 201, response.text
    return {"key_id": response.json()["id"]}


async def _login_session(app: FastAPI, owner: TestUser) -> dict[str, str]:
    async with asgi_client(app) as http:
        await login_session(http, owner)
        me = await http.get("/api/auth/me")
    return {"session_id": me.json()["session_id"]}


ACCOUNTS_RESOURCES: dict[str, OwnedResource] = {
    "/api/keys/{key_id}": OwnedResource(_api_key),
    "/api/auth/sessions/{session_id}": OwnedResource(_login_session),
}


def owned_resources() -> dict[str, OwnedResource]:
    """The accounts entries plus every `tests/<domain>/ownership.py` OWNED_RESOURCES."""
    registry = dict(ACCOUNTS_RESOURCES)
    tests_dir = Path(__file__).resolve().parent.parent
    for module_path in sorted(tests_dir.glob("*/ownership.py")):
        module = importlib.import_module(f"tests.{module_path.parent.name}.ownership")
        entries: dict[str, OwnedResource] = module.OWNED_RESOURCES
        duplicated = registry.keys() & entries.keys()
        assert not duplicated, f"{module_path}: registered twice: {sorted(duplicated)}"
        registry.update(entries)
    return registry


def entry_for(template: str, registry: Mapping[str, OwnedResource]) -> OwnedResource | None:
    matches = [prefix for prefix in registry if template.startswith(prefix)]
    return registry[max(matches, key=len)] if matches else None


def exclusion_for(template: str) -> str | None:
    for prefix, reason in NOT_OWNED_PREFIXES.items():
        if template.startswith(prefix):
            return reason
    return None
