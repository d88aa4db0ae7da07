"""Go-compatible details: JSON encoding, timestamps, model names, request decoding."""

from __future__ import annotations

import json
import math
import re
import time
from dataclasses import dataclass
from datetime import datetime
from typing import Any

JSON_CT = "application/json; charset=utf-8"
NDJSON_CT = "application/x-ndjson"
TEXT_CT = "text/plain; charset=utf-8"

DEFAULT_HOST = "registry.ollama.ai"
DEFAULT_NAMESPACE = "library"


class ApiError(Exception):
    """An error answered as ``{"error": message}`` with ``status``."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


# --------------------------------------------------------------------------- JSON

_GO_ESCAPES = str.maketrans(
    {
        "<": "\\u003c",
        ">": "\\u003e",
        "&": "\\u0026",
        "\u2028": "\\u2028",
        "\u2029": "\\u2029",
    }
)


def go_json(obj: Any) -> bytes:
    """Encode like Go's encoding/json: compact, raw UTF-8, HTML characters escaped."""
    text = json.dumps(obj, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
    return text.translate(_GO_ESCAPES).encode("utf-8", "replace")


def go_quote(value: str) -> str:
    """Roughly Go's ``%q``."""
    return json.dumps(value, ensure_ascii=False)


def go_kind(value: Any) -> str:
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    if isinstance(value, dict):
        return "object"
    return "null"


def _go_char(ch: str) -> str:
    if ch == "'":
        return "'\\''"
    if ch == '"':
        return "'\"'"
    return "'" + json.dumps(ch, ensure_ascii=False)[1:-1] + "'"


_SYNTAX_CONTEXT = {
    "Expecting value": "looking for beginning of value",
    "Expecting property name enclosed in double quotes": (
        "looking for beginning of object key string"
    ),
    "Expecting ':' delimiter": "after object key",
    "Expecting ',' delimiter": "after object key:value pair",
    "Invalid control character at": "in string literal",
}


def _syntax_error(text: str, exc: json.JSONDecodeError) -> str:
    if exc.pos >= len(text.rstrip()):
        return "unexpected EOF"
    context = _SYNTAX_CONTEXT.get(exc.msg, "looking for beginning of value")
    return f"invalid character {_go_char(text[exc.pos])} {context}"


def decode_object(body: bytes, struct: str) -> dict[str, Any]:
    """Decode a request body the way gin's ShouldBindJSON does (first JSON value only)."""
    text = body.decode("utf-8", "replace").lstrip(" \t\r\n")
    if not text.strip():
        raise ApiError(400, "missing request body")
    try:
        obj, _ = json.JSONDecoder().raw_decode(text)
    except json.JSONDecodeError as exc:
        raise ApiError(400, _syntax_error(text, exc)) from None
    if not isinstance(obj, dict):
        raise ApiError(
            400, f"json: cannot unmarshal {go_kind(obj)} into Go value of type api.{struct}"
        )
    return obj


def _type_error(value: Any, struct: str, key: str, go_type: str) -> ApiError:
    return ApiError(
        400,
        f"json: cannot unmarshal {go_kind(value)} into Go struct field {struct}.{key} "
        f"of type {go_type}",
    )


def get_str(body: dict[str, Any], key: str, struct: str) -> str:
    value = body.get(key)
    if value is None:
        return ""
    if not isinstance(value, str):
        raise _type_error(value, struct, key, "string")
    return value


_BASE64 = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/")


def base64_error_at(src: bytes) -> int | None:
    """Where Go's ``base64.StdEncoding.Decode`` (how encoding/json reads a []byte) finds
    ``src`` corrupt, its CorruptInputError offset; ``None`` if it decodes. It skips CR/LF
    and wants padding (a port of ``decodeQuantum``)."""
    si = 0
    while si < len(src):
        j = 0
        while j < 4:
            if si == len(src):
                return None if j == 0 else si - j
            ch, si = src[si], si + 1
            if ch in _BASE64:
                j += 1
                continue
            if ch in b"\r\n":
                continue
            if ch != ord("=") or j < 2:
                return si - 1
            if j == 2:  # a second "=" must follow
                while si < len(src) and src[si] in b"\r\n":
                    si += 1
                if si == len(src):
                    return si
                if src[si] != ord("="):
                    return si - 1
                si += 1
            while si < len(src) and src[si] in b"\r\n":
                si += 1
            return si if si < len(src) else None
    return None


def get_int(body: dict[str, Any], key: str, struct: str) -> int:
    value = body.get(key)
    if value is None:
        return 0
    if not isinstance(value, int | float) or isinstance(value, bool):
        raise _type_error(value, struct, key, "int")
    if value != int(value):
        raise ApiError(
            400,
            f"json: cannot unmarshal number {value} into Go struct field {struct}.{key} "
            "of type int",
        )
    return int(value)


def get_bool(body: dict[str, Any], key: str, struct: str) -> bool | None:
    value = body.get(key)
    if value is None or isinstance(value, bool):
        return value
    raise _type_error(value, struct, key, "bool")


def get_list(body: dict[str, Any], key: str, struct: str, go_type: str) -> list[Any]:
    value = body.get(key)
    if value is None:
        return []
    if not isinstance(value, list):
        raise _type_error(value, struct, key, go_type)
    return value


def get_dict(body: dict[str, Any], key: str, struct: str) -> dict[str, Any]:
    value = body.get(key)
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise _type_error(value, struct, key, "map[string]interface {}")
    return value


# ----------------------------------------------------------------------- time


def _fraction(nanos: int) -> str:
    return "." + f"{nanos:09d}".rstrip("0") if nanos else ""


def rfc3339_utc(ns: int | None = None) -> str:
    """Go RFC3339Nano in UTC (``...Z``), trailing zeros dropped."""
    ns = time.time_ns() if ns is None else ns
    secs, nanos = divmod(ns, 1_000_000_000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(secs)) + _fraction(nanos) + "Z"


def rfc3339_local(ns: int) -> str:
    """Go RFC3339Nano in local time with its offset (``Z`` when the offset is zero)."""
    secs, nanos = divmod(ns, 1_000_000_000)
    moment = datetime.fromtimestamp(secs).astimezone()
    offset = moment.utcoffset()
    minutes = int(offset.total_seconds() // 60) if offset else 0
    if minutes == 0:
        zone = "Z"
    else:
        sign = "+" if minutes > 0 else "-"
        zone = f"{sign}{abs(minutes) // 60:02d}:{abs(minutes) % 60:02d}"
    return moment.strftime("%Y-%m-%dT%H:%M:%S") + _fraction(nanos) + zone


_DURATION_UNITS = {
    "ns": 1e-9,
    "us": 1e-6,
    "µs": 1e-6,
    "μs": 1e-6,
    "ms": 1e-3,
    "s": 1.0,
    "m": 60.0,
    "h": 3600.0,
}
_DURATION_RE = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|μs|ms|s|m|h)")


def parse_go_duration(text: str) -> float | None:
    """Seconds for a Go duration string like ``1h30m``; ``None`` if invalid."""
    body = text.lstrip("+-")
    sign = -1.0 if text.startswith("-") else 1.0
    if body == "0":
        return 0.0
    total, pos = 0.0, 0
    for match in _DURATION_RE.finditer(body):
        if match.start() != pos:
            return None
        total += float(match.group(1)) * _DURATION_UNITS[match.group(2)]
        pos = match.end()
    if pos != len(body) or pos == 0:
        return None
    return sign * total


def parse_keep_alive(value: Any) -> float:
    """Seconds to keep a model loaded; ``math.inf`` for forever. Default 5 minutes."""
    if value is None:
        return 300.0
    if isinstance(value, int | float) and not isinstance(value, bool):
        seconds = float(value)
    elif isinstance(value, str):
        parsed = parse_go_duration(value)
        if parsed is None:
            raise ApiError(400, f"time: invalid duration {go_quote(value)}")
        seconds = parsed
    else:
        raise ApiError(400, f"Unsupported type: '{go_kind(value)}'")
    return math.inf if seconds < 0 else seconds


# ---------------------------------------------------------------------- names

# types/model/name.go, isValidPart: a letter, digit or '_' first; then also '-' and '.' (not
# in a namespace), and ':' in a host only; at most 80 characters (350 for a host).
_PART_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,79}$")
_NAMESPACE_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_-]{0,79}$")
_TAG_RE = _PART_RE
_HOST_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.:-]{0,349}$")


