"""User accounts: creation, passwords, roles, and the last-admin rule.

Used by setup, the admin API and the command line alike. Only flushes; the caller's
transaction commits.
"""

from __future__ import annotations

import re

from sqlalchemy import func, select, text
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from ollama_web.auth.errors import LastAdminError, UsernameTakenError
from ollama_web.auth.passwords import Passwords, password_problem
from ollama_web.core.db import update_if
from ollama_web.core.errors import ValidationError
from ollama_web.db import User, UserRole
from ollama_web.db.base import utcnow

USERNAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{2,63}$"
EMAIL_PATTERN = r"^[^@\s]{1,64}@[^@\s]+\.[^@\s]+$"
MAX_EMAIL_LENGTH = 320
_USERNAME = re.compile(USERNAME_PATTERN)
_EMAIL = re.compile(EMAIL_PATTERN)
# Serialises first-user setup on PostgreSQL (SQLite serialises writers by itself).
_SETUP_LOCK_ID = 0x6F77_5345


def username_key(username: str) -> str:
    return username.strip().lower()


def check_username(username: str) -> str:
    if not _USERNAME.fullmatch(username):
        raise ValidationError(
            "The username must be 3-64 characters: letters, digits, '.', '_' or '-', "
            "starting with a letter or digit.",
            details={"field": "username"},
        )
    return username


def check_email(email: str | None) -> str | None:
    if email is None or email == "":
        return None
    if len(email) > MAX_EMAIL_LENGTH or not _EMAIL.fullmatch(email):
        raise ValidationError("The email address is not valid.", details={"field": "email"})
    return email


def check_password(password: str) -> str:
    problem = password_problem(password)
    if problem is not None:
        raise ValidationError(problem, details={"field": "password"})
    return password


async def get_user(session: AsyncSession, user_id: str) -> User | None:
    return await session.get(User, user_id)


async def find_by_username(session: AsyncSession, username: str) -> User | None:
    stmt = select(User).where(User.username_key == username_key(username))
    return (await session.scalars(stmt)).first()


async def count_users(session: AsyncSession) -> int:
    return int(await session.scalar(select(func.count()).select_from(User)) or 0)


async def lock_setup(session: AsyncSession) -> None:
    """Hold a transaction-wide lock so two concurrent setups cannot both succeed."""
    if session.get_bind().dialect.name == "postgresql":
        await session.execute(text("SELECT pg_advisory_xact_lock(:id)"), {"id": _SETUP_LOCK_ID})


async def create_user(
    session: AsyncSession,
    passwords: Passwords,
    *,
    username: str,
    password: str,
    email: str | None = None,
    role: UserRole = UserRole.USER,
) -> User:
    check_username(username)
    check_password(password)
    email = check_email(email)
    if await find_by_username(session, username) is not None:
        raise UsernameTakenError("This username is already taken.", details={"field": "username"})
    now = utcnow()
    user = User(
        username=username,
        username_key=username_key(username),
        email=email,
        password_hash=await passwords.hash_async(password),
        role=role.value,
        is_active=True,
        password_changed_at=now,
    )
    session.add(user)
    try:
        await session.flush()
    except IntegrityError:
        raise UsernameTakenError(
            "This username is already taken.", details={"field": "username"}
        ) from None
    return user


async def set_password(passwords: Passwords, user: User, password: str) -> None:
    check_password(password)
    user.password_hash = await passwords.hash_async(password)
    user.password_changed_at = utcnow()


async def set_password_if_unchanged(
    session: AsyncSession, passwords: Passwords, user: User, password: str, *, expected_hash: str
) -> bool:
    """Set a new password only if the stored hash is still `expected_hash` (the one the
    current password was checked against); False if another change came first. One
    conditional UPDATE: a concurrent change, reset or login waits for it or it for them."""
    check_password(password)
    new_hash = await passwords.hash_async(password)
    return await update_if(
        session,
        user,
        User.password_hash == expected_hash,
        password_hash=new_hash,
        password_changed_at=utcnow(),
    )


async def lock_user(session: AsyncSession, user: User) -> bool:
    """Lock the user's row for the rest of the transaction (a row lock on PostgreSQL, the
    write lock on SQLite) and reload it: another request may have changed it since it was
    loaded, and a decision (last admin, what changed) must be taken on what is there now.
    False if the row is gone."""
    if not await lock_user_row(session, user.id):
        return False
    await session.refresh(user)
    return True


async def lock_user_row(session: AsyncSession, user_id: str) -> bool:
    """Lock a user's row for the rest of the transaction (see `lock_user`), without loading
    it; False if it is gone."""
    touched = await session.execute(
        text("UPDATE users SET role = role WHERE id = :id"), {"id": user_id}
    )
    return bool(getattr(touched, "rowcount", 0))


async def count_active_admins(session: AsyncSession) -> int:
    stmt = (
        select(func.count())
        .select_from(User)
        .where(User.role == UserRole.ADMIN.value, User.is_active.is_(True))
    )
    return int(await session.scalar(stmt) or 0)


async def lock_admins(session: AsyncSession) -> None:
    """Lock the active admin rows (PostgreSQL) before a change that may remove an admin, so
    two admins demoting each other at once cannot both succeed; SQLite serialises writers.

    FOR NO KEY UPDATE: the rows are not deleted here, and a plain FOR UPDATE would also
    block the foreign-key checks of rows naming an admin (the audit event an admin's own
    request writes), deadlocking with a request that holds the user it edits meanwhile."""
    stmt = (
        select(User.id)
        .where(User.role == UserRole.ADMIN.value, User.is_active.is_(True))
        .with_for_update(key_share=True)
    )
    await session.execute(stmt)


async def require_an_active_admin(session: AsyncSession, user_id: str) -> None:
    """Call after flushing a change made under `lock_admins`: refuse it if no active admin
    remains (the request then rolls back)."""
    if await count_active_admins(session) == 0:
        raise LastAdminError(
            "This is the last active admin; promote another user first.",
            details={"user_id": user_id},
        )
