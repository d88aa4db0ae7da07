"""Refuse text no database can store before any route sees it: NUL characters and unpaired
UTF-16 surrogates, in the path, the query string or a JSON body -> 422 VALIDATION_ERROR.

PostgreSQL `text` cannot hold U+0000 and no UTF-8 encoder accepts a lone surrogate (which
JSON can smuggle in as `"\\ud800"`), so such input would otherwise fail deep in a driver as a
500. Refusing it here gives every route — present and future — the same structured answer on
SQLite and PostgreSQL alike. Everything else (markup, quotes, SQL, `../`) passes untouched:
values are bound as parameters and stored verbatim; escaping happens on output.

Pure ASGI and innermost (inside the body limit, so a body is only ever buffered up to
MAX_REQUEST_BYTES). The body is read when the route first asks for it, after routing, and
only once the accounts domain lets it (`app.state.body_gate`): a route that needs a caller
refuses one without credentials before reading a byte, and checks them first when the
body is large (see `auth.dependencies.authenticate_before_body`).

Only JSON bodies that contain a `\\u` escape are scanned further. A JSON body must be UTF-8
(RFC 8259): one holding a NUL byte is UTF-16 or UTF-32 (UTF-8 JSON never holds one), which
the escape scan would not read, so it is refused as 400 INVALID_JSON. So are the literals
`NaN`, `Infinity` and `-Infinity` outside strings: Python's parser reads them, JSON has no
such values (RFC 8259), and a route would otherwise answer 422 as if a field were wrong.
A body sent with a `Content-Encoding` (gzip, say: none is decoded here) is refused as 415
UNSUPPORTED_MEDIA_TYPE (RFC 9110 15.5.16), not read as JSON that is not UTF-8.
"""

from __future__ import annotations

import json
import re
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import parse_qsl

from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ollama_web.core.errors import (
    NOT_UTF8_JSON,
    AppError,
    BodyRejected,
    InvalidJSONError,
    PayloadTooLargeError,
    UnsupportedMediaTypeError,
    ValidationError,
    encode_error,
)
from ollama_web.core.media import is_json, media_type

# JSON escapes of text no database stores (see `json_has_bad_escape`), in a text whose
# escaped backslashes are replaced (each backslash left starts an escape).
_PAIR = re.compile(rb"\\u[dD][89abAB][0-9a-fA-F]{2}\\u[dD][c-fC-F][0-9a-fA-F]{2}")
_BAD_ESCAPE = re.compile(rb"\\u(?:0000|[dD][89a-fA-F])")
_BAD_CHAR = re.compile("[\x00\ud800-\udfff]")
_QUERY_NUL = re.compile(rb"%00|\x00")
_MESSAGE = "Text may not contain NUL characters or unpaired surrogates"
MAX_REPORTED_FIELDS = 20
MAX_JSON_VALUES = 300_000
"""Values (objects, arrays, strings, numbers...) a JSON body may hold. Parsed, each is a
Python object: 10 MiB of `[{},{},...]` would be 3.5 million dicts, ~200 MB of memory before
anyone is authenticated. An import of 10 000 messages (the most it takes) holds ~230 000."""
_STRING = re.compile(rb'"[^"]*"')  # a JSON string once escaped quotes are taken out
_NON_JSON_CONSTANT = re.compile(rb"NaN|Infinity")
NOT_JSON_CONSTANT = "The request body is not valid JSON: NaN and Infinity are not JSON values."
_SCAN_SLICE = 256 * 1024
BODY_LIMIT_STATE = "body_limit"
"""A `scope["state"]` key the body gate may set: the most this request's body may hold
(a body that comes chunked, with no length to refuse it by, is read up to it, then 413)."""


def _has_bad_char(text: str) -> bool:
    return _BAD_CHAR.search(text) is not None


def json_has_bad_escape(body: bytes) -> bool:
    """True when a JSON text escapes U+0000 or a surrogate that is not part of a pair.

    Done in C (the escaped backslashes taken out, then the surrogate pairs, then a search
    for what is left: 30-130 ms for 10 MiB of escapes), as the body of a login may be
    that: looking at each escape in Python took ~590 ms of the event loop, before anything
    was authenticated or rate limited."""
    if b"\\u" not in body:
        return False
    # JSON's own reading: escaped backslashes first (kept as two other bytes, so that the
    # escapes on either side of one do not become neighbours)
    text = body.replace(b"\\\\", b"__")
    if _BAD_ESCAPE.search(text) is None:
        return False
    return _BAD_ESCAPE.search(_PAIR.sub(b"", text)) is not None


