"""Migrations when the server starts: the check `ollama-web serve` makes before it imports
the app, the early migration of a new database beside those imports, and the lifespan's
step (MIGRATE_ON_STARTUP), which upgrades in a forked child so that Alembic never loads
into the server."""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
import threading
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from multiprocessing.connection import Connection as Connection_
from multiprocessing.process import BaseProcess
from typing import TYPE_CHECKING

from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine

from ollama_web.core.config import Settings
from ollama_web.core.db import create_null_pool_engine, describe_database_error
from ollama_web.core.startup import DatabaseUnusableError, has_data
from ollama_web.migrations.runner import (
    refuse_unknown_revisions,
    refuse_unmigrated,
    script_head,
    stored_revision,
    upgrade,
    upgrade_settings,
)

if TYPE_CHECKING:
    from fastapi import FastAPI

logger = logging.getLogger("ollama_web.migrations")

PROGRESS_SECONDS = 30.0


async def _check_stored_schema(settings: Settings) -> None:
    engine = create_null_pool_engine(settings)
    try:
        current = await stored_revision(engine)
    finally:
        await engine.dispose()
    if settings.migrate_on_startup:  # an older schema is upgraded; a newer one cannot be
        refuse_unknown_revisions(engine.url, [] if current is None else [current])
    else:
        refuse_unmigrated(engine.url, current)


def check_schema_before_serving(settings: Settings) -> None:
    """`ollama-web serve`: a database this version cannot use is refused here, where the
    command says it in one line (exit 3), rather than in the lifespan, where uvicorn would
    print a traceback. One query (~20 ms), no Alembic. With MIGRATE_ON_STARTUP, only a
    revision this version does not know; without it, any schema but its own
    (`refuse_unmigrated`)."""
    database = settings.sqlite_file
    if database is not None and not has_data(database):
        # A new database: nothing stored to check, and no file to create here.
        if not settings.migrate_on_startup:
            refuse_unmigrated(make_url(f"sqlite:///{database}"), None)
        return
    asyncio.run(_check_stored_schema(settings))


async def _upgrade_if_empty(settings: Settings) -> bool:
    """Upgrade a database that has no schema yet; leave any other alone (its upgrade needs
    the before-upgrade hooks, which run where the app registered them)."""
    engine = create_null_pool_engine(settings)
    try:
        if await stored_revision(engine) is not None:
            return False
        return not (await upgrade(engine, settings)).up_to_date  # False: another process did
    finally:
        await engine.dispose()


async def _upgrade_all(settings: Settings) -> bool:
    return not (await upgrade_settings(settings)).up_to_date


def _upgrade_in_fork(settings: Settings, report: Connection_, only_if_empty: bool) -> None:
    """The forked child: upgrade on a loop of its own (a new thread has no running loop;
    the parent's loop, pool and connections are never touched), report, and exit."""
    outcome: list[tuple[str | None, bool]] = [("the migration did not run", False)]

    def run() -> None:
        try:
            work = _upgrade_if_empty(settings) if only_if_empty else _upgrade_all(settings)
            outcome[0] = (None, asyncio.run(work))
        except BaseException as exc:  # reported to the parent
            outcome[0] = (describe_database_error(exc), False)

    worker = threading.Thread(target=run, name="migrate")
    worker.start()
    worker.join()
    report.send(outcome[0])
    report.close()


def _await_child(process: BaseProcess, reader: Connection_) -> tuple[str | None, bool]:
    """(error, migrated) as the child reported them. A migration has no time limit (a
    large database's may take minutes), so every PROGRESS_SECONDS without its report says
    so: a start that waits is never silent."""
    started = time.monotonic()
    try:
        while not reader.poll(PROGRESS_SECONDS):  # True on a report, or the child's end
            logger.info(
                "the database migration (process %s) is still running, after %.0f s",
                process.pid,
                time.monotonic() - started,
            )
        error, migrated = reader.recv()
    except EOFError:
        error, migrated = "the migration process ended without a report", False
    finally:
        reader.close()
    process.join()
    if error is None and process.exitcode != 0:
        error = f"the migration process exited with status {process.exitcode}"
    return error, migrated


_Child = tuple[BaseProcess, Connection_]
_early_child: _Child | None = None


def _fork(settings: Settings, *, only_if_empty: bool) -> _Child | None:
    if "fork" not in multiprocessing.get_all_start_methods():
        return None
    context = multiprocessing.get_context("fork")
    reader, writer = context.Pipe(duplex=False)
    process = context.Process(
        target=_upgrade_in_fork,
        args=(settings, writer, only_if_empty),
        name="ollama-web-migrate",
    )
    process.start()
    writer.close()
    return process, reader


def begin_early_migration(settings: Settings) -> None:
    """`ollama-web serve`, before it imports the app: a brand-new database is given its
    schema by a child running beside the server's own imports and app build (~1 s), on
    another core. The lifespan's `migrate_on_startup` waits for it, then checks as always."""
    global _early_child
    if not settings.migrate_on_startup or _early_child is not None:
        return
    embedded = settings.embedded_database_file
    if embedded is not None and has_data(embedded):
        return  # an existing embedded database: no child needed to find that out
    _early_child = _fork(settings, only_if_empty=True)


async def upgrade_in_child(settings: Settings) -> None:
    """Upgrade from a forked child process, where the platform can fork.

    Alembic and the migration scripts then never load into the server: they would stay
    resident (~10 MB) for the life of a process that needs them once. A fork inherits what
    is already imported (a fresh interpreter would take ~1 s to import it again) and the
    registered before-upgrade hooks; it reports failure back over a pipe.
    """
    child = _fork(settings, only_if_empty=False)
    if child is None:
        await upgrade_settings(settings)
        return
    error, _ = await asyncio.to_thread(_await_child, *child)
    if error is not None:  # one line, not a traceback (the database, not a bug)
        raise DatabaseUnusableError(f"cannot start: the database migration failed: {error}")


async def _finish_early_migration() -> None:
    global _early_child
    child, _early_child = _early_child, None
    if child is not None:
        error, migrated = await asyncio.to_thread(_await_child, *child)
        if error is not None:  # the check below retries it, and reports what fails
            logger.warning("early migration did not complete: %s", error)
        elif migrated:
            logger.info("migrated the new database to %s while the server started", script_head())


@asynccontextmanager
async def migrate_on_startup(app: FastAPI) -> AsyncIterator[None]:
    settings: Settings = app.state.settings
    engine: AsyncEngine = app.state.core.engine
    if settings.migrate_on_startup:
        await _finish_early_migration()
        current = await stored_revision(engine)
        # A newer version's schema: said here, without forking a migration that would fail.
        refuse_unknown_revisions(engine.url, [] if current is None else [current])
        if current != script_head():
            # No pooled connection (nor its driver thread) is carried into the fork; the
            # child logs what it did (nothing, when another instance migrated first).
            await engine.dispose()
            await upgrade_in_child(settings)
    else:
        refuse_unmigrated(engine.url, await stored_revision(engine))
    yield
