"""Recording and listing audit events.

- `await record_event(session, action, actor_user_id=..., target_type=..., target_id=...,
  ip_address=..., details={...})` adds an event to the caller's transaction (it is kept only
  if that transaction commits, which is what a change and its record should do).
- `await record_event_detached(sessionmaker, action, ...)` writes the event in its own short
  transaction, for events about requests that end in an error (failed logins).
- `AuditAction` names the actions this project records; other domains may add their own
  dotted names ("conversation.export", ...).
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import Select, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from ollama_web.core.db import flush_owned, session_scope
from ollama_web.core.pagination import Keyset, PageParams, PageResult
from ollama_web.db import AuditEvent

MAX_DETAIL_STRING = 200


class AuditAction(StrEnum):
    SETUP = "auth.setup"
    LOGIN_SUCCEEDED = "auth.login"
    LOGIN_FAILED = "auth.login_failed"
    LOGOUT = "auth.logout"
    LOGOUT_ALL = "auth.logout_all"
    SESSION_REVOKED = "auth.session_revoked"
    PASSWORD_CHANGED = "auth.password_changed"  # noqa: S105
    KEY_CREATED = "key.created"
    KEY_ROTATED = "key.rotated"
    KEY_REVOKED = "key.revoked"
    USER_CREATED = "admin.user_created"
    USER_UPDATED = "admin.user_updated"
    USER_DELETED = "admin.user_deleted"
    CLI_ADMIN_CREATED = "cli.admin_created"
    CLI_PASSWORD_RESET = "cli.password_reset"  # noqa: S105
    CLI_USER_DISABLED = "cli.user_disabled"
    CLI_USER_ENABLED = "cli.user_enabled"


def _clip(details: Mapping[str, Any] | None) -> dict[str, Any]:
    """Keep details small: long strings are cut (an audit record is not a data store)."""
    return {
        key: value[:MAX_DETAIL_STRING] if isinstance(value, str) else value
        for key, value in (details or {}).items()
    }


def build_event(
    action: str,
    *,
    actor_user_id: str | None = None,
    target_type: str | None = None,
    target_id: str | None = None,
    ip_address: str | None = None,
    details: Mapping[str, Any] | None = None,
) -> AuditEvent:
    return AuditEvent(
        action=str(action),
        actor_user_id=actor_user_id,
        target_type=target_type,
        target_id=target_id,
        ip_address=ip_address[:64] if ip_address else None,
        details=_clip(details),
    )


async def record_event(
    session: AsyncSession,
    action: str,
    *,
    actor_user_id: str | None = None,
    target_type: str | None = None,
    target_id: str | None = None,
    ip_address: str | None = None,
    details: Mapping[str, Any] | None = None,
) -> AuditEvent:
    event = build_event(
        action,
        actor_user_id=actor_user_id,
        target_type=target_type,
        target_id=target_id,
        ip_address=ip_address,
        details=details,
    )
    session.add(event)
    # The actor's account deleted while the request ran (two admins deleting each other at
    # once): the 401 its next request gets, and the request's change is rolled back.
    await flush_owned(session)
    return event


async def record_event_detached(
    sessionmaker: async_sessionmaker[AsyncSession],
    action: str,
    *,
    actor_user_id: str | None = None,
    target_type: str | None = None,
    target_id: str | None = None,
    ip_address: str | None = None,
    details: Mapping[str, Any] | None = None,
) -> None:
    async with session_scope(sessionmaker) as session:
        await record_event(
            session,
            action,
            actor_user_id=actor_user_id,
            target_type=target_type,
            target_id=target_id,
            ip_address=ip_address,
            details=details,
        )


def _filtered(
    action: str | None, actor_user_id: str | None, since: datetime | None
) -> Select[AuditEvent]:
    stmt = select(AuditEvent)
    if action is not None:
        stmt = stmt.where(AuditEvent.action == action)
    if actor_user_id is not None:
        stmt = stmt.where(AuditEvent.actor_user_id == actor_user_id)
    if since is not None:
        stmt = stmt.where(AuditEvent.created_at >= since)
    return stmt


async def list_events(
    session: AsyncSession,
    page: PageParams,
    *,
    action: str | None = None,
    actor_user_id: str | None = None,
    since: datetime | None = None,
) -> PageResult[AuditEvent]:
    """Newest first, optionally filtered (a naive `since` is taken as UTC)."""
    if since is not None and since.tzinfo is None:
        since = since.replace(tzinfo=UTC)
    scope = f"audit:{action or ''}:{actor_user_id or ''}:{since.isoformat() if since else ''}"
    return await page.fetch(
        session,
        _filtered(action, actor_user_id, since),
        Keyset(AuditEvent.created_at, AuditEvent.id),
        scope=scope,
    )
