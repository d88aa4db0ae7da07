"""The one error hierarchy and the handlers that render every error in one shape:
`{"error": CODE, "message": str, "details": object, "request_id": str}`.

Catch at the level you mean: `AppError` for anything we raise on purpose; the subclasses
below for one kind of failure.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Annotated, Any, Literal

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match

from ollama_web.core.logging import loggable
from ollama_web.core.media import is_json, media_type

logger = logging.getLogger("ollama_web.errors")


class AppError(Exception):
    """Base of every error we render. Subclasses fix the status and code."""

    status_code: int = 400
    code: str = "BAD_REQUEST"

    def __init__(
        self,
        message: str,
        *,
        details: Mapping[str, Any] | None = None,
        code: str | None = None,
        status_code: int | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.details: dict[str, Any] = dict(details or {})
        if code is not None:
            self.code = code
        if status_code is not None:
            self.status_code = status_code
        self.headers: dict[str, str] = dict(headers or {})


class BadRequestError(AppError):
    status_code = 400
    code = "BAD_REQUEST"


class InvalidJSONError(AppError):
    status_code = 400
    code = "INVALID_JSON"


class InvalidCursorError(AppError):
    status_code = 400
    code = "INVALID_CURSOR"


class UnauthenticatedError(AppError):
    status_code = 401
    code = "UNAUTHENTICATED"


class AccountGoneError(UnauthenticatedError):
    """The caller's account was deleted while its request ran (its rows could not be
    written): its credentials went with it, as the next request would be told."""

    def __init__(self) -> None:
        super().__init__("This account no longer exists.")


class ForbiddenError(AppError):
    status_code = 403
    code = "FORBIDDEN"


class NotFoundError(AppError):
    status_code = 404
    code = "NOT_FOUND"


class MethodNotAllowedError(AppError):
    status_code = 405
    code = "METHOD_NOT_ALLOWED"


class ConflictError(AppError):
    status_code = 409
    code = "CONFLICT"


class PayloadTooLargeError(AppError):
    status_code = 413
    code = "PAYLOAD_TOO_LARGE"


class UnsupportedMediaTypeError(AppError):
    status_code = 415
    code = "UNSUPPORTED_MEDIA_TYPE"


class ValidationError(AppError):
    status_code = 422
    code = "VALIDATION_ERROR"


class DatabaseUnavailableError(AppError):
    """The database could not be reached or used for now: try again shortly."""

    status_code = 503
    code = "DATABASE_UNAVAILABLE"
    retry_after_seconds = 5

    def __init__(self) -> None:
        super().__init__(
            "The database is unavailable; try again shortly.",
            headers={"Retry-After": str(self.retry_after_seconds)},
        )


class RateLimitedError(AppError):
    status_code = 429
    code = "RATE_LIMITED"


class ServiceUnavailableError(AppError):
    status_code = 503
    code = "SERVICE_UNAVAILABLE"


class InternalError(AppError):
    status_code = 500
    code = "INTERNAL_ERROR"


ErrorCode = Annotated[
    str, Field(description="Machine-readable code: UNAUTHENTICATED, NOT_FOUND, RATE_LIMITED, ...")
]
ErrorMessage = Annotated[str, Field(description="For people; the wording may change")]
RequestId = Annotated[str, Field(description="This request's id, as in the X-Request-ID header")]


class ErrorResponse(BaseModel):
    """The body of every error response."""

    error: ErrorCode
    message: ErrorMessage
    details: dict[str, Any] = Field(description="Facts about this error; `{}` when none")
    request_id: RequestId


class FieldError(BaseModel):
    loc: list[int | str] = Field(description="Where: body field path, or `query`/`path` + name")
    message: str
    type: str = Field(description="pydantic's error type, e.g. `missing`, `string_too_long`")


class ValidationErrorDetails(BaseModel):
    model_config = ConfigDict(extra="allow")

    fields: list[FieldError] = Field(
        default_factory=list,
        description="One entry per invalid field when the payload failed validation; a check "
        "made by the route itself (e.g. an unknown node) puts its own keys here instead",
    )


class ValidationErrorResponse(BaseModel):
    """A 422 body."""

    error: Literal["VALIDATION_ERROR"]
    message: ErrorMessage
    details: ValidationErrorDetails
    request_id: RequestId


class BodyRejected(StarletteHTTPException):
    """Raised while the body streams in (from `receive`) to refuse it with an AppError.

    An HTTPException, so FastAPI's body reading lets it through; the handler renders the
    carried error — after authenticating the caller first (see `authenticate_before`).
    """

    def __init__(self, error: AppError) -> None:
        super().__init__(status_code=error.status_code, detail=error.message)
        self.error = error


# Set by the accounts domain: raises the AppError the matched route's dependencies would
# have raised first (rate limit, no caller, not an administrator). FastAPI reads the body
# before it resolves dependencies, so body errors would otherwise answer before them (the
# contract says 401 first).
BodyErrorAuthenticator = Callable[[Request], Awaitable[None]]


async def authenticate_before(request: Request) -> JSONResponse | None:
    authenticate: BodyErrorAuthenticator | None = getattr(
        request.app.state, "body_error_authenticator", None
    )
    if authenticate is None:
        return None
    try:
        await authenticate(request)
    except AppError as exc:
        return error_response(
            request, exc.status_code, exc.code, exc.message, exc.details, exc.headers
        )
    return None


def request_id_of(scope_or_request: Request | Mapping[str, Any]) -> str:
    scope = scope_or_request.scope if isinstance(scope_or_request, Request) else scope_or_request
    state = scope.get("state") or {}
    value = state.get("request_id", "") if isinstance(state, dict) else ""
    return str(value)


def error_body(
    code: str, message: str, details: Mapping[str, Any] | None, request_id: str
) -> dict[str, Any]:
    return {
        "error": code,
        "message": message,
        "details": dict(details or {}),
        "request_id": request_id,
    }


def error_response(
    request: Request | Mapping[str, Any],
    status_code: int,
    code: str,
    message: str,
    details: Mapping[str, Any] | None = None,
    headers: Mapping[str, str] | None = None,
) -> JSONResponse:
    body = error_body(code, message, details, request_id_of(request))
    return JSONResponse(body, status_code=status_code, headers=dict(headers or {}))


def encode_error(
    code: str, message: str, details: Mapping[str, Any] | None, request_id: str
) -> bytes:
    return json.dumps(error_body(code, message, details, request_id)).encode()


async def _app_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, AppError)
    return error_response(request, exc.status_code, exc.code, exc.message, exc.details, exc.headers)


_HTTP_CODES = {
    400: ("BAD_REQUEST", "The request is malformed."),
    401: ("UNAUTHENTICATED", "Authentication is required."),
    403: ("FORBIDDEN", "You are not allowed to do this."),
    404: ("NOT_FOUND", "The requested resource was not found."),
    405: ("METHOD_NOT_ALLOWED", "This method is not allowed on this path."),
    413: ("PAYLOAD_TOO_LARGE", "The request body is too large."),
}


NOT_UTF8_JSON = "The request body must be JSON encoded as UTF-8."
NOT_JSON = "The request body is not valid JSON."


def _unreadable_json(exc: StarletteHTTPException) -> InvalidJSONError | None:
    """The error for a body FastAPI's JSON parsing gave up on for another reason than its
    syntax (that one is a RequestValidationError). FastAPI answers it with
    `HTTPException(400, "There was an error parsing the body")` raised from the cause: the
    RecursionError of a body nested too deeply for the parser, the UnicodeDecodeError of one
    that is not UTF-8. No other 400 HTTPException of ours carries a cause."""
    cause = exc.__cause__
    if exc.status_code != 400 or cause is None:
        return None
    if isinstance(cause, RecursionError):
        return InvalidJSONError("The request body is JSON nested too deeply to be read.")
    if isinstance(cause, UnicodeError):
        return InvalidJSONError(NOT_UTF8_JSON)
    return InvalidJSONError(NOT_JSON)


async def _http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    body_error = exc.error if isinstance(exc, BodyRejected) else _unreadable_json(exc)
    if body_error is not None:
        return await authenticate_before(request) or await _app_error(request, body_error)
    code, message = _HTTP_CODES.get(exc.status_code, ("HTTP_ERROR", "The request failed."))
    if exc.status_code not in (404, 405) and isinstance(exc.detail, str) and exc.detail:
        message = exc.detail
    headers = dict(exc.headers or {})
    if exc.status_code == 405:
        headers["Allow"] = ", ".join(allowed_methods(request))
    return error_response(request, exc.status_code, code, message, {}, headers)


PROBED_METHODS = ("GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")


def allowed_methods(request: Request) -> list[str]:
    """The methods the app's routes serve on the request's path (RFC 9110 15.5.6: a 405
    lists them in `Allow`). The router's own 405 names only the first route it found for
    the path (one per method: `GET /api/admin/users` says `Allow: GET`, though POST is
    served too), so each method is matched again. Only a refused request pays for this.
    HEAD is served wherever GET is (middleware/head.py)."""
    scope = request.scope
    routes = request.app.router.routes
    path = {"type": "http", "path": scope["path"], "root_path": scope.get("root_path", "")}
    allowed = []
    for method in PROBED_METHODS:
        probe = {**path, "method": method, "headers": [], "query_string": b""}
        if any(route.matches(probe)[0] is Match.FULL for route in routes):
            allowed.append(method)
            if method == "GET":
                allowed.append("HEAD")
    return allowed


def _clean_loc(loc: tuple[int | str, ...]) -> list[int | str]:
    return [part for part in loc if part != "body" or len(loc) == 1]


def _body_missing(errors: Sequence[Mapping[str, Any]]) -> bool:
    return any(
        err.get("type") == "missing" and tuple(err.get("loc", ())) == ("body",) for err in errors
    )


def _body_error(
    request: Request, body: Any, errors: Sequence[Mapping[str, Any]]
) -> AppError | None:
    """The refusal of a body that could not be read as JSON, or None: a syntax error is
    INVALID_JSON. FastAPI parses a body as JSON only under a JSON Content-Type
    (`application/json`, `application/*+json`); under any other, or none (its
    `strict_content_type`, which keeps a cross-site form from posting JSON), the route's
    model gets the raw bytes and fails with a misleading "Input should be a valid
    dictionary" at `body`: that is UNSUPPORTED_MEDIA_TYPE."""
    if any(err.get("type") == "json_invalid" for err in errors):
        return InvalidJSONError(NOT_JSON)
    content_type = request.headers.get("content-type")
    media = media_type(content_type)[:100] if content_type else None
    if body is None and media is not None and is_json(media) and _body_missing(errors):
        return InvalidJSONError(NOT_JSON)  # an empty body said to be JSON is not JSON
    body_failed = any(tuple(err.get("loc", ()))[:1] == ("body",) for err in errors)
    if not (isinstance(body, bytes | bytearray) and body and body_failed):
        return None
    return UnsupportedMediaTypeError(
        "This endpoint takes a JSON body: send it with Content-Type: application/json.",
        details={"content_type": media},
    )


async def _validation_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    errors = exc.errors()
    body_error = _body_error(request, exc.body, errors)
    if body_error is not None:
        # After the caller is known, like every body error (API-CONTRACT: 401 first).
        return await authenticate_before(request) or await _app_error(request, body_error)
    fields = [
        {
            "loc": _clean_loc(tuple(err.get("loc", ()))),
            "message": str(err.get("msg", "")),
            "type": str(err.get("type", "")),
        }
        for err in errors
    ]
    return error_response(
        request, 422, "VALIDATION_ERROR", "The request payload is invalid.", {"fields": fields}
    )


async def _unexpected_error(request: Request, exc: Exception) -> JSONResponse:
    logger.error(
        "unhandled error on %s %s [request_id=%s]",
        request.method,
        loggable(request.url.path),
        request_id_of(request),
        exc_info=exc,
    )
    return error_response(request, 500, "INTERNAL_ERROR", "An unexpected error occurred.")


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(AppError, _app_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(Exception, _unexpected_error)
