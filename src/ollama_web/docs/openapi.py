"""The OpenAPI document as the server really answers: FastAPI's, completed once from the routes.

The three ways in (Bearer key, X-API-Key, session cookie) are security schemes. A route's
dependencies say the rest, so a new route needs no list edited: one marked `requires(CALLER)`
or `requires(ADMIN)` (auth.dependencies) gives `security` (any one scheme), 401 and 403
(disabled account; not an admin; a cookie write without its CSRF token); the app-wide
rate-limit dependency gives 429 unless the route's group is exempt. An operation that takes a
JSON body also gets the refusals of its body: 400 INVALID_JSON, 413 PAYLOAD_TOO_LARGE and
415 UNSUPPORTED_MEDIA_TYPE; one that pages with a `cursor`, 400 INVALID_CURSOR. Every
error response (4xx/5xx) then shows the one error envelope (`ErrorResponse`;
`ValidationErrorResponse` for 422) in place of FastAPI's `HTTPValidationError`, a shape this
server never sends.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from copy import deepcopy
from typing import Any

from fastapi import FastAPI
from fastapi.dependencies.models import Dependant
from fastapi.routing import APIRoute
from pydantic.json_schema import models_json_schema

from ollama_web.auth.dependencies import (
    ADMIN,
    API_KEY_HEADER,
    CALLER,
    CSRF_HEADER,
    UNSAFE_METHODS,
    required_level,
)
from ollama_web.auth.sessions import SESSION_COOKIE
from ollama_web.auth.tokens import API_KEY_PREFIX
from ollama_web.core.errors import ErrorResponse, ValidationErrorResponse
from ollama_web.core.routes import each_route
from ollama_web.ratelimit.dependencies import enforce_rate_limit
from ollama_web.ratelimit.limiter import group_for

REF = "#/components/schemas/{model}"
JSON = "application/json"
# FastAPI's own 422 schemas, which no response of ours has.
FASTAPI_VALIDATION_SCHEMAS = ("HTTPValidationError", "ValidationError")

Document = dict[str, Any]

SECURITY_SCHEMES: dict[str, Any] = {
    "ApiKeyBearer": {
        "type": "http",
        "scheme": "bearer",
        "description": f"An API key (`{API_KEY_PREFIX}...`) as `Authorization: Bearer <key>`. "
        "The /metrics routes also take METRICS_TOKEN this way.",
    },
    "ApiKeyHeader": {
        "type": "apiKey",
        "in": "header",
        "name": API_KEY_HEADER,
        "description": f"An API key in the `{API_KEY_HEADER}` header.",
    },
    "SessionCookie": {
        "type": "apiKey",
        "in": "cookie",
        "name": SESSION_COOKIE,
        "description": "The session cookie set by POST /api/auth/login. POST, PUT, PATCH and "
        f"DELETE also need the session's CSRF token (GET /api/auth/csrf) in `{CSRF_HEADER}`.",
    },
}
# Any one of the schemes (OpenAPI: the entries of the list are alternatives).
ANY_CREDENTIAL: list[dict[str, list[str]]] = [{name: []} for name in SECURITY_SCHEMES]

# (code the description must mention, the reason added when it does not).
Reason = tuple[str, str]
UNAUTHENTICATED: tuple[Reason, ...] = (
    (
        "UNAUTHENTICATED",
        "no credentials, or a session that is unknown or has ended (UNAUTHENTICATED)",
    ),
    (
        "INVALID_API_KEY",
        "an API key that is unknown (INVALID_API_KEY), revoked "
        "(API_KEY_REVOKED) or expired (API_KEY_EXPIRED)",
    ),
)
NOT_ADMIN: Reason = ("FORBIDDEN", "not an administrator (FORBIDDEN)")
CSRF: Reason = (
    "CSRF_TOKEN_INVALID",
    f"a session-cookie request without the session's {CSRF_HEADER} (CSRF_TOKEN_INVALID)",
)
DISABLED: Reason = ("ACCOUNT_DISABLED", "the account is disabled (ACCOUNT_DISABLED)")
RATE_LIMITED: Reason = ("RATE_LIMITED", "too many requests (RATE_LIMITED)")
# Status -> the reasons any operation taking a JSON body may be refused for its body alone.
BODY_REFUSALS: dict[str, tuple[Reason, ...]] = {
    "400": (
        (
            "INVALID_JSON",
            "the body is not JSON: malformed, empty, nested too deeply or not UTF-8 (INVALID_JSON)",
        ),
    ),
    "413": (
        (
            "PAYLOAD_TOO_LARGE",
            "the body is over MAX_REQUEST_BYTES, or its JSON holds over 300 000 values "
            "(PAYLOAD_TOO_LARGE)",
        ),
    ),
    "415": (
        (
            "UNSUPPORTED_MEDIA_TYPE",
            f"the body was not sent as `Content-Type: {JSON}`, or was sent in a "
            "`Content-Encoding` (UNSUPPORTED_MEDIA_TYPE)",
        ),
    ),
}
# A list's `cursor` query parameter (core/pagination.py) that does not verify.
BAD_CURSOR: Reason = (
    "INVALID_CURSOR",
    "a `cursor` that is malformed, tampered with, or from another list (INVALID_CURSOR)",
)
# middleware/input_guard.py: text no database can store, wherever the request carries it.
BAD_TEXT: Reason = (
    "NUL",
    "text in the path, the query or the JSON body holding a NUL character or an unpaired "
    "UTF-16 surrogate, which no database stores (VALIDATION_ERROR)",
)
RETRY_AFTER = {
    "Retry-After": {
        "description": "Seconds to wait before trying again",
        "schema": {"type": "integer"},
    }
}


def _envelope_schemas() -> dict[str, Any]:
    _, schema = models_json_schema(
        [(ErrorResponse, "validation"), (ValidationErrorResponse, "validation")],
        ref_template=REF,
    )
    definitions: dict[str, Any] = schema["$defs"]
    return definitions


def _is_error(status: str) -> bool:
    return (status.isdigit() and int(status) >= 400) or status in ("4XX", "5XX")


def _says_fastapi_validation(response: dict[str, Any]) -> bool:
    schema = response.get("content", {}).get(JSON, {}).get("schema", {})
    return bool(schema.get("$ref") == REF.format(model="HTTPValidationError"))


def document_error_envelope(operation: dict[str, Any]) -> None:
    """Point every error response of `operation` that shows no body of its own (or
    FastAPI's validation error) to the envelope."""
    for status, response in operation.get("responses", {}).items():
        if not _is_error(status):
            continue
        if "content" in response and not _says_fastapi_validation(response):
            continue  # a body of its own (e.g. the health report with a 503)
        model = ValidationErrorResponse if status == "422" else ErrorResponse
        response["content"] = {JSON: {"schema": {"$ref": REF.format(model=model.__name__)}}}


def _status_order(item: tuple[str, Any]) -> tuple[bool, str]:
    return (not item[0].isdigit(), item[0])


def _add_reasons(responses: dict[str, Any], status: str, reasons: tuple[Reason, ...]) -> None:
    response = responses.setdefault(status, {})
    said = str(response.get("description", ""))
    missing = [text for code, text in reasons if code not in said]
    description = "; ".join([part for part in (said, *missing) if part])
    response["description"] = description[:1].upper() + description[1:]


def _dependency_calls(dependant: Dependant) -> list[Any]:
    """The route's endpoint and every dependency it resolves, however deep."""
    calls: list[Any] = []
    stack = [dependant]
    while stack:
        current = stack.pop()
        calls.append(current.call)
        stack.extend(current.dependencies)
    return calls


def document_access(operation: dict[str, Any], route: Any, method: str) -> None:
    """Security, 401 and 403 from the route's auth dependencies; 429 from its rate limit
    (`route`: an APIRoute, or FastAPI's context of one, as served)."""
    responses: dict[str, Any] = operation.setdefault("responses", {})
    calls = _dependency_calls(route.dependant)
    levels = {required_level(call) for call in calls}
    level = ADMIN if ADMIN in levels else CALLER if CALLER in levels else None
    if level is not None:
        operation.setdefault("security", deepcopy(ANY_CREDENTIAL))
        _add_reasons(responses, "401", UNAUTHENTICATED)
        forbidden: tuple[Reason, ...] = (NOT_ADMIN,) if level == ADMIN else ()
        if method in UNSAFE_METHODS:
            forbidden += (CSRF,)
        _add_reasons(responses, "403", (*forbidden, DISABLED))
    limited = group_for(route.path_format, method, route.endpoint) is not None
    if limited and enforce_rate_limit in calls:
        _add_reasons(responses, "429", (RATE_LIMITED,))
        responses["429"].setdefault("headers", deepcopy(RETRY_AFTER))


def document_body_refusals(operation: dict[str, Any]) -> None:
    """400, 413 and 415 for an operation that takes a JSON body. (Authentication comes
    first: a caller without credentials gets its 401 even for such a body.)"""
    if JSON not in operation.get("requestBody", {}).get("content", {}):
        return
    responses: dict[str, Any] = operation.setdefault("responses", {})
    for status, reasons in BODY_REFUSALS.items():
        _add_reasons(responses, status, reasons)


def document_cursor_refusal(operation: dict[str, Any]) -> None:
    """400 INVALID_CURSOR for an operation that pages with a `cursor` query parameter."""
    parameters = operation.get("parameters", [])
    if any(p.get("in") == "query" and p.get("name") == "cursor" for p in parameters):
        _add_reasons(operation.setdefault("responses", {}), "400", (BAD_CURSOR,))


def document_text_refusal(operation: dict[str, Any]) -> None:
    """422 for text no database stores, on an operation that takes text: a JSON body, or a
    path or query parameter."""
    takes_json = JSON in operation.get("requestBody", {}).get("content", {})
    in_url = any(p.get("in") in ("path", "query") for p in operation.get("parameters", []))
    if takes_json or in_url:
        _add_reasons(operation.setdefault("responses", {}), "422", (BAD_TEXT,))


def _served_routes(app: FastAPI) -> list[Any]:
    """Every API route as served: path with its prefix, dependencies with the app's."""
    return [
        route
        for route in each_route(app.routes)
        if isinstance(getattr(route, "original_route", route), APIRoute) and route.include_in_schema
    ]


def _operations(app: FastAPI, document: Document) -> list[tuple[Any, str, dict[str, Any]]]:
    found = []
    paths = document.get("paths", {})
    for route in _served_routes(app):
        for method in sorted(route.methods or ()):
            operation = paths.get(route.path_format, {}).get(method.lower())
            if operation is not None:
                found.append((route, method, operation))
    return found


def _drop_unreferenced(document: Document, names: tuple[str, ...]) -> None:
    schemas = document.get("components", {}).get("schemas", {})
    for name in names:
        rest = {key: value for key, value in schemas.items() if key != name}
        used = f'"{REF.format(model=name)}"' in json.dumps([document.get("paths"), rest])
        if name in schemas and not used:
            del schemas[name]


def complete_document(app: FastAPI, document: Document) -> Document:
    for route, method, operation in _operations(app, document):
        document_access(operation, route, method)
    for item in document.get("paths", {}).values():
        for operation in item.values():
            document_body_refusals(operation)
            document_cursor_refusal(operation)
            document_text_refusal(operation)
            document_error_envelope(operation)
            responses = operation.get("responses", {})
            operation["responses"] = dict(sorted(responses.items(), key=_status_order))
    components = document.setdefault("components", {})
    components.setdefault("schemas", {}).update(_envelope_schemas())
    components.setdefault("securitySchemes", {}).update(deepcopy(SECURITY_SCHEMES))
    _drop_unreferenced(document, FASTAPI_VALIDATION_SCHEMAS)
    return document


def install_openapi(app: FastAPI) -> None:
    """Make `app.openapi()` (and so /openapi.json and the docs) return the completed
    document. FastAPI's builds it on first use and keeps it (until routes are added); each
    new one is completed once."""
    build: Callable[[], Document] = app.openapi
    completed: Document | None = None

    def openapi() -> Document:
        nonlocal completed
        document = build()
        if document is not completed:
            completed = complete_document(app, document)
        return document

    app.openapi = openapi  # type: ignore[method-assign]