def _encoding_refusal(scope: Scope) -> AppError | None:
    """415 for a body in a content coding (none is decoded here); `identity` is none."""
    for name, value in scope.get("headers", []):
        if name == b"content-encoding" and value.strip().lower() not in (b"", b"identity"):
            return UnsupportedMediaTypeError(
                "Request bodies are taken without a Content-Encoding (no gzip or other "
                "compression).",
                details={"content_encoding": value.decode("latin-1")[:100]},
            )
    return None


def _is_json(scope: Scope) -> bool:
    """Bodies FastAPI may parse as JSON: a JSON media type, or no Content-Type at all (read
    as JSON only with `strict_content_type=False`: by default the route refuses such a body
    with 415, but scanning it too keeps the guard right if that ever changes)."""
    for name, value in scope.get("headers", []):
        if name == b"content-type":
            return is_json(media_type(value.decode("latin-1")))
    return True


class InputGuardMiddleware:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        url_fields = _bad_url_fields(scope)
        if url_fields:
            await _refuse(scope, send, "the URL", url_fields)
            return
        length = _body_length(scope)
        if length == 0:  # no body (none announced): nothing to read, nothing to refuse
            await self.app(scope, receive, send)
            return
        scan = _is_json(scope)
        messages: list[Message] | None = None

        async def read() -> Message:
            """The route's first call reads the whole body (after the caller is checked,
            see `body_gate`), then each call hands on what is left."""
            nonlocal messages
            if messages is None:
                messages = []
                refusal = await _gate(scope, length) or _encoding_refusal(scope)
                if refusal is None:
                    limit = (scope.get("state") or {}).get(BODY_LIMIT_STATE)
                    body, last = await _read_body(receive, limit)
                    if limit is not None and len(body) > limit:
                        refusal = PayloadTooLargeError(
                            "The request body is too large.", details={"max_bytes": limit}
                        )
                    elif scan:
                        refusal = _body_refusal(body)
                    # One copy of the body, one message (the route's join keeps it as is).
                    messages.append(
                        {"type": "http.request", "body": body, "more_body": last is not None}
                    )
                    if last is not None:
                        messages.append(last)
                    del body
                if refusal is not None:
                    # Raised where the route reads its body, so the caller is authenticated
                    # first (API-CONTRACT: 401 before body validation).
                    raise BodyRejected(refusal)
            return messages.pop(0) if messages else await receive()

        await self.app(scope, read, send)


BodyGate = Callable[[Request, "int | None"], Awaitable[None]]


async def _gate(scope: Scope, length: int | None) -> AppError | None:
    """What the accounts domain says before a body is read (`app.state.body_gate`, set by
    its lifespan): an AppError refuses the request without reading it."""
    app = scope.get("app")
    gate: BodyGate | None = getattr(getattr(app, "state", None), "body_gate", None)
    if gate is None:
        return None
    try:
        await gate(Request(scope), length)
    except AppError as exc:
        return exc
    return None


async def _read_body(receive: Receive, limit: int | None = None) -> tuple[bytes, Message | None]:
    """The whole body, and what ended it if not its last chunk (a disconnect); with a
    `limit`, reading stops once the body is past it (the caller refuses it)."""
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] != "http.request":
            return b"".join(chunks), message
        chunks.append(message.get("body", b""))
        size += len(chunks[-1])
        if not message.get("more_body", False) or (limit is not None and size > limit):
            return b"".join(chunks), None


def _body_length(scope: Scope) -> int | None:
    """The body's announced length; None when it comes chunked (or the length is not a
    number: the server refused that before). A request with neither header has no body."""
    length = 0
    for name, value in scope.get("headers", []):
        if name == b"transfer-encoding":
            return None
        if name == b"content-length":
            length = int(value) if value.isdigit() else -1
    return None if length < 0 else length


