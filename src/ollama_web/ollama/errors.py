"""Our errors for upstream (Ollama) failures, and the translation at this edge.

Upstream status codes and bodies never reach our clients raw: `error_from_response` and
`error_from_transport` turn them into one of the classes below.

    AppError
    ├── OllamaUnavailableError  503 OLLAMA_UNAVAILABLE  no node could be reached
    ├── OllamaTimeoutError      504 OLLAMA_TIMEOUT      a node accepted but did not answer in time
    ├── OllamaBusyError         503 OLLAMA_BUSY         the node's queue is full (Retry-After)
    ├── ModelNotFoundError      404 MODEL_NOT_FOUND     no reachable node has the model
    ├── OllamaError             502 OLLAMA_ERROR        anything else the node refused or broke
    ├── OllamaStreamError       502 OLLAMA_STREAM_ERROR a stream failed after its 200
    └── PullInterruptedError    503 PULL_INTERRUPTED    the server stopped during a pull
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any, Literal

import httpx

from ollama_web.core.errors import AppError, NotFoundError

MODEL_SUGGESTION = "Check available models using /api/models endpoint"
DEFAULT_RETRY_AFTER_SECONDS = 2
MAX_UPSTREAM_MESSAGE_CHARS = 500

StreamFailure = Literal["upstream_error", "incomplete", "disconnected"]


class OllamaUnavailableError(AppError):
    status_code = 503
    code = "OLLAMA_UNAVAILABLE"

    def __init__(
        self, message: str = "Ollama is not reachable.", *, details: Mapping[str, Any] | None = None
    ) -> None:
        super().__init__(message, details=details)


class OllamaTimeoutError(AppError):
    status_code = 504
    code = "OLLAMA_TIMEOUT"

    def __init__(
        self,
        message: str = "Ollama did not answer in time.",
        *,
        details: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__(message, details=details)


class OllamaBusyError(AppError):
    status_code = 503
    code = "OLLAMA_BUSY"

    def __init__(
        self,
        message: str = "Ollama is busy; try again shortly.",
        *,
        retry_after: int = DEFAULT_RETRY_AFTER_SECONDS,
        details: Mapping[str, Any] | None = None,
    ) -> None:
        merged = {"retry_after_seconds": retry_after, **(details or {})}
        super().__init__(message, details=merged, headers={"Retry-After": str(retry_after)})
        self.retry_after = retry_after


class PoolBusyError(OllamaBusyError):
    """Our own pool of connections to Ollama is full (of generations): says nothing about
    any node, unlike a node's own 429/503."""


class ModelNotFoundError(NotFoundError):
    code = "MODEL_NOT_FOUND"

    def __init__(self, model_name: str, message: str | None = None) -> None:
        super().__init__(
            message or f"Model {model_name} not found",
            details={"model_name": model_name, "suggestion": MODEL_SUGGESTION},
        )
        self.model_name = model_name


class OllamaError(AppError):
    status_code = 502
    code = "OLLAMA_ERROR"

    def __init__(
        self,
        message: str = "Ollama returned an error.",
        *,
        upstream_message: str = "",
        upstream_status: int | None = None,
        details: Mapping[str, Any] | None = None,
    ) -> None:
        merged: dict[str, Any] = {"upstream_message": upstream_message}
        if upstream_status is not None:
            merged["upstream_status"] = upstream_status
        merged.update(details or {})
        super().__init__(message, details=merged)
        self.upstream_message = upstream_message


class PullInterruptedError(AppError):
    """The server stopped during a pull (its streams end with this)."""

    status_code = 503
    code = "PULL_INTERRUPTED"


class PullCancelledError(AppError):
    """An administrator cancelled the pull (its streams end with this)."""

    status_code = 409
    code = "PULL_CANCELLED"


class OllamaStreamError(AppError):
    """A stream broke after its 200: an error line, an end without `done`, or a drop."""

    status_code = 502
    code = "OLLAMA_STREAM_ERROR"

    _MESSAGES: dict[str, str] = {
        "upstream_error": "Ollama reported an error during the stream.",
        "incomplete": "The Ollama stream ended before it was complete.",
        "disconnected": "The connection to Ollama was lost during the stream.",
    }

    def __init__(self, kind: StreamFailure, upstream_message: str = "") -> None:
        super().__init__(
            self._MESSAGES[kind], details={"kind": kind, "upstream_message": upstream_message}
        )
        self.kind: StreamFailure = kind
        self.upstream_message = upstream_message


