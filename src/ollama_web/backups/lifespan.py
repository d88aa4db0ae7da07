"""The backup domain inside the server, in two lifespans.

`server_lock_lifespan` (entered before migrations): hold the server locks shared for the
server's life (the one in DATA_DIR and, for SQLite, the one beside the database file) —
`ollama-web restore` refuses while either is held — and register the
pre-migration backup hook. `backup_lifespan` (after migrations): the startup backup, the
periodic scheduler, the shutdown backup, and the `backups` component of /health.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import datetime
from typing import Any

from fastapi import FastAPI

from ollama_web.backups.errors import BackupError, MigrationRefusedError
from ollama_web.backups.locks import (
    FileLock,
    LockBusyError,
    database_lock_path,
    server_lock_paths,
)
from ollama_web.backups.runtime import BackupRuntime
from ollama_web.backups.service import MODE_EXTERNAL, DatabaseBackup
from ollama_web.core.config import Settings
from ollama_web.core.state import SOLE_SERVER_SINCE
from ollama_web.db.base import utcnow
from ollama_web.health.service import register_check
from ollama_web.migrations.runner import MigrationStatus, register_before_upgrade

logger = logging.getLogger("ollama_web.backups")

RUNTIME_ATTRIBUTE = "backups"
SIBLING_PROBE_WAIT_SECONDS = 1.0


class RestoreInProgressError(RuntimeError):
    pass


async def backup_before_migration(settings: Settings, status: MigrationStatus) -> None:
    """Called by the migration runner before it changes a database that has a schema.

    Not again when the newest backup is one taken before this same migration: a migration
    that failed changed nothing (it is one transaction), and a server that ran since would
    have taken a backup of its own at its start. A start that fails and is restarted for
    ever (systemd every 5 s) otherwise added a backup of the database's size each time,
    and the retention deleted the older ones: within minutes, every backup before the
    upgrade."""
    service = DatabaseBackup(settings)
    if not settings.backup_enabled or service.mode == MODE_EXTERNAL:
        return
    reason = f"before migrating {status.current} -> {status.head}"
    try:
        newest = next(iter(await asyncio.to_thread(service.list_backups)), None)
        if newest is not None and newest.reason == reason:
            logger.info("no new backup before migrating: %s is one, and the newest", newest.name)
            return
        await asyncio.to_thread(service.create_backup, reason)
    except BackupError as exc:  # str(): the operator's message names the paths
        raise MigrationRefusedError(
            f"refusing to migrate: the pre-migration backup failed ({exc}); "
            "fix it or set BACKUP_ENABLED=false to migrate without one"
        ) from exc


def install_migration_hook() -> None:
    register_before_upgrade(backup_before_migration)


@asynccontextmanager
async def server_lock_lifespan(app: FastAPI) -> AsyncIterator[None]:
    settings: Settings = app.state.settings
    locks = [FileLock(path) for path in server_lock_paths(settings)]
    try:
        for lock in locks:
            try:
                # A moment's wait: another server starting holds it exclusive for an
                # instant (`alone` below); a restore holds it for its whole length.
                lock.acquire(shared=True, timeout=SIBLING_PROBE_WAIT_SECONDS)
            except LockBusyError:
                raise RestoreInProgressError(
                    f"a restore holds {lock.path}; start the server after it finished"
                ) from None
        setattr(app.state, SOLE_SERVER_SINCE, _sole_since(settings, locks))
        install_migration_hook()
        yield
    finally:
        for lock in reversed(locks):
            lock.release()


def _sole_since(settings: Settings, locks: list[FileLock]) -> datetime | None:
    """When this process found itself the only server of its SQLite database (every server
    of a database file holds the lock beside it, and all of them run on this host), or
    None: then any answer left unfinished before that moment belongs to a process that is
    gone, and is interrupted at once, not after the stale interval (chat.leases). With
    PostgreSQL, servers on other hosts may share the database: None."""
    if settings.sqlite_file is None:
        return None
    path = database_lock_path(settings.sqlite_file)
    lock = next(lock for lock in locks if lock.path == path)
    moment = utcnow()
    try:
        alone = lock.alone()
    except LockBusyError:
        raise RestoreInProgressError(
            f"a restore took {lock.path}; start the server after it finished"
        ) from None
    return moment if alone else None


@asynccontextmanager
async def backup_lifespan(app: FastAPI) -> AsyncIterator[None]:
    settings: Settings = app.state.settings
    runtime = BackupRuntime(DatabaseBackup(settings))
    setattr(app.state, RUNTIME_ATTRIBUTE, runtime)

    async def health() -> dict[str, Any]:
        return await asyncio.to_thread(runtime.health)

    register_check(app, "backups", health)
    # What a process killed mid-backup or mid-restore left, at least an hour ago (two
    # directory listings: no thread needed).
    try:
        runtime.service.remove_orphans()
    except OSError as exc:
        logger.warning("cannot remove unfinished backup files: %s", exc)
    leader = runtime.automatic and runtime.try_lead()
    if leader:
        runtime.start_startup_backup()
    runtime.start_scheduler()
    try:
        yield
    finally:
        await runtime.startup_backup_done()
        await runtime.stop_scheduler()
        if runtime.automatic and runtime.scheduler_lock.held:
            await runtime.automatic_backup("shutdown", unless_unchanged=True)
        runtime.scheduler_lock.release()
