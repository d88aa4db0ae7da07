"""`ollama-web create-admin` and `ollama-web users list|disable|enable`.

Passwords come from a prompt (asked twice) or, with `--password-stdin`, from the first line
of standard input; never from the command line, where other users could read them.
"""

from __future__ import annotations

import argparse
import asyncio
import getpass
import sys
import warnings
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, TypeVar

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from ollama_web.audit.service import AuditAction, record_event
from ollama_web.auth.passwords import PASSWORD_NOT_UTF8, password_problem, passwords_for
from ollama_web.auth.sessions import revoke_user_sessions
from ollama_web.auth.users import (
    check_email,
    create_user,
    find_by_username,
    lock_admins,
    lock_setup,
    lock_user,
    require_an_active_admin,
    set_password,
)
from ollama_web.core.config import Settings
from ollama_web.core.db import create_null_pool_engine, create_sessionmaker, session_scope
from ollama_web.core.errors import AppError
from ollama_web.core.startup import (
    DatabaseUnusableError,
    has_data,
    load_settings_or_exit,
    run_database_command,
)
from ollama_web.db import User, UserRole

EXIT_OK = 0
EXIT_FAILED = 1
NO_TERMINAL = (
    "no password given: run this in a terminal, or pass --password-stdin and write the "
    "password to standard input"
)
T = TypeVar("T")


class CommandError(Exception):
    """A failure to report in one line, without a traceback."""


def register(subparsers: Any) -> None:
    create = subparsers.add_parser(
        "create-admin", help="create an admin (or reset an admin's password)"
    )
    create.add_argument("--username", required=True)
    create.add_argument("--email")
    create.add_argument(
        "--reset-password",
        action="store_true",
        help="the user exists: set a new password, make them an active admin, end sessions",
    )
    create.add_argument(
        "--password-stdin", action="store_true", help="read the password from standard input"
    )
    create.set_defaults(handler=_create_admin)

    users = subparsers.add_parser("users", help="list, disable or enable user accounts")
    commands = users.add_subparsers(dest="users_command", required=True)
    commands.add_parser("list", help="list every account").set_defaults(handler=_list_users)
    for name, active in (("disable", False), ("enable", True)):
        command = commands.add_parser(name, help=f"{name} an account")
        command.add_argument("username")
        command.set_defaults(handler=_set_active, active=active)


def read_password(from_stdin: bool) -> str:
    try:
        password = _read_password(from_stdin)
    except UnicodeDecodeError:
        # Bytes that are not UTF-8 under a strict UTF-8 locale; under the C locale Python
        # decodes them to lone surrogates instead, which `password_problem` refuses alike.
        raise CommandError(PASSWORD_NOT_UTF8) from None
    problem = password_problem(password)
    if problem is not None:
        raise CommandError(problem)
    return password


def _read_password(from_stdin: bool) -> str:
    if from_stdin:
        return sys.stdin.readline().rstrip("\r\n")
    try:
        with warnings.catch_warnings():
            # Without a terminal getpass would read standard input, warning that the
            # password may be echoed: refuse instead.
            warnings.simplefilter("error", getpass.GetPassWarning)
            password = getpass.getpass("Password: ")
            repeated = getpass.getpass("Repeat password: ")
    except (getpass.GetPassWarning, EOFError):
        raise CommandError(NO_TERMINAL) from None
    if repeated != password:
        raise CommandError("the passwords do not match")
    return password


async def _with_session(
    settings: Settings, work: Callable[[AsyncSession], Awaitable[T]], *, creates: bool = False
) -> T:
    """`work` in one transaction. Only a command that `creates` (the first admin) may make
    the embedded database: another, run from the wrong directory or with the wrong
    DATA_DIR, would make an empty one and report no users (exit 3, as `backup` refuses)."""
    database = settings.sqlite_file
    if not creates and database is not None and not has_data(database):
        raise DatabaseUnusableError(f"there is no database at {database} (check DATA_DIR)")
    if settings.migrate_on_startup:
        from ollama_web.migrations.runner import upgrade_settings

        await upgrade_settings(settings)
    engine = create_null_pool_engine(settings)
    try:
        async with session_scope(create_sessionmaker(engine)) as session:
            return await work(session)
    finally:
        await engine.dispose()


