"""Login sessions kept server-side: only the sha256 of the cookie token is stored.

A session ends at the first of: its absolute expiry (`expires_at`, SESSION_MAX_AGE_HOURS
after login), SESSION_TIMEOUT_MINUTES without activity (`last_seen_at`), or revocation.
Activity is written at most once per ACTIVITY_WRITE_INTERVAL per session (a tenth of the idle
timeout when that is shorter, so activity extends even a one-minute session), in its own
short transaction, so reading pages does not turn every request into a write.

An ended session is of no use (it is not listed, its cookie is refused): its row is deleted
once it has been over for ENDED_SESSION_RETENTION, by `prune_sessions`, which every server
process runs at start and then every PRUNE_INTERVAL_SECONDS (`auth.context.auth_lifespan`).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import Select, Table, bindparam, delete, or_, select, update
from sqlalchemy.ext.asyncio import AsyncSession
from starlette.responses import Response

from ollama_web.auth.tokens import generate_csrf_token, generate_session_token, sha256_hex
from ollama_web.core.config import Settings
from ollama_web.core.db import update_if
from ollama_web.core.pagination import Keyset, PageParams, PageResult
from ollama_web.core.sqlite_inline import InlineSQLite, first_row, record_in_passing
from ollama_web.db import User, UserSession
from ollama_web.db.base import utcnow

SESSION_COOKIE = "ow_session"
ACTIVITY_WRITE_INTERVAL = timedelta(minutes=1)
MAX_USER_AGENT = 512
ENDED_SESSION_RETENTION = timedelta(days=1)
"""How long the row of an ended session is kept (a day of clock skew between servers, and
the `DELETE` of a session that has just ended still finds it)."""
PRUNE_INTERVAL_SECONDS = 3600.0


def idle_timeout(settings: Settings) -> timedelta:
    return timedelta(minutes=settings.session_timeout_minutes)


def activity_write_interval(settings: Settings) -> timedelta:
    """How often a session's activity is written at most: a session idle for its timeout
    less this ends (a tenth of the timeout at most)."""
    return min(ACTIVITY_WRITE_INTERVAL, idle_timeout(settings) / 10)


def is_session_live(row: UserSession | SessionHolder, settings: Settings, now: datetime) -> bool:
    return (
        row.revoked_at is None
        and row.expires_at > now
        and row.last_seen_at + idle_timeout(settings) > now
    )


def session_expires_at(row: UserSession, settings: Settings) -> datetime:
    """When the session ends if no further activity happens."""
    return min(row.expires_at, row.last_seen_at + idle_timeout(settings))


async def create_session(
    session: AsyncSession,
    user: User,
    settings: Settings,
    *,
    ip_address: str | None,
    user_agent: str | None,
) -> tuple[UserSession, str]:
    """A new session for `user`; returns the row and the cookie token (never stored)."""
    token = generate_session_token()
    now = utcnow()
    row = UserSession(
        user_id=user.id,
        token_hash=sha256_hex(token),
        csrf_token=generate_csrf_token(),
        created_at=now,
        last_seen_at=now,
        expires_at=now + timedelta(hours=settings.session_max_age_hours),
        ip_address=ip_address,
        user_agent=(user_agent or "")[:MAX_USER_AGENT] or None,
    )
    session.add(row)
    await session.flush()
    return row, token


SESSIONS: Table = UserSession.__table__  # type: ignore[assignment]
USERS: Table = User.__table__  # type: ignore[assignment]

# Built once: every request with a session cookie runs them (inline on SQLite, as the API
# key's lookup, keys.service._KEY_LOOKUP: core/sqlite_inline.py).
_SESSION_LOOKUP = (
    select(
        SESSIONS.c.id,
        SESSIONS.c.csrf_token,
        SESSIONS.c.expires_at,
        SESSIONS.c.last_seen_at,
        SESSIONS.c.revoked_at,
        USERS.c.id,
        USERS.c.username,
        USERS.c.role,
        USERS.c.is_active,
    )
    .join_from(SESSIONS, USERS, USERS.c.id == SESSIONS.c.user_id)
    .where(SESSIONS.c.token_hash == bindparam("token_hash"))
)
_RECORD_ACTIVITY = (
    update(SESSIONS)
    .where(SESSIONS.c.id == bindparam("_id"), SESSIONS.c.last_seen_at <= bindparam("threshold"))
    .values(last_seen_at=bindparam("now"))
)


@dataclass(frozen=True, slots=True)
class SessionHolder:
    """A session found by its cookie: what authentication needs of it and of its user."""

    session_id: str
    csrf_token: str
    expires_at: datetime
    last_seen_at: datetime
    revoked_at: datetime | None
    user_id: str
    username: str
    role: str
    is_active: bool


async def find_session(
    session: AsyncSession, token: str, inline: InlineSQLite | None = None
) -> SessionHolder | None:
    """The session for a cookie token and its user, in one indexed query."""
    row = await first_row(session, inline, _SESSION_LOOKUP, {"token_hash": sha256_hex(token)})
    return None if row is None else SessionHolder(*row)


async def record_activity(
    session: AsyncSession,
    holder: SessionHolder,
    now: datetime,
    settings: Settings,
    inline: InlineSQLite | None = None,
) -> None:
    """Extend the idle timeout, at most once per `activity_write_interval` (the WHERE makes
    it race-safe)."""
    interval = activity_write_interval(settings)
    if now - holder.last_seen_at < interval:
        return
    values = {"_id": holder.session_id, "threshold": now - interval, "now": now}
    await record_in_passing(
        session, inline, _RECORD_ACTIVITY, values, f"the activity of session {holder.session_id}"
    )


def _owned(user_id: str) -> Select[UserSession]:
    return select(UserSession).where(UserSession.user_id == user_id)


async def get_owned_session(
    session: AsyncSession, user_id: str, session_id: str
) -> UserSession | None:
    stmt = _owned(user_id).where(UserSession.id == session_id)
    return (await session.scalars(stmt)).first()


async def revoke_session(session: AsyncSession, row: UserSession) -> bool:
    """End a session; False if it had ended already (perhaps by a request running at the
    same time: the conditional UPDATE lets only one of them end it, and record it)."""
    if row.revoked_at is not None:
        return False
    return await update_if(session, row, UserSession.revoked_at.is_(None), revoked_at=utcnow())


async def revoke_user_sessions(
    session: AsyncSession, user_id: str, *, except_session_id: str | None = None
) -> int:
    """End every live session of a user (but one, if given); returns how many ended."""
    stmt = update(UserSession).where(
        UserSession.user_id == user_id, UserSession.revoked_at.is_(None)
    )
    if except_session_id is not None:
        stmt = stmt.where(UserSession.id != except_session_id)
    result = await session.execute(stmt.values(revoked_at=utcnow()))
    return int(getattr(result, "rowcount", 0) or 0)


async def list_live_sessions(
    session: AsyncSession, user_id: str, settings: Settings, page: PageParams
) -> PageResult[UserSession]:
    now = utcnow()
    stmt = _owned(user_id).where(
        UserSession.revoked_at.is_(None),
        UserSession.expires_at > now,
        UserSession.last_seen_at > now - idle_timeout(settings),
    )
    return await page.fetch(
        session, stmt, Keyset(UserSession.created_at, UserSession.id), scope=f"sessions:{user_id}"
    )


async def prune_sessions(session: AsyncSession, settings: Settings, now: datetime) -> int:
    """Delete the sessions that ended (revoked, past their absolute expiry, or idle past
    SESSION_TIMEOUT_MINUTES) over ENDED_SESSION_RETENTION ago; returns how many."""
    before = now - ENDED_SESSION_RETENTION
    stmt = delete(UserSession).where(
        or_(
            UserSession.revoked_at < before,
            UserSession.expires_at < before,
            UserSession.last_seen_at < before - idle_timeout(settings),
        )
    )
    result = await session.execute(stmt)
    return int(getattr(result, "rowcount", 0) or 0)


def set_session_cookie(response: Response, token: str, settings: Settings, *, secure: bool) -> None:
    response.set_cookie(
        SESSION_COOKIE,
        token,
        max_age=settings.session_max_age_hours * 3600,
        path="/",
        httponly=True,
        samesite="lax",
        secure=secure or settings.cookie_secure,
    )


def clear_session_cookie(response: Response, settings: Settings, *, secure: bool) -> None:
    response.delete_cookie(
        SESSION_COOKIE,
        path="/",
        httponly=True,
        samesite="lax",
        secure=secure or settings.cookie_secure,
    )
