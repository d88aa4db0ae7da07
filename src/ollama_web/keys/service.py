"""Creating, listing, revoking, rotating and checking API keys.

A key is `owk_` + base64url(32 random bytes); the database keeps its sha256 and its first
12 characters (`prefix`) so a user can recognise it. A rotated key keeps working until its
`grace_until`, then answers API_KEY_EXPIRED.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Literal, Protocol

from sqlalchemy import Select, Table, bindparam, func, or_, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from ollama_web.auth.errors import ApiKeyExpiredError, ApiKeyRevokedError, InvalidApiKeyError
from ollama_web.auth.sessions import ACTIVITY_WRITE_INTERVAL
from ollama_web.auth.tokens import (
    api_key_display_prefix,
    generate_api_key,
    looks_like_api_key,
    sha256_hex,
)
from ollama_web.auth.users import lock_user_row
from ollama_web.core.config import Settings
from ollama_web.core.db import flush_owned, update_if
from ollama_web.core.errors import AccountGoneError, ConflictError, NotFoundError, ValidationError
from ollama_web.core.pagination import Keyset, PageParams, PageResult
from ollama_web.core.sqlite_inline import InlineSQLite, first_row, record_in_passing
from ollama_web.db import ApiKey, User
from ollama_web.db.base import utcnow


class ApiKeyNotActiveError(ConflictError):
    code = "API_KEY_NOT_ACTIVE"


class ApiKeyLimitError(ConflictError):
    """The user holds MAX_API_KEYS_PER_USER usable keys already."""


class ApiKeyNotFoundError(NotFoundError):
    """Unknown key id, or another user's key: one answer for both."""


KeyStatus = Literal["active", "rotated", "expired", "revoked"]


class KeyDates(Protocol):
    @property
    def revoked_at(self) -> datetime | None: ...
    @property
    def expires_at(self) -> datetime | None: ...
    @property
    def grace_until(self) -> datetime | None: ...


def key_status(key: KeyDates, now: datetime) -> KeyStatus:
    """active | rotated (still in its grace period) | expired | revoked."""
    if key.revoked_at is not None:
        return "revoked"
    if key.expires_at is not None and key.expires_at <= now:
        return "expired"
    if key.grace_until is not None:
        return "rotated" if key.grace_until > now else "expired"
    return "active"


def default_expiry(
    settings: Settings, now: datetime, expires_in_days: int | None
) -> datetime | None:
    """Expiry for a new key. With API_KEY_EXPIRY_DAYS > 0 that is also the longest allowed."""
    policy = settings.api_key_expiry_days
    if expires_in_days is None:
        return now + timedelta(days=policy) if policy else None
    if policy and expires_in_days > policy:
        raise ValidationError(
            f"expires_in_days may be at most {policy} on this server.",
            details={"field": "expires_in_days", "max": policy},
        )
    return now + timedelta(days=expires_in_days)


async def create_key(
    session: AsyncSession, user_id: str, name: str, *, expires_at: datetime | None
) -> tuple[ApiKey, str]:
    """A new key; returns the row and the full key (shown once, never stored)."""
    secret = generate_api_key()
    key = ApiKey(
        user_id=user_id,
        name=name,
        prefix=api_key_display_prefix(secret),
        key_hash=sha256_hex(secret),
        created_at=utcnow(),
        expires_at=expires_at,
    )
    session.add(key)
    await flush_owned(session)
    return key, secret


async def check_key_room(session: AsyncSession, user_id: str, limit: int) -> None:
    """Raise ApiKeyLimitError when the user already holds `limit` usable keys (neither
    revoked nor expired; a rotated key still in its grace counts). The user's row is
    locked first, so that creations racing each other count one another; gone (deleted
    since the request was authenticated), the caller is told so, as on its next request."""
    if not await lock_user_row(session, user_id):
        raise AccountGoneError()
    now = utcnow()
    usable = await session.scalar(
        select(func.count())
        .select_from(ApiKey)
        .where(
            ApiKey.user_id == user_id,
            ApiKey.revoked_at.is_(None),
            or_(ApiKey.expires_at.is_(None), ApiKey.expires_at > now),
            or_(ApiKey.grace_until.is_(None), ApiKey.grace_until > now),
        )
    )
    if int(usable or 0) >= limit:
        raise ApiKeyLimitError(
            f"You have {limit} API keys already, the most this server allows: revoke one "
            "you no longer use first.",
            details={"max_keys": limit},
        )


def _owned(user_id: str) -> Select[ApiKey]:
    return select(ApiKey).where(ApiKey.user_id == user_id)


async def list_keys(
    session: AsyncSession, user_id: str, page: PageParams, *, include_revoked: bool
) -> PageResult[ApiKey]:
    stmt = _owned(user_id)
    if not include_revoked:
        stmt = stmt.where(ApiKey.revoked_at.is_(None))
    return await page.fetch(
        session,
        stmt,
        Keyset(ApiKey.created_at, ApiKey.id),
        scope=f"keys:{user_id}:{int(include_revoked)}",
    )