def upstream_message(body: bytes) -> str:
    """The `error` of a JSON error body, else the (trimmed) text; never raises."""
    return _read_error_body(body)[0]


def _read_error_body(body: bytes) -> tuple[str, bool]:
    """(`upstream_message`, whether the body is Ollama's JSON error `{"error": ...}`)."""
    text = body.decode("utf-8", "replace").strip()
    try:
        parsed = json.loads(text) if text else None
    except ValueError:
        parsed = None
    error = parsed.get("error") if isinstance(parsed, dict) else None
    if error is not None:
        text = error_text(error)
    return text[:MAX_UPSTREAM_MESSAGE_CHARS], error is not None


def error_text(error: Any) -> str:
    """An `error` value as text: a string as it is, an object's `message` when it has one,
    any other value as JSON (not Python's repr)."""
    if isinstance(error, str):
        return error
    if isinstance(error, dict) and isinstance(error.get("message"), str):
        return str(error["message"])
    return json.dumps(error, ensure_ascii=False, default=str)


def _retry_after(headers: httpx.Headers) -> int:
    value = headers.get("retry-after", "")
    return int(value) if value.isdigit() and 0 < int(value) <= 3600 else DEFAULT_RETRY_AFTER_SECONDS


def error_from_response(
    status: int, headers: httpx.Headers, body: bytes, *, model: str | None = None
) -> AppError:
    """Translate a non-2xx upstream answer. `model` is the model the request was about."""
    message, ollama_json = _read_error_body(body)
    if status == 404:
        if not ollama_json:
            # Not Ollama's JSON but a plain "404 page not found": a path the server does not
            # have (a base URL that is not an Ollama server's, or has a path of its own).
            message = f"{message or 'an empty 404'}: no such API path here; check OLLAMA_URL"
        elif model is not None:
            return ModelNotFoundError(model)  # Ollama's own, whatever its words
    if status in (429, 503):
        retry_after = _retry_after(headers)
        return OllamaBusyError(retry_after=retry_after, details={"upstream_message": message})
    if status in (408, 504):
        return OllamaTimeoutError(details={"upstream_message": message})
    if status == 403 and not message:
        message = "the node refused the request (403 with an empty body: Host or Origin check)"
    return OllamaError(upstream_message=message, upstream_status=status)


def error_from_transport(exc: httpx.TransportError) -> AppError:
    """Translate a transport failure (no usable HTTP answer)."""
    if isinstance(exc, httpx.PoolTimeout):
        return PoolBusyError("Too many requests to Ollama are in progress; try again shortly.")
    if isinstance(exc, httpx.ConnectTimeout | httpx.ConnectError):
        return OllamaUnavailableError(details={"reason": describe_transport_error(exc)})
    if isinstance(exc, httpx.TimeoutException):
        return OllamaTimeoutError(details={"reason": describe_transport_error(exc)})
    return OllamaUnavailableError(details={"reason": describe_transport_error(exc)})


def describe_decoding_error(exc: httpx.DecodingError) -> str:
    """A body labelled with a Content-Encoding it is not in (a proxy's gzip, say)."""
    detail = str(exc).strip()
    return f"an answer that could not be decoded: {detail}"[:200]


def describe_transport_error(exc: httpx.TransportError) -> str:
    """A short, stable description for logs and per-node state (no stack, no URL)."""
    labels: list[tuple[type[httpx.TransportError], str]] = [
        (httpx.ConnectTimeout, "connect timed out"),
        (httpx.ReadTimeout, "read timed out"),
        (httpx.WriteTimeout, "write timed out"),
        (httpx.PoolTimeout, "connection pool exhausted"),
        (httpx.ConnectError, "connection failed"),
        (httpx.RemoteProtocolError, "connection closed by the node"),
        (httpx.ReadError, "connection lost"),
    ]
    for kind, label in labels:
        if isinstance(exc, kind):
            detail = str(exc).strip()
            return f"{label}: {detail}"[:200] if detail else label
    return type(exc).__name__
