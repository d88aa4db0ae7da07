"""The OpenAPI document describes the error bodies the server really sends."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from ollama_web.app import create_app
from ollama_web.core.config import Settings
from tests.docs.jsonschema_subset import problems
from tests.fixtures.auth import DEFAULT_TEST_PASSWORD, TestUser

DUMMY_ID = "0" * 32


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