async def get_owned_key(session: AsyncSession, user_id: str, key_id: str) -> ApiKey:
    key = (await session.scalars(_owned(user_id).where(ApiKey.id == key_id))).first()
    if key is None:
        raise ApiKeyNotFoundError("API key not found.")
    return key


async def revoke_key(session: AsyncSession, key: ApiKey) -> bool:
    """Idempotent: revoking a revoked key changes nothing and returns False (as it does for
    the later of two revocations at once: the conditional UPDATE lets one through)."""
    if key.revoked_at is not None:
        return False
    if await update_if(session, key, ApiKey.revoked_at.is_(None), revoked_at=utcnow()):
        return True
    if await session.get(ApiKey, key.id, populate_existing=True) is None:
        raise ApiKeyNotFoundError("API key not found.")  # deleted meanwhile
    return False


async def rotate_key(
    session: AsyncSession, key: ApiKey, *, grace_minutes: int
) -> tuple[ApiKey, str, datetime]:
    """Replace `key` by a new one with the same name and lifetime.

    The old key stays valid for `grace_minutes` (0: it stops at once), never past its own
    expiry. Returns the new row, the new full key, and when the old one stops working.
    """
    now = utcnow()
    if key_status(key, now) != "active":
        raise ApiKeyNotActiveError(
            "Only an active key can be rotated.", details={"status": key_status(key, now)}
        )
    lifetime = key.expires_at - key.created_at if key.expires_at is not None else None
    new_key, secret = await create_key(
        session, key.user_id, key.name, expires_at=now + lifetime if lifetime else None
    )
    valid_until = now + timedelta(minutes=grace_minutes)
    if key.expires_at is not None:
        valid_until = min(valid_until, key.expires_at)
    # Only if it is still active: a rotation or a revocation that committed since the key
    # was loaded wins, and this one (with the new key) rolls back; two rotations at once
    # would otherwise leave two live replacements, a revocation one live successor.
    rotated = await update_if(
        session,
        key,
        ApiKey.revoked_at.is_(None),
        ApiKey.grace_until.is_(None),
        rotated_at=now,
        grace_until=valid_until,
        replaced_by_id=new_key.id,
    )
    if not rotated:
        current = await session.get(ApiKey, key.id, populate_existing=True)
        if current is None:
            raise ApiKeyNotFoundError("API key not found.")
        raise ApiKeyNotActiveError(
            "Only an active key can be rotated.", details={"status": key_status(current, now)}
        )
    return new_key, secret, valid_until


API_KEYS: Table = ApiKey.__table__  # type: ignore[assignment]
USERS: Table = User.__table__  # type: ignore[assignment]

# Built once: every API-key request runs it (inline on SQLite: see core/sqlite_inline.py).
_KEY_LOOKUP = (
    select(
        API_KEYS.c.id,
        API_KEYS.c.revoked_at,
        API_KEYS.c.expires_at,
        API_KEYS.c.grace_until,
        API_KEYS.c.last_used_at,
        USERS.c.id,
        USERS.c.username,
        USERS.c.role,
        USERS.c.is_active,
    )
    .join_from(API_KEYS, USERS, USERS.c.id == API_KEYS.c.user_id)
    .where(API_KEYS.c.key_hash == bindparam("key_hash"))
)
_RECORD_USE = (
    update(API_KEYS)
    .where(
        API_KEYS.c.id == bindparam("_id"),
        API_KEYS.c.last_used_at.is_(None) | (API_KEYS.c.last_used_at <= bindparam("threshold")),
    )
    .values(last_used_at=bindparam("now"))
)


@dataclass(frozen=True, slots=True)
class KeyHolder:
    """An API key found by its hash: what authentication needs of the key and its user."""

    key_id: str
    revoked_at: datetime | None
    expires_at: datetime | None
    grace_until: datetime | None
    last_used_at: datetime | None
    user_id: str
    username: str
    role: str
    is_active: bool


async def authenticate_key(
    session: AsyncSession, raw_key: str, inline: InlineSQLite | None = None
) -> KeyHolder:
    """The key and its user, in one indexed query; raises the 401 that fits."""
    if not looks_like_api_key(raw_key):
        raise InvalidApiKeyError("The API key is not valid.")
    row = await first_row(session, inline, _KEY_LOOKUP, {"key_hash": sha256_hex(raw_key)})
    if row is None:
        raise InvalidApiKeyError("The API key is not valid.")
    holder = KeyHolder(*row)
    status = key_status(holder, utcnow())
    if status == "revoked":
        raise ApiKeyRevokedError("The API key has been revoked.")
    if status == "expired":
        raise ApiKeyExpiredError("The API key has expired.")
    return holder


async def record_key_use(
    session: AsyncSession, holder: KeyHolder, now: datetime, inline: InlineSQLite | None = None
) -> None:
    """Set `last_used_at`, at most once per interval (the WHERE makes it race-safe)."""
    if holder.last_used_at is not None and now - holder.last_used_at < ACTIVITY_WRITE_INTERVAL:
        return
    values = {"_id": holder.key_id, "threshold": now - ACTIVITY_WRITE_INTERVAL, "now": now}
    await record_in_passing(
        session, inline, _RECORD_USE, values, f"the use of API key {holder.key_id}"
    )
