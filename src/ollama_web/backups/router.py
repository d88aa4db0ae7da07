"""`/backup`: take a backup, status, list, one backup, verify one (administrators only).

There is deliberately no restore route: a restore replaces the database under a running
server, so it is done from the command line with the server stopped (`ollama-web restore`).
A backup name in a URL is accepted only if it is one of the listed backups and resolves
inside BACKUP_DIR; anything else is 404 BACKUP_NOT_FOUND.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Annotated, ParamSpec, TypeVar, cast

from fastapi import APIRouter, Path, Request, status
from sqlalchemy.exc import OperationalError

from ollama_web.audit.service import record_event
from ollama_web.auth.dependencies import AdminPrincipal
from ollama_web.backups.errors import (
    BackupBusyError,
    BackupCheckError,
    BackupDirectoryError,
    BackupError,
    BackupNotFoundError,
)
from ollama_web.backups.lifespan import RUNTIME_ATTRIBUTE
from ollama_web.backups.models import BackupInfo
from ollama_web.backups.names import MAX_NAME_LENGTH, is_backup_name, sort_key
from ollama_web.backups.runtime import HTTP_LOCK_TIMEOUT_SECONDS, BackupRuntime, public_reason
from ollama_web.backups.schemas import BackupPublic, BackupStatus, BackupVerification
from ollama_web.core.db import describe_database_error
from ollama_web.core.dependencies import SessionDep
from ollama_web.core.errors import InvalidCursorError
from ollama_web.core.net import client_ip
from ollama_web.core.pagination import Page, PageParamsDep, decode_cursor, encode_cursor

logger = logging.getLogger("ollama_web.backups")
router = APIRouter(prefix="/backup", tags=["backups"])

BackupName = Annotated[
    str, Path(max_length=MAX_NAME_LENGTH, description="A name from GET /backup/list")
]
_CURSOR_SCOPE = "backups"
_UNREADABLE_DIRECTORY = (
    "BACKUP_DIR_UNAVAILABLE: the backup directory cannot be read (its mode, its owner); "
    "the message says why in the OS's words"
)
P = ParamSpec("P")
T = TypeVar("T")


def _runtime(request: Request) -> BackupRuntime:
    return cast(BackupRuntime, getattr(request.app.state, RUNTIME_ATTRIBUTE))


async def _in_thread(function: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
    """`function` in a worker thread. A BACKUP_DIR that cannot be read is logged here, with
    its path; the answer (503 BACKUP_DIR_UNAVAILABLE) leaves the path out."""
    try:
        return await asyncio.to_thread(function, *args, **kwargs)
    except BackupDirectoryError as exc:
        logger.error("%s", exc)
        raise


async def _find(request: Request, name: str) -> BackupInfo:
    info = await _in_thread(_runtime(request).service.find, name)
    if info is None:
        raise BackupNotFoundError("No such backup.", details={"name": name[:MAX_NAME_LENGTH]})
    return info


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    summary="Take a backup now",
    responses={
        409: {"description": "BACKUPS_EXTERNAL: PostgreSQL without pg_dump on this host"},
        503: {
            "description": "BACKUP_FAILED: the backup could not be taken (the message says "
            "why, in the OS's words without the server's paths)"
        },
    },
)
async def create_backup(
    request: Request, principal: AdminPrincipal, session: SessionDep
) -> BackupPublic:
    try:
        info = await _runtime(request).backup(
            "manual (API)", lock_timeout=HTTP_LOCK_TIMEOUT_SECONDS
        )
    except BackupBusyError:
        raise
    except (BackupError, OSError) as exc:  # the answer says less: the log has the whole error
        logger.error("manual backup (API) failed: %s", exc)
        if isinstance(exc, BackupError):
            raise BackupError(public_reason(exc), code=exc.code, details=exc.details) from exc
        raise BackupError(public_reason(exc)) from exc
    if info is None:
        raise BackupError("The database has no users yet; there is nothing to back up.")
    try:
        await record_event(
            session,
            "backup.created",
            actor_user_id=principal.user_id,
            target_type="backup",
            target_id=info.name,
            ip_address=client_ip(request.scope, request.app.state.settings),
            details={"size_bytes": info.size_bytes, "sha256": info.sha256},
        )
        await session.commit()
    except OperationalError as exc:
        # The backup is taken (its archive written): say so, rather than a 503 that has the
        # client (or its monitoring) take another; the lost audit row is the log's to say.
        await session.rollback()
        logger.error(
            "backup %s taken, but its audit event could not be stored: %s",
            info.name,
            describe_database_error(exc),
        )
    return BackupPublic.of(info)


@router.get(
    "/status",
    summary="Backup status: last backup, count, size, schedule, free space",
    responses={503: {"description": _UNREADABLE_DIRECTORY}},
)
async def backup_status(request: Request, principal: AdminPrincipal) -> BackupStatus:
    report = await _in_thread(_runtime(request).status)
    return BackupStatus.model_validate(report)


@router.get(
    "/list",
    summary="Backups, newest first",
    responses={503: {"description": _UNREADABLE_DIRECTORY}},
)
async def list_backups(
    request: Request, principal: AdminPrincipal, page: PageParamsDep
) -> Page[BackupPublic]:
    backups = await _in_thread(_runtime(request).service.list_backups)
    if page.cursor is not None:
        values = decode_cursor(page.secret, _CURSOR_SCOPE, page.cursor)
        if len(values) != 1 or not isinstance(values[0], str) or not is_backup_name(values[0]):
            raise InvalidCursorError("The cursor is invalid or does not belong to this list.")
        after = sort_key(values[0])
        backups = [info for info in backups if sort_key(info.name) < after]
    items = backups[: page.limit]
    next_cursor = None
    if len(backups) > page.limit:
        next_cursor = encode_cursor(page.secret, _CURSOR_SCOPE, [items[-1].name])
    return Page[BackupPublic](
        items=[BackupPublic.of(info) for info in items], next_cursor=next_cursor
    )


@router.get(
    "/{name}",
    summary="One backup",
    responses={
        404: {"description": "BACKUP_NOT_FOUND: not one of the listed backups"},
        503: {"description": _UNREADABLE_DIRECTORY},
    },
)
async def get_backup(request: Request, principal: AdminPrincipal, name: BackupName) -> BackupPublic:
    return BackupPublic.of(await _find(request, name))


@router.post(
    "/{name}/verify",
    summary="Check a backup: sha256 against its sidecar, then its integrity and schema",
    responses={
        404: {"description": "BACKUP_NOT_FOUND: not one of the listed backups"},
        503: {
            "description": "BACKUP_CHECK_FAILED: the check could not run (no room or no "
            "write access beside the database to unpack the backup, the backup cannot be "
            "read, or pg_restore is not installed); says nothing about it. " + _UNREADABLE_DIRECTORY
        },
    },
)
async def verify_backup(
    request: Request, principal: AdminPrincipal, name: BackupName
) -> BackupVerification:
    info = await _find(request, name)
    try:
        problems = await asyncio.to_thread(_runtime(request).service.verify, info.path)
    except BackupCheckError as exc:  # the answer leaves out the path: the log has it
        logger.error("backup %s could not be checked: %s", info.name, exc.__cause__ or exc)
        raise
    return BackupVerification(name=info.name, valid=not problems, problems=problems)
