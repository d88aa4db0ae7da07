"""Revisions, status, and the upgrade (under a lock, after the before-upgrade hooks). What
the server does with them when it starts is in `startup`."""

from __future__ import annotations

import asyncio
import fcntl
import logging
import os
import re
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING

from sqlalchemy import text
from sqlalchemy.engine import URL, Connection
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncEngine

from ollama_web.backups.locks import MIGRATION_LOCK_SUFFIX
from ollama_web.core.config import Settings
from ollama_web.core.db import create_null_pool_engine
from ollama_web.core.startup import DatabaseUnusableError

if TYPE_CHECKING:
    from alembic.config import Config

logger = logging.getLogger("ollama_web.migrations")

MIGRATIONS_DIR = Path(__file__).resolve().parent
LOCK_POLL_SECONDS = 0.1
LOCK_KEY = 0x6F6C6C616D6177  # "ollamaw": the PostgreSQL advisory lock migrations take
# pg_locks shows a bigint advisory key as its high and low 32 bits (classid, objid).
_LOCK_PARTS = {"high": LOCK_KEY >> 32, "low": LOCK_KEY & 0xFFFFFFFF}
_LOCK_HOLDERS = text(
    "SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND granted AND objsubid = 1"
    " AND classid::bigint = :high AND objid::bigint = :low ORDER BY pid"
)


@dataclass(frozen=True)
class MigrationStatus:
    current: str | None
    head: str
    pending: list[str]

    @property
    def up_to_date(self) -> bool:
        return not self.pending


# Called with (settings, status) before an upgrade changes a database that already has a
# schema (the backup module registers itself here to take a safety backup).
BeforeUpgrade = Callable[[Settings, MigrationStatus], Awaitable[None]]
_before_upgrade_hooks: list[BeforeUpgrade] = []


def register_before_upgrade(hook: BeforeUpgrade) -> None:
    if hook not in _before_upgrade_hooks:
        _before_upgrade_hooks.append(hook)


_REVISION = re.compile(r"^revision(?:: str)? = ['\"]([^'\"]+)['\"]", re.MULTILINE)
_DOWN = re.compile(r"^down_revision(?:: [^=]+)? = ['\"]([^'\"]+)['\"]", re.MULTILINE)


@cache
def known_revisions() -> frozenset[str]:
    """Every revision of this version's scripts, read from the version files without
    importing Alembic.

    Alembic costs ~10 MB and ~100 ms to import; a server starting on an up-to-date database
    only needs to know that the stored revision is the head.
    """
    revisions: set[str] = set()
    for path in (MIGRATIONS_DIR / "versions").glob("*.py"):
        if match := _REVISION.search(path.read_text(encoding="utf-8")):
            revisions.add(match.group(1))
    return frozenset(revisions)


@cache
def script_head() -> str:
    """The head revision (the one no other revision follows), read as `known_revisions`."""
    parents: set[str] = set()
    for path in (MIGRATIONS_DIR / "versions").glob("*.py"):
        if match := _DOWN.search(path.read_text(encoding="utf-8")):
            parents.add(match.group(1))
    heads = known_revisions() - parents
    if len(heads) != 1:
        raise RuntimeError(f"expected one migration head, found {sorted(heads)}")
    return next(iter(heads))


class UnknownRevisionError(DatabaseUnusableError):
    """The database is at a revision none of this version's scripts knows: a newer version
    made it (or it was restored from a newer version's backup, or the package downgraded).
    Alembic would fail on it with a ResolutionError and a traceback."""

    def __init__(self, database: str, revision: str) -> None:
        self.revision = revision
        super().__init__(
            f"the database {database} is at revision {revision}, which this version of "
            f"ollama-web does not know (its newest is {script_head()}): it was made by a "
            "newer version; upgrade, or restore a backup made by this one"
        )


def _describe(url: URL) -> str:
    """The database as a message names it: a SQLite file's path, a URL without password."""
    if url.get_backend_name() == "sqlite":
        return url.database or ":memory:"
    return url.render_as_string(hide_password=True)


def refuse_unknown_revisions(url: URL, revisions: Sequence[str]) -> None:
    """Raise DatabaseUnusableError unless the stored revisions are none or one known one."""
    if len(revisions) > 1:
        raise DatabaseUnusableError(
            f"the database {_describe(url)} records {len(revisions)} schema revisions "
            f"({', '.join(revisions)}) where ollama-web keeps one: it was changed by hand or "
            "by another program; restore a backup"
        )
    for revision in revisions:
        if revision not in known_revisions():
            raise UnknownRevisionError(_describe(url), revision)


def refuse_unmigrated(url: URL, current: str | None) -> None:
    """With MIGRATE_ON_STARTUP=false nothing upgrades the schema when the server starts: a
    database with no schema, or one behind this version's, is refused with what to run
    (it would otherwise answer 500 at the first query that meets a missing column)."""
    refuse_unknown_revisions(url, [] if current is None else [current])
    head = script_head()
    if current != head:
        state = "has no schema" if current is None else f"is at revision {current}"
        raise DatabaseUnusableError(
            f"the database {_describe(url)} {state}, and this version of ollama-web needs "
            f"revision {head}: MIGRATE_ON_STARTUP is false, so run `ollama-web migrate` first"
        )


async def stored_revision(engine: AsyncEngine) -> str | None:
    try:
        async with engine.connect() as conn:
            result = await conn.execute(text("SELECT version_num FROM alembic_version"))
            row = result.first()
    except DBAPIError:
        return None
    return None if row is None else str(row[0])


