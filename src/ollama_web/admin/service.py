"""User administration: list, create, change role/state/password, delete.

Every change that could remove the last active admin runs under `lock_admins` and is
checked after it is flushed (`require_an_active_admin`), so it is refused with 409
LAST_ADMIN even when two admins act at the same moment. The user is then locked and
reloaded (`lock_user`): what it is now, not what it was when the request loaded it, decides
(a user promoted meanwhile is an admin). Locks are taken in that order, admins first.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import delete, func, select
from sqlalchemy.ext.asyncio import AsyncSession

from ollama_web.auth.passwords import Passwords
from ollama_web.auth.sessions import revoke_user_sessions
from ollama_web.auth.users import (
    check_email,
    get_user,
    lock_admins,
    lock_user,
    lock_user_row,
    require_an_active_admin,
    set_password,
)
from ollama_web.core.errors import AccountGoneError, NotFoundError
from ollama_web.core.pagination import Keyset, PageParams, PageResult
from ollama_web.db import Conversation, Message, User, UserRole

UNSET = object()


async def list_users(
    session: AsyncSession, page: PageParams, *, role: str | None, is_active: bool | None
) -> PageResult[User]:
    stmt = select(User)
    if role is not None:
        stmt = stmt.where(User.role == role)
    if is_active is not None:
        stmt = stmt.where(User.is_active.is_(is_active))
    scope = f"users:{role or ''}:{'' if is_active is None else int(is_active)}"
    return await page.fetch(session, stmt, Keyset(User.created_at, User.id), scope=scope)


async def get_user_or_404(session: AsyncSession, user_id: str) -> User:
    user = await get_user(session, user_id)
    if user is None:
        raise NotFoundError("User not found.")
    return user


def _removes_admin(user: User, role: str | None, is_active: bool | None) -> bool:
    if not (user.is_admin and user.is_active):
        return False
    return (role is not None and role != UserRole.ADMIN.value) or is_active is False


async def update_user(
    session: AsyncSession,
    passwords: Passwords,
    user: User,
    *,
    role: str | None,
    is_active: bool | None,
    password: str | None,
    email: Any = UNSET,
) -> dict[str, Any]:
    """Apply the given changes; returns what changed (for the audit record)."""
    changes: dict[str, Any] = {}
    if (role is not None and role != UserRole.ADMIN.value) or is_active is False:
        await lock_admins(session)
    if not await lock_user(session, user):
        raise NotFoundError("User not found.")
    removing_admin = _removes_admin(user, role, is_active)
    if role is not None and role != user.role:
        changes["role"] = {"from": user.role, "to": role}
        user.role = role
    if is_active is not None and is_active != user.is_active:
        changes["is_active"] = {"from": user.is_active, "to": is_active}
        user.is_active = is_active
    if email is not UNSET and check_email(email) != user.email:
        changes["email"] = "changed"
        user.email = check_email(email)
    if password is not None:
        await set_password(passwords, user, password)
        changes["password"] = "reset"  # noqa: S105 (a fact, not a secret)
    await session.flush()
    if removing_admin:
        await require_an_active_admin(session, user.id)
    if is_active is False or password is not None:
        ended = await revoke_user_sessions(session, user.id)
        if changes or ended:  # a repeated disable changes nothing: nothing to record
            changes["sessions_ended"] = ended
    return changes


DELETE_BATCH_MESSAGES = 2000
"""On SQLite, a user's conversations go before the account, in transactions of about this
many messages: one transaction deleting 100 000 messages held the database's only write
lock 4.4 s here, and every other user's writes waited on it (past the 5 s busy timeout,
they fail)."""
_BATCH_CANDIDATES = 256


async def delete_conversations_in_batches(session: AsyncSession, user: User) -> int:
    """Delete the user's conversations (their messages by cascade) in short transactions,
    each committed: the conversations taken in id order while their messages add up to
    DELETE_BATCH_MESSAGES (a larger conversation alone). Returns how many were deleted.
    Call with the user disabled (`disable_before_deleting`): nothing new comes meanwhile."""
    deleted = 0
    while batch := await _conversation_batch(session, user.id, DELETE_BATCH_MESSAGES):
        await session.execute(delete(Conversation).where(Conversation.id.in_(batch)))
        await session.commit()
        deleted += len(batch)
    return deleted


async def _conversation_batch(session: AsyncSession, user_id: str, max_messages: int) -> list[str]:
    ids = (
        await session.scalars(
            select(Conversation.id)
            .where(Conversation.user_id == user_id)
            .order_by(Conversation.id)
            .limit(_BATCH_CANDIDATES)
        )
    ).all()
    if not ids:
        return []
    counted = await session.execute(
        select(Message.conversation_id, func.count())
        .where(Message.conversation_id.in_(ids))
        .group_by(Message.conversation_id)
    )
    counts: dict[str, int] = {conversation_id: int(n) for conversation_id, n in counted.all()}
    batch: list[str] = []
    total = 0
    for conversation_id in ids:
        total += counts.get(conversation_id, 0)
        if batch and total > max_messages:
            break
        batch.append(conversation_id)
    return batch


async def disable_before_deleting(
    session: AsyncSession, passwords: Passwords, user: User, actor_id: str
) -> None:
    """Disable the user and end their sessions, committed, as `PATCH is_active=false` does
    (409 LAST_ADMIN for the last active admin, before anything is deleted): the deletion
    that follows in several transactions then meets no new conversation, and one that
    stops half-way (a crash) leaves a disabled account to delete again. Nothing is done
    for an acting admin whose account went meanwhile (401, as its audit event would)."""
    if user.is_active:
        try:
            await update_user(session, passwords, user, role=None, is_active=False, password=None)
        except NotFoundError:
            return  # deleted meanwhile: `delete_user` finds nothing left to do
    if not await lock_user_row(session, actor_id):
        raise AccountGoneError()
    await session.commit()


async def delete_user(session: AsyncSession, user: User) -> bool:
    """Delete the account; its keys, sessions and conversations go with it. False if it was
    gone already (deleted meanwhile): nothing to do, and nothing to record."""
    await lock_admins(session)
    if not await lock_user(session, user):
        return False
    removing_admin = user.is_admin and user.is_active
    await session.delete(user)
    await session.flush()
    if removing_admin:
        await require_an_active_admin(session, user.id)
    return True
