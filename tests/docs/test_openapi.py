"""The OpenAPI document describes the error bodies the server really sends, how to
authenticate, and which operations need a caller, an admin, a CSRF token, or are rate-limited."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import httpx
import pytest
from fastapi import APIRouter, FastAPI

from ollama_web.app import create_app
from ollama_web.auth.dependencies import AdminPrincipal, CurrentPrincipal
from ollama_web.core.config import Settings
from ollama_web.ratelimit.limiter import EXEMPT, rate_limit_group
from tests.docs.jsonschema_subset import problems
from tests.fixtures.auth import DEFAULT_TEST_PASSWORD, TestUser, login_session
from tests.security.registry import ADMIN_ONLY_PREFIXES, PUBLIC_OPERATIONS

DUMMY_ID = "0" * 32
ANY_CREDENTIAL = [{"ApiKeyBearer": []}, {"ApiKeyHeader": []}, {"SessionCookie": []}]
# Admin-only operations outside ADMIN_ONLY_PREFIXES.
ADMIN_ONLY_OPERATIONS = {
    ("POST", "/api/models/pull"),
    ("POST", "/api/models/pull/cancel"),
    ("DELETE", "/api/models/{name}"),
    ("GET", "/api/admin/ollama/nodes"),
}
# Operations that write a conversation's options: FORBIDDEN for a user's runner options.
RUNNER_OPTION_OPERATIONS = {
    ("POST", "/api/conversations"),
    ("POST", "/api/conversations/import"),
    ("PUT", "/api/conversations/{conversation_id}"),
    ("PATCH", "/api/conversations/{conversation_id}"),
    ("POST", "/api/chat/stream"),
    ("POST", "/api/chat/message"),
}
# Public operations that check a password or key given to them (their own 401 and 403).
CHECK_CREDENTIALS_THEMSELVES = {"/api/auth/login", "/api/auth/verify"}
NOT_RATE_LIMITED = {"/health", "/health/live", "/health/ready"}
WRITES = {"POST", "PUT", "PATCH", "DELETE"}


@pytest.fixture
def settings(settings_factory: Callable[..., Settings], database_url: str | None) -> Settings:
    # One auth request a minute: the second login is refused with a 429.
    return settings_factory(
        database_url=database_url, rate_limit_enabled=True, rate_limit_auth_per_minute=1
    )


@pytest.fixture
def document(settings_factory: Callable[..., Settings]) -> dict[str, Any]:
    """The document of an app that was never started (building it touches nothing)."""
    schema: dict[str, Any] = create_app(settings_factory()).openapi()
    return schema


def documented_schema(
    document: dict[str, Any], method: str, template: str, status: int
) -> dict[str, Any]:
    responses = document["paths"][template][method.lower()]["responses"]
    assert str(status) in responses, f"{method} {template}: {status} is not documented"
    schema: dict[str, Any] = responses[str(status)]["content"]["application/json"]["schema"]
    return schema


def assert_documented(
    document: dict[str, Any], response: httpx.Response, template: str, status: int
) -> None:
    assert response.status_code == status, response.text
    method = response.request.method
    found = problems(
        response.json(), documented_schema(document, method, template, status), document
    )
    assert not found, f"{method} {template} {status}: {found}"


async def test_real_error_bodies_match_the_documented_schemas(
    app: FastAPI, client: httpx.AsyncClient, admin_user: TestUser, regular_user: TestUser
) -> None:
    document = (await client.get("/openapi.json")).json()
    user, admin = regular_user.headers, admin_user.headers
    invalid = await client.post("/api/keys", json={"name": 5}, headers=user)
    assert_documented(document, invalid, "/api/keys", 422)
    assert invalid.json()["details"]["fields"][0]["loc"] == ["name"]
    unknown = await client.get(f"/api/conversations/{DUMMY_ID}", headers=user)
    assert_documented(document, unknown, "/api/conversations/{conversation_id}", 404)
    tampered = await client.get("/api/conversations?cursor=x", headers=user)
    assert_documented(document, tampered, "/api/conversations", 400)
    assert tampered.json()["error"] == "INVALID_CURSOR"
    anonymous = await client.get("/api/keys")
    assert_documented(document, anonymous, "/api/keys", 401)
    taken = {"username": regular_user.username, "password": DEFAULT_TEST_PASSWORD}
    duplicate = await client.post("/api/admin/users", json=taken, headers=admin)
    assert_documented(document, duplicate, "/api/admin/users", 409)
    login = {"username": "nobody", "password": "wrong password"}
    wrong = await client.post("/api/auth/login", json=login)
    assert_documented(document, wrong, "/api/auth/login", 401)
    limited = await client.post("/api/auth/login", json=login)
    assert_documented(document, limited, "/api/auth/login", 429)
    assert limited.json()["error"] == "RATE_LIMITED"


def test_every_error_response_is_the_envelope(document: dict[str, Any]) -> None:
    wrong: list[str] = []
    for path, item in document["paths"].items():
        for method, operation in item.items():
            for status, response in operation["responses"].items():
                if int(status) < 400 or (path, status) == ("/health", "503"):
                    continue  # /health answers its report, unhealthy, with a 503
                expected = "ValidationErrorResponse" if status == "422" else "ErrorResponse"
                schema = response.get("content", {}).get("application/json", {}).get("schema")
                if schema != {"$ref": f"#/components/schemas/{expected}"}:
                    wrong.append(f"{method.upper()} {path} {status}: {schema}")
    assert not wrong, "error responses without the envelope:\n" + "\n".join(wrong)
    assert "HTTPValidationError" not in json.dumps(document)
    assert '#/components/schemas/ValidationError"' not in json.dumps(document)


def test_the_envelope_schema_refuses_other_shapes(document: dict[str, Any]) -> None:
    envelope = {"$ref": "#/components/schemas/ErrorResponse"}
    validation = {"$ref": "#/components/schemas/ValidationErrorResponse"}
    good = {"error": "NOT_FOUND", "message": "m", "details": {}, "request_id": "r"}
    assert problems(good, envelope, document) == []
    assert problems({"detail": [{"loc": ["body"], "msg": "m", "type": "t"}]}, envelope, document)
    assert problems({**good, "details": []}, envelope, document)
    assert problems(good, validation, document), "a 422 says VALIDATION_ERROR"
    field = {"loc": ["name"], "message": "m", "type": "string_type"}
    fields = {**good, "error": "VALIDATION_ERROR", "details": {"fields": [field]}}
    assert problems(fields, validation, document) == []
    broken = {**fields, "details": {"fields": [{"loc": "name"}]}}
    assert len(problems(broken, validation, document)) == 3


def test_the_document_is_built_once(settings_factory: Callable[..., Settings]) -> None:
    app = create_app(settings_factory())
    first = app.openapi()
    assert app.openapi() is first
    assert app.openapi_schema is first


def operations(document: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    return [
        (method.upper(), path, operation)
        for path, item in document["paths"].items()
        for method, operation in item.items()
    ]


def description(operation: dict[str, Any], status: int) -> str:
    return str(operation["responses"].get(str(status), {}).get("description", ""))


def test_the_three_ways_in_are_security_schemes(document: dict[str, Any]) -> None:
    schemes = document["components"]["securitySchemes"]
    assert {
        name: (s["type"], s.get("scheme"), s.get("in"), s.get("name"))
        for name, s in schemes.items()
    } == {
        "ApiKeyBearer": ("http", "bearer", None, None),
        "ApiKeyHeader": ("apiKey", None, "header", "X-API-Key"),
        "SessionCookie": ("apiKey", None, "cookie", "ow_session"),
    }


def test_every_operation_documents_its_access(document: dict[str, Any]) -> None:
    wrong: list[str] = []
    for method, path, operation in operations(document):
        public = (method, path) in PUBLIC_OPERATIONS
        admin = path.startswith(ADMIN_ONLY_PREFIXES) or (method, path) in ADMIN_ONLY_OPERATIONS
        expected = {
            "security": None if public else ANY_CREDENTIAL,
            "401": not public or path in CHECK_CREDENTIALS_THEMSELVES,
            "403 FORBIDDEN": admin or (method, path) in RUNNER_OPTION_OPERATIONS,
            "403 CSRF_TOKEN_INVALID": not public and method in WRITES,
            "403 ACCOUNT_DISABLED": not public or path in CHECK_CREDENTIALS_THEMSELVES,
            "429": path not in NOT_RATE_LIMITED,
            "Retry-After": path not in NOT_RATE_LIMITED,
        }
        retry_after = operation["responses"].get("429", {}).get("headers", {})
        found = {
            "security": operation.get("security"),
            "401": "401" in operation["responses"],
            "403 FORBIDDEN": "FORBIDDEN" in description(operation, 403),
            "403 CSRF_TOKEN_INVALID": "CSRF_TOKEN_INVALID" in description(operation, 403),
            "403 ACCOUNT_DISABLED": "ACCOUNT_DISABLED" in description(operation, 403),
            "429": "429" in operation["responses"],
            "Retry-After": "Retry-After" in retry_after,
        }
        wrong += [
            f"{method} {path}: {key} is {found[key]}, expected {value}"
            for key, value in expected.items()
            if found[key] != value
        ]
    assert not wrong, "\n".join(wrong)


def test_every_operation_with_a_json_body_documents_its_refusals(
    document: dict[str, Any],
) -> None:
    refusals = {400: "INVALID_JSON", 413: "PAYLOAD_TOO_LARGE", 415: "UNSUPPORTED_MEDIA_TYPE"}
    wrong: list[str] = []
    for method, path, operation in operations(document):
        takes_json = "application/json" in operation.get("requestBody", {}).get("content", {})
        wrong += [
            f"{method} {path}: {status} {code} documented is {not takes_json}"
            for status, code in refusals.items()
            if (code in description(operation, status)) != takes_json
        ]
    assert not wrong, "\n".join(wrong)
    password = document["paths"]["/api/auth/password"]["post"]
    assert "INVALID_CURRENT_PASSWORD" in description(password, 400), "a route's own 400 stays"


def test_every_operation_that_takes_text_documents_the_refusal_of_text_no_database_stores(
    document: dict[str, Any],
) -> None:
    wrong: list[str] = []
    taking = 0
    for method, path, operation in operations(document):
        takes_json = "application/json" in operation.get("requestBody", {}).get("content", {})
        in_url = any(p["in"] in ("path", "query") for p in operation.get("parameters", []))
        takes_text = takes_json or in_url
        taking += takes_text
        if ("NUL character" in description(operation, 422)) != takes_text:
            wrong.append(f"{method} {path}: the refusal documented is {not takes_text}")
    assert not wrong, "\n".join(wrong)
    assert taking > 20
    health = document["paths"]["/health"]["get"]
    assert "422" not in health["responses"]


async def test_real_text_refusals_match_the_documented_schemas(
    client: httpx.AsyncClient, regular_user: TestUser
) -> None:
    document = (await client.get("/openapi.json")).json()
    user = regular_user.headers
    in_body = await client.post("/api/keys", json={"name": "a\u0000b"}, headers=user)
    assert_documented(document, in_body, "/api/keys", 422)
    in_query = await client.get("/api/conversations", params={"q": "a\x00"}, headers=user)
    assert_documented(document, in_query, "/api/conversations", 422)
    for refused in (in_body, in_query):
        assert refused.json()["error"] == "VALIDATION_ERROR"


def test_every_paged_list_documents_its_cursor_refusal(document: dict[str, Any]) -> None:
    paged = []
    for method, path, operation in operations(document):
        parameters = operation.get("parameters", [])
        takes_cursor = any(p["in"] == "query" and p["name"] == "cursor" for p in parameters)
        assert ("INVALID_CURSOR" in description(operation, 400)) == takes_cursor, (method, path)
        if takes_cursor:
            paged.append(f"{method} {path}")
    assert {"GET /api/conversations", "GET /api/keys", "GET /api/admin/audit"} <= set(paged)


widgets = APIRouter(prefix="/api/widgets")


@widgets.get("")
async def list_widgets(principal: CurrentPrincipal) -> list[str]:
    return []


@widgets.post("")
async def make_widget(principal: AdminPrincipal) -> str:
    return "made"


@widgets.get("/open")
async def open_widgets() -> list[str]:
    return []


@widgets.get("/free")
@rate_limit_group(EXEMPT)
async def free_widgets() -> list[str]:
    return []


def test_access_is_derived_from_the_routes_dependencies(
    settings_factory: Callable[..., Settings],
) -> None:
    app = create_app(settings_factory())
    app.include_router(widgets)
    paths = app.openapi()["paths"]
    listing, making = paths["/api/widgets"]["get"], paths["/api/widgets"]["post"]
    assert listing["security"] == making["security"] == ANY_CREDENTIAL
    assert "401" in listing["responses"]
    assert "401" in making["responses"]
    assert "FORBIDDEN" not in description(listing, 403)
    assert "CSRF_TOKEN_INVALID" not in description(listing, 403)
    assert "FORBIDDEN" in description(making, 403)
    assert "CSRF_TOKEN_INVALID" in description(making, 403)
    unauthenticated = paths["/api/widgets/open"]["get"]
    assert "security" not in unauthenticated
    assert set(unauthenticated["responses"]) == {"200", "429"}
    assert set(paths["/api/widgets/free"]["get"]["responses"]) == {"200"}


async def test_real_access_refusals_match_the_documented_schemas(
    client: httpx.AsyncClient, regular_user: TestUser
) -> None:
    document = (await client.get("/openapi.json")).json()
    anonymous = await client.get("/api/models")
    assert_documented(document, anonymous, "/api/models", 401)
    pull = {"name": "llama3.2"}
    not_admin = await client.post("/api/models/pull", json=pull, headers=regular_user.headers)
    assert_documented(document, not_admin, "/api/models/pull", 403)
    assert not_admin.json()["error"] == "FORBIDDEN"
    await login_session(client, regular_user)
    no_csrf = await client.post("/api/keys", json={"name": "k"})
    assert_documented(document, no_csrf, "/api/keys", 403)
    assert no_csrf.json()["error"] == "CSRF_TOKEN_INVALID"


async def test_real_body_refusals_match_the_documented_schemas(
    client: httpx.AsyncClient, regular_user: TestUser
) -> None:
    document = (await client.get("/openapi.json")).json()
    user = regular_user.headers
    deep = b"[" * 100_000 + b"]" * 100_000
    for content, content_type, status in [
        (deep, "application/json", 400),
        (b'{"name": "k"}', "text/plain", 415),
    ]:
        headers = {"content-type": content_type, **user}
        response = await client.post("/api/keys", content=content, headers=headers)
        assert_documented(document, response, "/api/keys", status)