@dataclass(frozen=True)
class ModelName:
    host: str
    namespace: str
    model: str
    tag: str

    def key(self) -> tuple[str, str, str, str]:
        return (self.host.lower(), self.namespace.lower(), self.model.lower(), self.tag.lower())

    def short(self) -> str:
        """Display form: ``llama3.2:latest``, ``user/m:tag``, ``hf.co/user/m:tag``."""
        if self.host.lower() != DEFAULT_HOST:
            return f"{self.host}/{self.namespace}/{self.model}:{self.tag}"
        if self.namespace.lower() != DEFAULT_NAMESPACE:
            return f"{self.namespace}/{self.model}:{self.tag}"
        return f"{self.model}:{self.tag}"

    def full(self) -> str:
        return f"{self.host}/{self.namespace}/{self.model}:{self.tag}"


def parse_name(text: str) -> ModelName | None:
    """Parse ``[host/][namespace/]model[:tag]``; ``None`` if the name is invalid."""
    text = text.split("@", 1)[0]
    tag = "latest"
    colon, slash = text.rfind(":"), text.rfind("/")
    if colon > slash:
        text, tag = text[:colon], text[colon + 1 :]
    parts = text.split("/")
    if len(parts) > 3:
        return None
    model = parts[-1]
    namespace = parts[-2] if len(parts) >= 2 else DEFAULT_NAMESPACE
    host = parts[-3] if len(parts) == 3 else DEFAULT_HOST
    valid = (
        _PART_RE.match(model)
        and _NAMESPACE_RE.match(namespace)
        and _HOST_RE.match(host)
        and _TAG_RE.match(tag)
    )
    return ModelName(host, namespace, model, tag) if valid else None


def canonical_name(text: str) -> str:
    parsed = parse_name(text)
    return parsed.short() if parsed else text


# --------------------------------------------------------------------- tokens

_TOKEN_RE = re.compile(r"\s*\S+|\s+")


def tokenize(text: str) -> list[str]:
    """Word-like tokens (leading whitespace attached); they join back to ``text``."""
    return _TOKEN_RE.findall(text)
