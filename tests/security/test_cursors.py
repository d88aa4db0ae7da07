"""Signed opaque cursors and keyset pages (ollama_web.core.pagination)."""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime, timedelta

import pytest
from fastapi import FastAPI
from sqlalchemy import select

from ollama_web.core.db import session_scope
from ollama_web.core.errors import InvalidCursorError
from ollama_web.core.pagination import (
    Keyset,
    Page,
    PageParams,
    decode_cursor,
    decode_keyset_cursor,
    encode_cursor,
    encode_keyset_cursor,
)
from ollama_web.db import ApiKey
from ollama_web.db.base import new_id
from tests.fixtures.auth import TestUser

SECRET = "s" * 40
WHEN = datetime(2024, 5, 1, 12, 30, 45, 123456, tzinfo=UTC)


def test_a_cursor_round_trips_its_values() -> None:
    cursor = encode_cursor(SECRET, "things:u1", ["a", 1, 2.5, True, None])

    assert decode_cursor(SECRET, "things:u1", cursor) == ["a", 1, 2.5, True, None]


def test_a_keyset_cursor_round_trips_a_timestamp_and_id() -> None:
    cursor = encode_keyset_cursor(SECRET, "scope", WHEN, "id-1")

    assert decode_keyset_cursor(SECRET, "scope", cursor) == (WHEN, "id-1")


def _forge(values: object) -> str:
    """A payload with a wrong signature (we cannot sign without the secret)."""
    payload = base64.urlsafe_b64encode(json.dumps(values).encode()).rstrip(b"=").decode()
    return f"{payload}.AAAAAAAAAAAAAAAAAAAAAA"


@pytest.mark.parametrize(
    "when", ["9999-12-31T23:59:59-05:00", "0001-01-01T00:00:00+05:00", "2026-01-01T00:00:00"]
)
def test_a_signed_cursor_with_a_time_that_cannot_be_used_is_refused(when: str) -> None:
    """Only the server signs cursors, but a time with no UTC form (or none at all) must
    still be a 400, not a 500 where it is compared."""
    cursor = encode_cursor(SECRET, "scope", [when, "id-1"])
    with pytest.raises(InvalidCursorError):
        decode_keyset_cursor(SECRET, "scope", cursor)


def test_tampered_foreign_or_malformed_cursors_are_refused() -> None:
    good = encode_keyset_cursor(SECRET, "scope", WHEN, "id-1")
    payload, signature = good.split(".")
    refused = [
        (SECRET, "other-scope", good),
        ("another secret of sufficient length!!", "scope", good),
        (SECRET, "scope", _forge([WHEN.isoformat(), "id-2"])),
        (SECRET, "scope", payload),
        (SECRET, "scope", payload + "x." + signature),
        (SECRET, "scope", "!!!.???"),
        (SECRET, "scope", ""),
        (SECRET, "scope", good + "A" * 600),
        # Only the encoding the server writes: no padding, no characters a lenient
        # base64 decoder would skip, no lone surrogate from a query string.
        (SECRET, "scope", good + "=="),
        (SECRET, "scope", f"{payload}.{signature[:4]}!{signature[4:]}"),
        (SECRET, "scope", f"{payload}.{signature}\udcff"),
    ]
    for secret, scope, cursor in refused:
        with pytest.raises(InvalidCursorError):
            decode_keyset_cursor(secret, scope, cursor)


def test_well_signed_but_wrong_shaped_values_are_refused() -> None:
    for values in (["not a time", "id"], [WHEN.replace(tzinfo=None).isoformat(), "id"], ["x"]):
        cursor = encode_cursor(SECRET, "scope", values)
        with pytest.raises(InvalidCursorError):
            decode_keyset_cursor(SECRET, "scope", cursor)


def test_page_schema_is_generic() -> None:
    page = Page[int](items=[1, 2], next_cursor=None)

    assert page.model_dump() == {"items": [1, 2], "next_cursor": None}


async def test_keyset_pages_cover_every_row_once_even_with_equal_timestamps(
    app: FastAPI, regular_user: TestUser
) -> None:
    core = app.state.core
    base = datetime.now(UTC) - timedelta(days=1)
    stamps = [base, base, base, base + timedelta(seconds=1), base + timedelta(seconds=1)]
    async with session_scope(core.sessionmaker) as session:
        for n, stamp in enumerate(stamps):
            session.add(
                ApiKey(
                    id=new_id(),
                    user_id=regular_user.id,
                    name=f"k{n}",
                    prefix="owk_test",
                    key_hash=f"{n:064x}",
                    created_at=stamp,
                )
            )
    stmt = select(ApiKey).where(ApiKey.user_id == regular_user.id, ApiKey.prefix == "owk_test")

    for descending in (True, False):
        keyset = Keyset(ApiKey.created_at, ApiKey.id, descending=descending)
        seen: list[tuple[datetime, str]] = []
        cursor = None
        async with session_scope(core.sessionmaker) as session:
            while True:
                params = PageParams(limit=2, cursor=cursor, secret=core.secret_key)
                result = await params.fetch(session, stmt, keyset, scope="test")
                seen += [(key.created_at, key.id) for key in result.items]
                cursor = result.next_cursor
                if cursor is None:
                    break
        assert len(seen) == 5
        assert seen == sorted(seen, reverse=descending)
