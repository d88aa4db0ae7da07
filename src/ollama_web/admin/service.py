"""User administration: list, create, change role/state/password, delete.

Every change that could remove the last active admin runs under `lock_admins` and is
checked after it is flushed (`require_an_active_admin`), so it is refused with 409
LAST_ADMIN even when two admins act at the same moment. The user is then locked and
reloaded (`lock_user`): what it is now, not what it was when the request loaded it, decides
(a user promoted meanwhile is an admin). Locks are taken in that order, admins first.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from ollama_web.auth.passwords import Passwords
from ollama_web.auth.sessions import revoke_user_sessions
from ollama_web.auth.users import (
    check_email,
    get_user,
    lock_admins,
    lock_user,
    require_an_active_admin,
    set_password,
)
from ollama_web.core.errors import NotFoundError
from ollama_web.core.pagination import Keyset, PageParams, PageResult
from ollama_web.db import User, UserRole

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