def alembic_config() -> Config:
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    return config


def _pending(connection: Connection) -> MigrationStatus:
    from alembic.runtime.migration import MigrationContext
    from alembic.script import ScriptDirectory

    stored = MigrationContext.configure(connection).get_current_heads()
    refuse_unknown_revisions(connection.engine.url, stored)
    current = stored[0] if stored else None
    script = ScriptDirectory.from_config(alembic_config())
    head = script.get_current_head()
    assert head is not None
    pending = [rev.revision for rev in script.iterate_revisions(head, current)]
    pending.reverse()
    return MigrationStatus(current=current, head=head, pending=pending)


def upgrade_connection(connection: Connection, revision: str) -> None:
    """Every step to `revision` in one transaction, on SQLite too: a migration that fails or
    is killed half-way (a power cut, the OOM killer, systemd's SIGKILL during a long
    upgrade) leaves the database as it was, and the next start tries again. SQLite can
    roll back DDL, but Python's sqlite3 opens a transaction only before INSERT, UPDATE and
    DELETE: each CREATE, DROP or ALTER before the first of those was committed at once (a
    batch migration's `_alembic_tmp_` table outlived the kill and failed every later try).
    Here the driver opens none itself, and the transaction starts before the first step."""
    from alembic import command

    config = alembic_config()
    config.attributes["connection"] = connection
    if connection.dialect.name != "sqlite":
        command.upgrade(config, revision)
        return
    driver = connection.connection.dbapi_connection
    assert driver is not None
    implicit = driver.isolation_level
    driver.isolation_level = None  # (this would commit an open transaction: none is yet)
    connection.exec_driver_sql("BEGIN")
    try:
        command.upgrade(config, revision)
    finally:  # the caller's commit or rollback ends the transaction
        driver.isolation_level = implicit


async def migration_status(engine: AsyncEngine) -> MigrationStatus:
    async with engine.connect() as conn:
        return await conn.run_sync(_pending)


async def upgrade(
    engine: AsyncEngine, settings: Settings, revision: str = "head"
) -> MigrationStatus:
    """Upgrade to `revision`; a no-op when already there. Returns the status before (up to
    date when another process did the upgrade meanwhile)."""
    async with _migration_lock(engine):
        status = await migration_status(engine)
        if status.up_to_date:
            return status
        if status.current is not None:
            for hook in _before_upgrade_hooks:
                await hook(settings, status)
        async with engine.begin() as conn:
            await conn.run_sync(upgrade_connection, revision)
    logger.info("migrated database from %s to %s", status.current or "empty", status.head)
    return status


@asynccontextmanager
async def _migration_lock(engine: AsyncEngine) -> AsyncIterator[None]:
    """Instances starting together on one database take turns: one checks, backs up (the
    hooks) and migrates; the others wait here, then find nothing to do. On PostgreSQL the
    session lock is held on a connection of its own, around all three; on SQLite a lock
    file beside the database is (SQLite's own lock lasts one transaction: a process that
    read the old revision failed with "database is locked" once the other had migrated)."""
    if engine.dialect.name == "sqlite":
        database = engine.url.database
        if not database or database == ":memory:" or database.startswith("file:"):
            yield
            return
        async with _file_lock(Path(f"{database}{MIGRATION_LOCK_SUFFIX}")):
            yield
        return
    if engine.dialect.name != "postgresql":
        yield
        return
    async with engine.connect() as conn:
        key = {"key": LOCK_KEY}
        if not (await conn.execute(text("SELECT pg_try_advisory_lock(:key)"), key)).scalar():
            # A migration (or its safety backup) can take minutes: say what we wait for,
            # and who holds it, rather than hang in silence.
            holders = (await conn.execute(_LOCK_HOLDERS, _LOCK_PARTS)).scalars().all()
            logger.warning(
                "waiting for the migration another process is running on this database "
                "(PostgreSQL backend pid %s holds its lock)",
                ", ".join(map(str, holders)) or "unknown",
            )
            await conn.execute(text("SELECT pg_advisory_lock(:key)"), key)
            logger.warning("the other migration ended; checking the schema again")
        await conn.commit()  # the lock outlives the transaction; the connection holds it
        try:
            yield
        finally:
            await conn.execute(text("SELECT pg_advisory_unlock(:key)"), {"key": LOCK_KEY})
            await conn.commit()


@asynccontextmanager
async def _file_lock(path: Path) -> AsyncIterator[None]:
    """An exclusive `flock` on `path` (made 0600 if missing), waited for in steps so that
    a cancelled wait leaves nothing behind; closing the file releases it, also when the
    process dies."""
    descriptor = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        if not _try_lock(descriptor):
            logger.warning(
                "waiting for the migration another process is running on this database "
                "(it holds %s)",
                path,
            )
            while not _try_lock(descriptor):  # noqa: ASYNC110 - another process holds it
                await asyncio.sleep(LOCK_POLL_SECONDS)
            logger.warning("the other migration ended; checking the schema again")
        yield
    finally:
        os.close(descriptor)


def _try_lock(descriptor: int) -> bool:
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


async def upgrade_settings(settings: Settings) -> MigrationStatus:
    engine = create_null_pool_engine(settings)
    try:
        return await upgrade(engine, settings)
    finally:
        await engine.dispose()


async def status_for_settings(settings: Settings) -> MigrationStatus:
    engine = create_null_pool_engine(settings)
    try:
        return await migration_status(engine)
    finally:
        await engine.dispose()
