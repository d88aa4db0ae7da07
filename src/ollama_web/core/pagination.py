"""Keyset pagination with signed, opaque cursors, and the one list shape of the API.

Every list endpoint answers `Page[T]` = `{"items": [...], "next_cursor": str | null}` and
takes `limit` (1-200, default 50) and `cursor`. A cursor is the position of the last item
served, signed with an HMAC derived from the server secret (CoreState.secret_key) and bound to
a *scope* string, so a cursor from one list (or one user, or one filter) is refused by
another. Anything malformed, tampered with or out of scope -> 400 INVALID_CURSOR.

Typical endpoint (newest first over `(created_at, id)`)::

    from ollama_web.core.pagination import Keyset, Page, PageParamsDep

    @router.get("", response_model=Page[ThingPublic])
    async def list_things(
        principal: CurrentPrincipal, session: SessionDep, page: PageParamsDep
    ) -> Page[ThingPublic]:
        stmt = select(Thing).where(Thing.user_id == principal.user_id)
        result = await page.fetch(
            session, stmt, Keyset(Thing.created_at, Thing.id),
            scope=f"things:{principal.user_id}",
        )
        return result.to_page(ThingPublic.model_validate)

Put every filter that changes the result set into `scope` (e.g. f"conversations:{user}:
archived={archived}") so a cursor cannot be replayed against a different filter.

Pieces:
- `Page[T]`: the response model.
- `PageParams` (dependency alias `PageParamsDep`): `limit`, `cursor`, and the secret;
  `await params.fetch(session, stmt, keyset, scope=...) -> PageResult[T]`.
- `Keyset(timestamp, id, descending=True)`: the two ORM columns that order the list; the
  pair must be unique (ids are), and an index on them keeps pages cheap.
- `PageResult[T]`: `.items`, `.next_cursor`, `.to_page(transform) -> Page[S]`.
- Lower level, for lists ordered by something else: `encode_cursor(secret, scope, values)`
  and `decode_cursor(secret, scope, cursor) -> list[value]` over a list of JSON scalars, and
  `encode_keyset_cursor` / `decode_keyset_cursor` for a `(datetime, id)` pair.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Annotated, Any, Generic, TypeVar, cast

from fastapi import Depends, Query, Request
from pydantic import BaseModel, Field
from sqlalchemy import Select, and_, or_
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import InstrumentedAttribute

from ollama_web.core.errors import InvalidCursorError

DEFAULT_LIMIT = 50
MAX_LIMIT = 200
MAX_CURSOR_LENGTH = 512
_KEY_PURPOSE = b"ollama_web.pagination.v1"
_MAC_BYTES = 16

T = TypeVar("T")
S = TypeVar("S")
CursorValue = str | int | float | bool | None


class Page(BaseModel, Generic[T]):
    """A page of a list: the items, and the cursor of the next page (null on the last)."""

    items: list[T]
    next_cursor: str | None = Field(
        default=None, description="Pass as `cursor` to get the next page; null on the last page."
    )


def _signing_key(secret: str) -> bytes:
    return hmac.new(secret.encode(), _KEY_PURPOSE, hashlib.sha256).digest()


def _b64encode(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _b64decode(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _mac(secret: str, scope: str, payload: str) -> bytes:
    message = scope.encode() + b"\x00" + payload.encode()
    return hmac.new(_signing_key(secret), message, hashlib.sha256).digest()[:_MAC_BYTES]


def encode_cursor(secret: str, scope: str, values: Sequence[CursorValue]) -> str:
    """An opaque, signed cursor holding `values` (JSON scalars), valid only for `scope`."""
    payload = _b64encode(json.dumps(list(values), separators=(",", ":")).encode())
    return f"{payload}.{_b64encode(_mac(secret, scope, payload))}"


def decode_cursor(secret: str, scope: str, cursor: str) -> list[CursorValue]:
    """The values of a cursor made by `encode_cursor` with the same secret and scope."""
    invalid = InvalidCursorError("The cursor is invalid or does not belong to this list.")
    payload, dot, signature = cursor.partition(".")
    if not dot or len(cursor) > MAX_CURSOR_LENGTH:
        raise invalid
    # The signature as text: only the encoding this server writes is accepted (a decoder
    # would also take padding and characters outside the alphabet).
    expected = _b64encode(_mac(secret, scope, payload))
    try:
        if not hmac.compare_digest(signature.encode(), expected.encode()):
            raise invalid
        values = json.loads(_b64decode(payload))
    except (binascii.Error, ValueError, UnicodeError):
        raise invalid from None
    if not isinstance(values, list) or not all(
        value is None or isinstance(value, str | int | float | bool) for value in values
    ):
        raise invalid
    return cast(list[CursorValue], values)


def encode_keyset_cursor(secret: str, scope: str, timestamp: datetime, item_id: str) -> str:
    return encode_cursor(secret, scope, [timestamp.isoformat(), item_id])


def decode_keyset_cursor(secret: str, scope: str, cursor: str) -> tuple[datetime, str]:
    values = decode_cursor(secret, scope, cursor)
    invalid = InvalidCursorError("The cursor is invalid or does not belong to this list.")
    if len(values) != 2 or not isinstance(values[0], str) or not isinstance(values[1], str):
        raise invalid
    try:
        timestamp = datetime.fromisoformat(values[0])
        if timestamp.tzinfo is None:
            raise invalid
        timestamp = timestamp.astimezone(UTC)  # as stored; year 9999 at -05:00 has no UTC
    except (ValueError, OverflowError):
        raise invalid from None
    return timestamp, values[1]


@dataclass(frozen=True)
class Keyset:
    """The (timestamp, id) columns a list is ordered by; newest first unless ascending."""

    timestamp: InstrumentedAttribute[datetime]
    id: InstrumentedAttribute[str]
    descending: bool = True

    def after(self, timestamp: datetime, item_id: str) -> Any:
        if self.descending:
            return or_(
                self.timestamp < timestamp, and_(self.timestamp == timestamp, self.id < item_id)
            )
        return or_(self.timestamp > timestamp, and_(self.timestamp == timestamp, self.id > item_id))

    def order_by(self) -> tuple[Any, Any]:
        if self.descending:
            return self.timestamp.desc(), self.id.desc()
        return self.timestamp.asc(), self.id.asc()

    def position(self, item: object) -> tuple[datetime, str]:
        return getattr(item, self.timestamp.key), getattr(item, self.id.key)


@dataclass(frozen=True)
class PageResult(Generic[T]):
    items: list[T]
    next_cursor: str | None

    def to_page(self, transform: Callable[[T], S]) -> Page[S]:
        return Page[S](items=[transform(item) for item in self.items], next_cursor=self.next_cursor)


@dataclass(frozen=True)
class PageParams:
    """`limit` and `cursor` from the query string, with the secret that signs cursors."""

    limit: int
    cursor: str | None
    secret: str

    def position(self, scope: str) -> tuple[datetime, str] | None:
        """The decoded keyset position, or None on the first page."""
        if self.cursor is None:
            return None
        return decode_keyset_cursor(self.secret, scope, self.cursor)

    async def fetch(
        self, session: AsyncSession, stmt: Select[T], keyset: Keyset, *, scope: str
    ) -> PageResult[T]:
        """Run `stmt` (a select of one ORM entity) for the page after the cursor."""
        position = self.position(scope)
        if position is not None:
            stmt = stmt.where(keyset.after(*position))
        stmt = stmt.order_by(*keyset.order_by()).limit(self.limit + 1)
        rows = list((await session.scalars(stmt)).all())
        if len(rows) <= self.limit:
            return PageResult(items=rows, next_cursor=None)
        items = rows[: self.limit]
        timestamp, item_id = keyset.position(items[-1])
        cursor = encode_keyset_cursor(self.secret, scope, timestamp, item_id)
        return PageResult(items=items, next_cursor=cursor)


async def get_page_params(
    request: Request,
    limit: Annotated[
        int, Query(ge=1, le=MAX_LIMIT, description="Items per page (1-200).")
    ] = DEFAULT_LIMIT,
    cursor: Annotated[
        str | None,
        # No max_length here: an over-long cursor is a malformed one (400 INVALID_CURSOR,
        # refused by its length before any other work), not a 422.
        Query(description="`next_cursor` of the previous page."),
    ] = None,
) -> PageParams:
    secret: str = request.app.state.core.secret_key
    return PageParams(limit=limit, cursor=cursor, secret=secret)


PageParamsDep = Annotated[PageParams, Depends(get_page_params)]
