"""Request id, access log, and the last line of defence for unexpected exceptions."""

from __future__ import annotations

import logging
import re
import time
import uuid
from typing import Any

from sqlalchemy.orm.exc import StaleDataError
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ollama_web.auth.tokens import API_KEY_PREFIX
from ollama_web.core.config import Settings
from ollama_web.core.db import describe_database_error, is_database_outage
from ollama_web.core.errors import (
    AppError,
    DatabaseUnavailableError,
    InternalError,
    NotFoundError,
    encode_error,
)
from ollama_web.core.logging import loggable
from ollama_web.core.net import client_ip

ACCESS = logging.getLogger("ollama_web.access")
ERRORS = logging.getLogger("ollama_web.errors")

_REQUEST_ID = re.compile(r"^[A-Za-z0-9._-]{1,128}$")
CLIENT_CLOSED = 499
"""The status logged and counted for a request that ended without an answer: the client
went away first (nginx's code for it)."""


def pick_request_id(headers: list[tuple[bytes, bytes]]) -> str:
    """The client's X-Request-ID when it is 1-128 of `[A-Za-z0-9._-]`, else a new one. Not
    one that looks like an API key (a key pasted into the wrong header): the id is written
    to access.log as it is, without the redaction pass."""
    for name, value in headers:
        if name == b"x-request-id":
            candidate = value.decode("latin-1")
            if _REQUEST_ID.fullmatch(candidate) and not candidate.startswith(API_KEY_PREFIX):
                return candidate
            break
    return uuid.uuid4().hex


def route_template(scope: Scope) -> str:
    route = scope.get("route")
    path = getattr(route, "path", None)
    return path if isinstance(path, str) else "<unmatched>"


class RequestContextMiddleware:
    def __init__(self, app: ASGIApp, settings: Settings) -> None:
        self.app = app
        self.settings = settings

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = pick_request_id(scope.get("headers", []))
        scope.setdefault("state", {})["request_id"] = request_id
        # Here, not only deeper in: CORS answers preflights before the inner layers run,
        # and the access line must name the client behind a trusted proxy all the same.
        client_ip(scope, self.settings)
        header = (b"x-request-id", request_id.encode())
        started = time.perf_counter()
        status = CLIENT_CLOSED  # unless an answer starts, or an exception says otherwise
        response_started = False

        async def send_wrapper(message: Message) -> None:
            nonlocal status, response_started
            if message["type"] == "http.response.start":
                response_started = True
                status = message["status"]
                message["headers"] = [*message.get("headers", []), header]
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        except Exception as exc:
            error = _rendered(exc, scope, request_id)
            if not response_started:
                await _send_error(send_wrapper, request_id, error)
            status = error.status_code
        finally:
            _log_access(scope, status, started, request_id)


def _rendered(exc: Exception, scope: Scope, request_id: str) -> AppError:
    """What a request that failed unexpectedly answers, logged: the database out of reach
    is a 503 the client may retry (one line: the driver's words); anything else, a bug,
    is a 500 with its traceback in the log."""
    method, path = scope.get("method"), loggable(scope.get("path"))
    if isinstance(exc, StaleDataError):
        # A row this request loaded and changed was deleted by another meanwhile (a key
        # revoked while its account is deleted, a user edited while another admin deletes
        # it): not found, as it is for a request that comes a moment later.
        ERRORS.warning(
            "%s %s [request_id=%s]: its row was deleted meanwhile", method, path, request_id
        )
        return NotFoundError("Not found: it was deleted while this request ran.")
    if is_database_outage(exc):
        ERRORS.error(
            "database unavailable on %s %s [request_id=%s]: %s",
            method,
            path,
            request_id,
            describe_database_error(exc),
        )
        return DatabaseUnavailableError()
    ERRORS.error("unhandled error on %s %s [request_id=%s]", method, path, request_id, exc_info=exc)
    return InternalError("An unexpected error occurred.")


async def _send_error(send: Send, request_id: str, error: AppError) -> None:
    body = encode_error(error.code, error.message, error.details, request_id)
    headers = [(name.lower().encode(), value.encode()) for name, value in error.headers.items()]
    await send(
        {
            "type": "http.response.start",
            "status": error.status_code,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                *headers,
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


def _log_access(scope: Scope, status: int, started: float, request_id: str) -> None:
    state: dict[str, Any] = scope.get("state") or {}
    log_access_line(
        scope.get("method") or "-",
        route_template(scope),
        status,
        (time.perf_counter() - started) * 1000,
        request_id,
        state.get("principal_id") or "-",
        state.get("client_ip", "-"),
    )


def log_access_line(
    method: str,
    template: str,
    status: int,
    duration_ms: float,
    request_id: str,
    principal: str,
    client: str,
) -> None:
    """One line of access.log (also for what the HTTP protocol refuses before any
    application sees it: core/http_guard.py)."""
    ACCESS.info(
        "%s %s %d %.1fms rid=%s principal=%s client=%s",
        method,
        template,
        status,
        duration_ms,
        request_id,
        principal,
        client,
        extra={
            "fields": {
                "method": method,
                "route": template,
                "status": status,
                "duration_ms": round(duration_ms, 2),
                "request_id": request_id,
                "principal_id": principal,
                "client": client,
            }
        },
    )
