"""Input hygiene for short human-entered text and pattern checks for identifiers.

`sanitize_string(value, field, max_length=...)` is for titles, names and usernames: the text
is normalised to Unicode NFC, control characters other than tab and newline are removed, and
over-long input is refused with a 422 naming the field — never truncated silently. Lone
surrogates (which JSON can smuggle in as `"\\ud800"` and no database can store) are refused.

Chat content is not passed through here: it is stored verbatim and escaped on output by
whoever renders it (see SECURITY.md).

For pydantic models, `Annotated[str, Sanitized(max_length=200)]` applies the same rules and
reports the failure at the field's location; `Identifier` and `IDENTIFIER_PATTERN` validate
the 32-hex ids of `ollama_web.db.base.new_id()`.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass
from typing import Annotated, Any

from pydantic import GetCoreSchemaHandler, StringConstraints
from pydantic_core import PydanticCustomError, core_schema

from ollama_web.core.errors import ValidationError

IDENTIFIER_PATTERN = r"^[0-9a-f]{32}$"
_IDENTIFIER = re.compile(IDENTIFIER_PATTERN)
_LONE_SURROGATE = re.compile("[\ud800-\udfff]")
# Unicode's control characters (category Cc: U+0000-U+001F and U+007F-U+009F) but tab and
# newline.
_REMOVED_CONTROLS = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f]")

Identifier = Annotated[str, StringConstraints(pattern=IDENTIFIER_PATTERN)]


class _Refused(Exception):
    """Why a string was refused (turned into the caller's kind of error)."""

    def __init__(self, message: str, details: dict[str, Any]) -> None:
        super().__init__(message)
        self.message = message
        self.details = details


def _has_lone_surrogate(value: str) -> bool:
    return _LONE_SURROGATE.search(value) is not None


def _clean(value: str) -> str:
    return _REMOVED_CONTROLS.sub("", unicodedata.normalize("NFC", value))


def clean_text(value: str) -> str:
    """`value` as a title is stored: NFC, control characters (but tab and newline) and
    unpaired surrogates removed. For text derived from user content (a title made of a
    message's first words), where refusing is not an option."""
    return _clean(_LONE_SURROGATE.sub("", value))


def _sanitize(value: object, max_length: int | None, min_length: int) -> str:
    if not isinstance(value, str):
        raise _Refused("must be a string", {"type": type(value).__name__})
    if _has_lone_surrogate(value):
        raise _Refused("contains invalid characters (unpaired surrogates)", {})
    cleaned = _clean(value)
    length = len(cleaned)
    if max_length is not None and length > max_length:
        raise _Refused(
            f"must be at most {max_length} characters (got {length})",
            {"max_length": max_length, "length": length},
        )
    if length < min_length:
        raise _Refused(
            f"must be at least {min_length} characters (got {length})",
            {"min_length": min_length, "length": length},
        )
    return cleaned


def sanitize_string(
    value: object, field: str, max_length: int | None = None, *, min_length: int = 0
) -> str:
    """NFC, control characters (except tab and newline) removed, length bounded.

    Raises `ValidationError` (422) naming `field` when the value is not a string, holds
    unpaired surrogates, or is longer than `max_length` / shorter than `min_length` after
    cleaning. Nothing is ever truncated.
    """
    try:
        return _sanitize(value, max_length, min_length)
    except _Refused as refused:
        raise ValidationError(
            f"{field} {refused.message}", details={"field": field, **refused.details}
        ) from None


@dataclass(frozen=True)
class Sanitized:
    """Pydantic metadata: `title: Annotated[str, Sanitized(max_length=200)]`."""

    max_length: int | None = None
    min_length: int = 0

    def __get_pydantic_core_schema__(
        self, source: Any, handler: GetCoreSchemaHandler
    ) -> core_schema.CoreSchema:
        return core_schema.no_info_after_validator_function(self._validate, handler(source))

    def _validate(self, value: str) -> str:
        try:
            return _sanitize(value, self.max_length, self.min_length)
        except _Refused as refused:
            raise PydanticCustomError(
                "string_sanitized", "Value {reason}", {"reason": refused.message}
            ) from None


def is_identifier(value: object) -> bool:
    return isinstance(value, str) and _IDENTIFIER.fullmatch(value) is not None


def validate_identifier(value: object, field: str) -> str:
    """A 32-hex id or a 422 naming the field."""
    if not is_identifier(value):
        raise ValidationError(
            f"{field} must be a 32-character lowercase hexadecimal id", details={"field": field}
        )
    assert isinstance(value, str)
    return value


def validate_pattern(value: object, field: str, pattern: re.Pattern[str], description: str) -> str:
    """`value` if it fully matches `pattern`, else a 422 naming the field."""
    if not isinstance(value, str) or pattern.fullmatch(value) is None:
        raise ValidationError(f"{field} must be {description}", details={"field": field})
    return value
