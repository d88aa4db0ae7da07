"""The OpenAPI document as the server really answers: FastAPI's, completed once from the routes.

Every documented error response (4xx/5xx) carries the one error envelope (`ErrorResponse`;
`ValidationErrorResponse` for 422), which replaces FastAPI's `HTTPValidationError` — a shape
this server never sends. The result is built on the first `app.openapi()` and cached.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from fastapi import FastAPI
from pydantic.json_schema import models_json_schema

from ollama_web.core.errors import ErrorResponse, ValidationErrorResponse

REF = "#/components/schemas/{model}"
JSON = "application/json"
# FastAPI's own 422 schemas, which no response of ours has.
FASTAPI_VALIDATION_SCHEMAS = ("HTTPValidationError", "ValidationError")

Document = dict[str, Any]


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


def _drop_unreferenced(document: Document, names: tuple[str, ...]) -> None:
    schemas = document.get("components", {}).get("schemas", {})
    for name in names:
        rest = {key: value for key, value in schemas.items() if key != name}
        used = f'"{REF.format(model=name)}"' in json.dumps([document.get("paths"), rest])
        if name in schemas and not used:
            del schemas[name]


def complete_document(document: Document) -> Document:
    for item in document.get("paths", {}).values():
        for operation in item.values():
            document_error_envelope(operation)
    components = document.setdefault("components", {})
    components.setdefault("schemas", {}).update(_envelope_schemas())
    _drop_unreferenced(document, FASTAPI_VALIDATION_SCHEMAS)
    return document


def install_openapi(app: FastAPI) -> None:
    """Make `app.openapi()` (and so /openapi.json and the docs) return the completed
    document, built on first use and cached like FastAPI's own."""
    build: Callable[[], Document] = app.openapi

    def openapi() -> Document:
        if app.openapi_schema is None:
            app.openapi_schema = complete_document(build())
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