def json_values_exceed(body: bytes, limit: int) -> bool:
    """True when the JSON text holds `limit` values or more: each after the first in an
    array or object follows a comma, and each array or object opens with a bracket (those
    inside strings are not counted). Scanned a slice at a time, to stop early."""
    if _structure_count(body) < limit:
        return False  # an upper bound (commas inside strings count too): nothing to scan
    text = _without_escapes(body)
    count, in_string = 0, False
    for start in range(0, len(text), _SCAN_SLICE):
        piece = text[start : start + _SCAN_SLICE]
        if in_string:
            end = piece.find(b'"')
            if end < 0:
                continue
            piece, in_string = piece[end + 1 :], False
        if piece.count(b'"') % 2:
            piece, in_string = piece[: piece.rfind(b'"')], True
        count += _structure_count(_STRING.sub(b"", piece))
        if count >= limit:
            return True
    return False


def has_non_json_constant(body: bytes) -> bool:
    """True when `NaN` or `Infinity` appears outside the strings of a JSON text."""
    if b"NaN" not in body and b"Infinity" not in body:
        return False
    text = _without_escapes(body)
    return _NON_JSON_CONSTANT.search(_STRING.sub(b"", text)) is not None


def _without_escapes(body: bytes) -> bytes:
    """A JSON text without its escaped backslashes and quotes: each string then runs from a
    quote to the next (`_STRING`)."""
    return body.replace(b"\\\\", b"").replace(b'\\"', b"")


def _structure_count(text: bytes) -> int:
    return text.count(b",") + text.count(b"[") + text.count(b"{")


def _body_refusal(body: bytes) -> AppError | None:
    if b"\x00" in body:
        return InvalidJSONError(NOT_UTF8_JSON)
    if has_non_json_constant(body):
        return InvalidJSONError(NOT_JSON_CONSTANT)
    if json_values_exceed(body, MAX_JSON_VALUES):
        return PayloadTooLargeError(
            f"The JSON body holds more than {MAX_JSON_VALUES} values.",
            details={"max_json_values": MAX_JSON_VALUES},
        )
    fields = bad_json_fields(body) if json_has_bad_escape(body) else []
    if fields:
        return ValidationError(_refusal("the JSON body"), details={"fields": fields})
    return None


def _field(loc: list[str | int]) -> dict[str, Any]:
    return {"loc": loc, "message": _MESSAGE, "type": "string_invalid_characters"}


def _bad_url_fields(scope: Scope) -> list[dict[str, Any]]:
    fields = [_field(["path"])] if _has_bad_char(scope.get("path", "")) else []
    query: bytes = scope.get("query_string", b"")
    if _QUERY_NUL.search(query):
        for name, value in parse_qsl(query.decode("latin-1"), keep_blank_values=True):
            if "\x00" in name or "\x00" in value:
                fields.append(_field(["query", name.replace("\x00", "")[:100]]))
        fields = fields or [_field(["query"])]
    return fields


def bad_json_fields(body: bytes) -> list[dict[str, Any]]:
    """Where in a JSON document the refused text sits ([] if it is not valid JSON: the
    route's own parsing then answers 400 INVALID_JSON)."""
    try:
        document = json.loads(body)
    except (ValueError, RecursionError):
        return []
    found: list[dict[str, Any]] = []
    stack: list[tuple[Any, list[str | int]]] = [(document, [])]
    while stack and len(found) < MAX_REPORTED_FIELDS:
        value, loc = stack.pop()
        if isinstance(value, str) and _has_bad_char(value):
            found.append(_field(loc))
        elif isinstance(value, dict):
            for key, item in value.items():
                if _has_bad_char(key):
                    found.append(_field([*loc, key.encode("utf-8", "replace").decode()]))
                stack.append((item, [*loc, key]))
        elif isinstance(value, list):
            stack.extend((item, [*loc, index]) for index, item in enumerate(value))
    return found


def _refusal(where: str) -> str:
    return f"Text in {where} may not contain NUL characters or unpaired surrogates."


async def _refuse(scope: Scope, send: Send, where: str, fields: list[dict[str, Any]]) -> None:
    request_id = str((scope.get("state") or {}).get("request_id", ""))
    body = encode_error("VALIDATION_ERROR", _refusal(where), {"fields": fields}, request_id)
    await send(
        {
            "type": "http.response.start",
            "status": 422,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})
