"""`sanitize_string`, the `Sanitized` pydantic marker, and identifier patterns."""

from __future__ import annotations

import re
import unicodedata
from typing import Annotated

import pytest
from pydantic import BaseModel
from pydantic import ValidationError as PydanticValidationError

from ollama_web.core.errors import ValidationError
from ollama_web.core.validation import (
    Identifier,
    Sanitized,
    is_identifier,
    sanitize_string,
    validate_identifier,
    validate_pattern,
)
from ollama_web.db.base import new_id


def test_normalises_to_nfc() -> None:
    decomposed = "Cafe\u0301"
    cleaned = sanitize_string(decomposed, "title", max_length=10)
    assert cleaned == "Caf\u00e9"
    assert unicodedata.is_normalized("NFC", cleaned)


def test_removes_control_characters_but_keeps_tab_and_newline() -> None:
    raw = "a\x00b\x07c\x1bd\x7fe\x85f\tg\nh\ri"
    assert sanitize_string(raw, "title", max_length=100) == "abcdef\tg\nhi"


def test_removes_exactly_unicodes_control_characters() -> None:
    """Every code point: category Cc goes (but tab and newline), everything else stays."""
    everything = "".join(chr(code) for code in range(0x110000) if not 0xD800 <= code <= 0xDFFF)
    kept = "".join(
        char for char in everything if char in "\t\n" or unicodedata.category(char) != "Cc"
    )
    assert sanitize_string(everything, "title") == unicodedata.normalize("NFC", kept)


def test_keeps_markup_and_quotes_verbatim() -> None:
    text = "<script>alert('x')</script> \"; DROP TABLE users; -- ../../etc/passwd"
    assert sanitize_string(text, "title", max_length=200) == text


def test_over_long_input_is_refused_never_truncated() -> None:
    with pytest.raises(ValidationError) as caught:
        sanitize_string("x" * 201, "title", max_length=200)
    error = caught.value
    assert error.status_code == 422
    assert error.code == "VALIDATION_ERROR"
    assert "title" in error.message
    assert error.details == {"field": "title", "max_length": 200, "length": 201}
    assert sanitize_string("x" * 200, "title", max_length=200) == "x" * 200


def test_length_is_counted_after_cleaning() -> None:
    assert sanitize_string("\x00" * 50 + "ok", "name", max_length=2) == "ok"
    with pytest.raises(ValidationError, match="at least 1"):
        sanitize_string("\x00\x01", "name", min_length=1)


@pytest.mark.parametrize("value", [None, 5, ["a"], {"a": 1}, b"bytes"])
def test_non_strings_are_refused(value: object) -> None:
    with pytest.raises(ValidationError, match="username must be a string"):
        sanitize_string(value, "username", max_length=10)


def test_lone_surrogates_are_refused() -> None:
    with pytest.raises(ValidationError, match="invalid characters"):
        sanitize_string("bad \ud800 text", "title", max_length=100)


class Rename(BaseModel):
    title: Annotated[str, Sanitized(max_length=5, min_length=1)]
    conversation_id: Identifier | None = None


def test_pydantic_marker_applies_the_same_rules_at_the_field() -> None:
    assert Rename(title="a\x00bc").title == "abc"
    with pytest.raises(PydanticValidationError) as caught:
        Rename(title="toolong")
    error = caught.value.errors()[0]
    assert error["loc"] == ("title",)
    assert "at most 5 characters" in error["msg"]
    with pytest.raises(PydanticValidationError):
        Rename(title="ok", conversation_id="../etc")


def test_identifiers_are_32_lowercase_hex() -> None:
    identifier = new_id()
    assert is_identifier(identifier)
    assert validate_identifier(identifier, "conversation_id") == identifier
    bad_ids = ("", identifier.upper(), identifier + "0", identifier + "\n", "1' OR '1'='1", None)
    for bad in (*bad_ids, "../" * 11):
        assert not is_identifier(bad)
        with pytest.raises(ValidationError, match="conversation_id"):
            validate_identifier(bad, "conversation_id")


def test_pattern_validator_names_the_field() -> None:
    slug = re.compile(r"[a-z]{1,8}")
    assert validate_pattern("abc", "slug", slug, "1-8 lowercase letters") == "abc"
    with pytest.raises(ValidationError, match="slug must be 1-8 lowercase letters"):
        validate_pattern("abc\n", "slug", slug, "1-8 lowercase letters")
