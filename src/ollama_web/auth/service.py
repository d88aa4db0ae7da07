"""Setup, login, logout and password change: the flows behind /api/auth.

Failed logins are recorded in their own transaction (the request itself rolls back), and
unknown usernames cost one argon2 verification like known ones.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from ollama_web.audit.service import AuditAction, record_event, record_event_detached
from ollama_web.auth.errors import (
    AccountDisabledError,
    InvalidCredentialsError,
    InvalidCurrentPasswordError,
    SetupAlreadyCompletedError,
)
from ollama_web.auth.passwords import Passwords
from ollama_web.auth.sessions import create_session, revoke_user_sessions
from ollama_web.auth.throttle import LoginThrottle
from ollama_web.auth.users import (
    count_users,
    create_user,
    find_by_username,
    lock_setup,
    set_password_if_unchanged,
    username_key,
)
from ollama_web.core.config import Settings
from ollama_web.core.db import update_if
from ollama_web.core.logging import redact
from ollama_web.core.validation import clean_text
from ollama_web.db import ApiKey, User, UserRole, UserSession
from ollama_web.db.base import utcnow
from ollama_web.keys.service import create_key, default_expiry

SETUP_KEY_NAME = "default"


@dataclass(frozen=True)
class ClientInfo:
    ip_address: str | None
    user_agent: str | None


@dataclass(frozen=True)
class SetupResult:
    user: User
    api_key: ApiKey
    api_key_secret: str
    user_session: UserSession
    session_token: str


@dataclass(frozen=True)
class LoginResult:
    user: User
    user_session: UserSession
    session_token: str


def _setup_done() -> SetupAlreadyCompletedError:
    return SetupAlreadyCompletedError("Setup is already complete; log in instead.")


async def setup_first_admin(
    session: AsyncSession,
    passwords: Passwords,
    settings: Settings,
    *,
    username: str,
    password: str,
    email: str | None,
    client: ClientInfo,
) -> SetupResult:
    """Create the first admin, with an API key and a session; only while no user exists."""
    if await count_users(session) > 0:
        raise _setup_done()
    await lock_setup(session)
    user = await create_user(
        session, passwords, username=username, password=password, email=email, role=UserRole.ADMIN
    )
    # Counted after our insert: on SQLite we now hold the write lock, so a concurrent
    # setup that committed first is visible here (PostgreSQL is serialised by lock_setup).
    if await count_users(session) > 1:
        raise _setup_done()
    now = utcnow()
    user.last_login_at = now
    key, secret = await create_key(
        session, user.id, SETUP_KEY_NAME, expires_at=default_expiry(settings, now, None)
    )
    row, token = await create_session(
        session, user, settings, ip_address=client.ip_address, user_agent=client.user_agent
    )
    await record_event(
        session,
        AuditAction.SETUP,
        actor_user_id=user.id,
        target_type="user",
        target_id=user.id,
        ip_address=client.ip_address,
        details={"username": user.username},
    )
    return SetupResult(user, key, secret, row, token)


async def _login_failed(
    sessionmaker: async_sessionmaker[AsyncSession],
    throttle: LoginThrottle,
    user: User | None,
    username: str,
    client: ClientInfo,
) -> InvalidCredentialsError:
    await throttle.record_failure(username_key(username), client.ip_address)
    await record_event_detached(
        sessionmaker,
        AuditAction.LOGIN_FAILED,
        actor_user_id=user.id if user else None,
        target_type="user",
        target_id=user.id if user else None,
        ip_address=client.ip_address,
        # An unknown name may be a key pasted into the wrong field, or carry terminal
        # escapes: the audit log (read by every admin, kept in backups) holds neither.
        details={
            "username": user.username if user else redact(clean_text(username)),
            "reason": "bad_password" if user else "unknown_user",
        },
    )
    return InvalidCredentialsError("The username or password is incorrect.")


async def _claim_login(
    session: AsyncSession, user: User, new_hash: str | None
) -> tuple[bool, User | None]:
    """Stamp the login on the user's row only if the password checked is still the one
    stored and the account still enabled. The check took a while: a password change, an
    admin's reset or a disable may have committed meanwhile, and each ends the sessions that
    exist when it runs, so one created now from the old password would outlive it. The
    conditional UPDATE locks the row: such a change waits for this login to commit, and
    then ends its session too.

    Returns whether it did, and the row: otherwise as it is now (None if deleted), with the
    transaction ended, so the failure's audit event can be written beside it."""
    values: dict[str, object] = {"last_login_at": utcnow()}
    if new_hash is not None:
        values["password_hash"] = new_hash
    checked = User.password_hash == user.password_hash
    if await update_if(session, user, checked, User.is_active.is_(True), **values):
        return True, user
    current = await session.get(User, user.id, populate_existing=True)
    await session.commit()  # nothing was written; `current` stays usable
    return False, current