def _run(work: Callable[[Settings], Coroutine[Any, Any, str]]) -> int:
    settings = load_settings_or_exit()

    def command() -> int:
        try:
            print(asyncio.run(work(settings)))
        except (CommandError, AppError) as exc:
            print(f"error: {exc}", file=sys.stderr)
            return EXIT_FAILED
        return EXIT_OK

    return run_database_command(settings, command)


async def _reset_admin(session: AsyncSession, settings: Settings, user: User, password: str) -> str:
    await set_password(passwords_for(settings), user, password)
    user.role = UserRole.ADMIN.value
    user.is_active = True
    ended = await revoke_user_sessions(session, user.id)
    await record_event(
        session,
        AuditAction.CLI_PASSWORD_RESET,
        target_type="user",
        target_id=user.id,
        details={"username": user.username, "sessions_ended": ended, "via": "cli"},
    )
    return f"password reset for {user.username}; they are an active admin ({ended} sessions ended)"


def _create_admin(args: argparse.Namespace) -> int:
    def work(settings: Settings) -> Coroutine[Any, Any, str]:
        # Asked before the event loop runs: asyncio.run takes a first Ctrl+C for a
        # cancellation of its task, which a prompt holding up the loop never sees (it took
        # two Ctrl+C to leave the prompt).
        password = read_password(args.password_stdin)
        email = check_email(args.email)

        async def change(session: AsyncSession) -> str:
            existing = await find_by_username(session, args.username)
            if existing is not None:
                if not args.reset_password:
                    raise CommandError(
                        f"user {existing.username!r} exists; add --reset-password to reset it"
                    )
                return await _reset_admin(session, settings, existing, password)
            if args.reset_password:
                raise CommandError(f"no user named {args.username!r}")
            # Held to the commit: a setup meanwhile waits, then finds this admin and is
            # refused (on PostgreSQL it could not see it uncommitted, and made another).
            await lock_setup(session)
            user = await create_user(
                session,
                passwords_for(settings),
                username=args.username,
                password=password,
                email=email,
                role=UserRole.ADMIN,
            )
            await record_event(
                session,
                AuditAction.CLI_ADMIN_CREATED,
                target_type="user",
                target_id=user.id,
                details={"username": user.username, "via": "cli"},
            )
            return f"created admin {user.username} ({user.id})"

        return _with_session(settings, change, creates=not args.reset_password)

    return _run(work)


def _list_users(_args: argparse.Namespace) -> int:
    async def work(settings: Settings) -> str:
        async def query(session: AsyncSession) -> str:
            users = (await session.scalars(select(User).order_by(User.created_at))).all()
            lines = [f"{'USERNAME':<32} {'ROLE':<6} {'ACTIVE':<6} CREATED"]
            for user in users:
                active = "yes" if user.is_active else "no"
                created = user.created_at.strftime("%Y-%m-%d %H:%M")
                lines.append(f"{user.username:<32} {user.role:<6} {active:<6} {created}")
            return "\n".join(lines)

        return await _with_session(settings, query)

    return _run(work)


def _set_active(args: argparse.Namespace) -> int:
    async def work(settings: Settings) -> str:
        async def change(session: AsyncSession) -> str:
            user = await find_by_username(session, args.username)
            if user is None:
                raise CommandError(f"no user named {args.username!r}")
            if not args.active:
                await lock_admins(session)
            if not await lock_user(session, user):  # reloaded: the server may have changed it
                raise CommandError(f"no user named {args.username!r}")
            removing_admin = not args.active and user.is_admin and user.is_active
            changed = user.is_active != args.active
            user.is_active = args.active
            await session.flush()
            if removing_admin:
                await require_an_active_admin(session, user.id)
            ended = 0 if args.active else await revoke_user_sessions(session, user.id)
            if not changed and not ended:  # as the admin API: nothing changed, nothing recorded
                return f"{user.username} is already {'enabled' if args.active else 'disabled'}"
            await record_event(
                session,
                AuditAction.CLI_USER_DISABLED if not args.active else AuditAction.CLI_USER_ENABLED,
                target_type="user",
                target_id=user.id,
                details={"username": user.username, "via": "cli"},
            )
            state = "enabled" if args.active else f"disabled ({ended} sessions ended)"
            return f"{user.username} {state}"

        return await _with_session(settings, change)

    return _run(work)