async def login(
    session: AsyncSession,
    sessionmaker: async_sessionmaker[AsyncSession],
    passwords: Passwords,
    throttle: LoginThrottle,
    settings: Settings,
    *,
    username: str,
    password: str,
    client: ClientInfo,
) -> LoginResult:
    async with throttle.attempt(username_key(username), client.ip_address):
        user = await find_by_username(session, username)
        # End the read: the password check takes a while, and a failure writes its audit
        # event on a connection of its own. Holding this one meanwhile ran the pool dry
        # under a burst of failed logins (each waiting for a second connection).
        await session.commit()  # `user` stays usable (expire_on_commit=False)
        if not await passwords.verify_async(user.password_hash if user else None, password):
            raise await _login_failed(sessionmaker, throttle, user, username, client)
    assert user is not None
    if user.is_active:
        new_hash = None
        if passwords.needs_rehash(user.password_hash):
            new_hash = await passwords.hash_async(password)
        claimed, current = await _claim_login(session, user, new_hash)
        if not claimed:
            if current is None or current.is_active:  # deleted, or its password changed
                raise await _login_failed(sessionmaker, throttle, current, username, client)
            user = current  # disabled meanwhile
    if not user.is_active:
        await record_event_detached(
            sessionmaker,
            AuditAction.LOGIN_FAILED,
            actor_user_id=user.id,
            target_type="user",
            target_id=user.id,
            ip_address=client.ip_address,
            details={"username": username, "reason": "account_disabled"},
        )
        raise AccountDisabledError("This account is disabled.")
    await throttle.record_success(user.username_key)
    row, token = await create_session(
        session, user, settings, ip_address=client.ip_address, user_agent=client.user_agent
    )
    await record_event(
        session,
        AuditAction.LOGIN_SUCCEEDED,
        actor_user_id=user.id,
        target_type="session",
        target_id=row.id,
        ip_address=client.ip_address,
    )
    return LoginResult(user, row, token)


async def change_password(
    session: AsyncSession,
    passwords: Passwords,
    throttle: LoginThrottle,
    user: User,
    *,
    current_password: str,
    new_password: str,
    keep_session_id: str | None,
    client: ClientInfo,
) -> int:
    """Set a new password and end the user's other sessions; returns how many ended.

    A wrong current password counts as a failed login for the throttle, so a stolen
    session cannot be used to guess the password.
    """
    async with throttle.attempt(user.username_key, client.ip_address):
        if not await passwords.verify_async(user.password_hash, current_password):
            await throttle.record_failure(user.username_key, client.ip_address)
            raise InvalidCurrentPasswordError(
                "The current password is incorrect.", details={"field": "current_password"}
            )
    if not await set_password_if_unchanged(
        session, passwords, user, new_password, expected_hash=user.password_hash
    ):
        raise InvalidCurrentPasswordError(
            "The password was changed meanwhile; the current password given is no longer it.",
            details={"field": "current_password"},
        )
    ended = await revoke_user_sessions(session, user.id, except_session_id=keep_session_id)
    await record_event(
        session,
        AuditAction.PASSWORD_CHANGED,
        actor_user_id=user.id,
        target_type="user",
        target_id=user.id,
        ip_address=client.ip_address,
        details={"sessions_ended": ended},
    )
    return ended
