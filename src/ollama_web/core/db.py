"""Engine and session factory. One request = one transaction (see `session_scope`)."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import sqlite3
import time
import unicodedata
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from traceback import walk_tb
from typing import Any

from sqlalchemy import ColumnElement, event, update
from sqlalchemy.engine import URL, Connection, ExceptionContext, ExecutionContext, make_url
from sqlalchemy.exc import DBAPIError, IntegrityError, InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as SATimeoutError
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)
from sqlalchemy.orm.attributes import set_committed_value
from sqlalchemy.pool import NullPool

from ollama_web.core.config import Settings
from ollama_web.core.database_url import asyncpg_url_and_arguments
from ollama_web.core.errors import AccountGoneError

logger = logging.getLogger("ollama_web.db")
slow_query_logger = logging.getLogger("ollama_web.db.slow")

SQLITE_BUSY_TIMEOUT_MS = 5000


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.close()
    # What PostgreSQL's `ollama_web_fold` does (migration 0008), for title search.
    dbapi_connection.create_function(FOLD_FUNCTION, 1, fold_text, deterministic=True)


FOLD_FUNCTION = "ollama_web_fold"


def fold_text(text: str | None) -> str | None:
    """Text as searched without case or accents: compatibility-decomposed, combining marks
    dropped, case-folded ("Éte\u0301" and "ETE" both give "ete"). Called by SQLite for each
    title a search passes: plain ASCII costs ~0.05 µs more than `lower()`, other text ~2 µs
    the first time (kept: titles come back search after search)."""
    if text is None:
        return None
    if text.isascii():
        return text.lower()
    return _fold_unicode(text)


@functools.lru_cache(maxsize=16384)
def _fold_unicode(text: str) -> str:
    decomposed = unicodedata.normalize("NFKD", text)
    return "".join(c for c in decomposed if not unicodedata.combining(c)).casefold()


class SlowQueryRecorder:
    """Logs statements slower than SLOW_QUERY_MS and counts them."""

    def __init__(self, threshold_ms: int) -> None:
        self.threshold_ms = threshold_ms
        self.count = 0

    def before(self, conn: Connection, *_args: Any) -> None:
        conn.info.setdefault("query_start", []).append(time.perf_counter())

    def after(
        self,
        conn: Connection,
        _cursor: Any,
        statement: str,
        _params: Any,
        _context: ExecutionContext,
        _many: bool,
    ) -> None:
        starts = conn.info.get("query_start")
        if not starts:
            return
        self.observe(statement, (time.perf_counter() - starts.pop()) * 1000)

    def failed(self, context: ExceptionContext) -> None:
        """A statement that raised: timed too (say, one that waited out the busy timeout),
        and its start taken off the connection's stack."""
        conn = context.connection
        # Only a statement being executed (not a failed connect): its DBAPI connection is
        # still there (an invalidation after a disconnect comes after these hooks).
        if conn is None or context.execution_context is None or conn.invalidated:
            return
        starts = conn.info.get("query_start")
        if starts:
            self.observe(context.statement or "", (time.perf_counter() - starts.pop()) * 1000)

    def observe(self, statement: str, elapsed_ms: float) -> None:
        if elapsed_ms >= self.threshold_ms:
            self.count += 1
            slow_query_logger.warning(
                "slow query %.1f ms: %s", elapsed_ms, " ".join(statement.split())[:500]
            )


def _prepare_sqlite_file(settings: Settings) -> None:
    """SQLite creates a missing database file, not its directory: DATA_DIR is created for
    the default database (private to the service's user). A DATABASE_URL naming a file in a
    directory that does not exist is more likely a typo than a wish: SQLite says so.

    A new database file is created here, empty and 0600, before SQLite opens it: SQLite
    would make it with the umask's mode (0644: password and key hashes, every conversation,
    readable by all in a DATA_DIR the operator made 0755), and gives its -wal and -shm the
    database's mode. An existing file keeps the mode it has: its owner may have chosen it
    (0640 for a backup agent's group)."""
    if settings.embedded_database_file is not None:
        settings.data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    database = settings.sqlite_file
    url = make_url(settings.async_database_url)
    if database is None or str(url.database).startswith("file:") or "uri" in url.query:
        return  # in memory, or a `file:` URI whose parameters only the driver reads
    # Already there; or no directory, which SQLite reports when connecting.
    with contextlib.suppress(FileExistsError, FileNotFoundError):
        os.close(os.open(database, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600))


def create_engine(settings: Settings) -> tuple[AsyncEngine, SlowQueryRecorder]:
    url: str | URL = settings.async_database_url
    kwargs: dict[str, Any] = {}
    if settings.is_sqlite:
        _prepare_sqlite_file(settings)
        kwargs["connect_args"] = {"timeout": SQLITE_BUSY_TIMEOUT_MS / 1000}
        kwargs["pool_reset_on_return"] = None  # done by reset_on_return
        # Each connection is a thread and four PRAGMAs to open: the default pool (5 kept,
        # the rest closed on return) opened one for a chat in ten at 8 concurrent chats.
        # Last used first: its page cache is the warm one.
        kwargs.update(pool_size=16, max_overflow=16, pool_use_lifo=True)
        # Imported here: the aiosqlite dialect it builds on is ~10 ms that PostgreSQL skips.
        from ollama_web.core.sqlite_driver import one_trip_dbapi, reset_on_return

        kwargs["module"] = one_trip_dbapi()
    else:
        url, connect_args = asyncpg_url_and_arguments(settings.async_database_url)
        # A server that stops answering (a partition, a stuck host) must fail requests
        # within the bound, not hold them until TCP gives up: connecting, each statement
        # (asyncpg cancels it) and the wait for a pooled connection.
        bound = settings.database_timeout_seconds
        connect_args.setdefault("timeout", bound)
        connect_args["command_timeout"] = bound
        kwargs.update(connect_args=connect_args, pool_timeout=bound)
        kwargs.update(pool_size=10, max_overflow=20, pool_pre_ping=True, pool_recycle=1800)
    # Statement errors are logged; their parameters are users' text and credentials' hashes.
    engine = create_async_engine(url, hide_parameters=True, **kwargs)
    if settings.is_sqlite:
        event.listen(engine.sync_engine, "connect", _sqlite_pragmas)
        event.listen(engine.sync_engine.pool, "reset", reset_on_return)
    recorder = SlowQueryRecorder(settings.slow_query_ms)
    event.listen(engine.sync_engine, "before_cursor_execute", recorder.before)
    event.listen(engine.sync_engine, "after_cursor_execute", recorder.after)
    event.listen(engine.sync_engine, "handle_error", recorder.failed)
    return engine, recorder


def create_null_pool_engine(settings: Settings) -> AsyncEngine:
    """An engine for one-off command-line work (no pool left behind)."""
    url: str | URL = settings.async_database_url
    kwargs: dict[str, Any] = {}
    if settings.is_sqlite:
        _prepare_sqlite_file(settings)
        from ollama_web.core.sqlite_driver import aiosqlite_dbapi

        kwargs["module"] = aiosqlite_dbapi()
    else:
        url, kwargs["connect_args"] = asyncpg_url_and_arguments(settings.async_database_url)
    engine = create_async_engine(url, poolclass=NullPool, hide_parameters=True, **kwargs)
    if settings.is_sqlite:
        event.listen(engine.sync_engine, "connect", _sqlite_pragmas)
    return engine


_DATABASE_STACK = ("sqlalchemy.", "asyncpg.", "aiosqlite.", "ollama_web.core.sqlite")
# SQLite raises OperationalError for a statement that is wrong ("no such table", a syntax
# error) too: only these primary result codes say the file could not be used for now.
_SQLITE_OUTAGES = frozenset(
    {
        sqlite3.SQLITE_BUSY,
        sqlite3.SQLITE_LOCKED,
        sqlite3.SQLITE_NOMEM,
        sqlite3.SQLITE_READONLY,
        sqlite3.SQLITE_IOERR,
        sqlite3.SQLITE_FULL,
        sqlite3.SQLITE_CANTOPEN,
        sqlite3.SQLITE_PROTOCOL,
    }
)


def is_database_outage(exc: BaseException) -> bool:
    """Whether `exc` says the database could not be reached or used for now (refused,
    reset, timed out, locked, shutting down), not that a statement was wrong. The driver
    raises some of these as they are (`ConnectionResetError`, `TimeoutError`, asyncpg's
    connection errors): those are told by where they were raised."""
    if isinstance(exc, SATimeoutError):  # the pool had no connection to give in time
        return True
    if isinstance(exc, DBAPIError):
        code = getattr(exc.orig, "sqlite_errorcode", None)
        if code is not None and not exc.connection_invalidated:
            return code & 0xFF in _SQLITE_OUTAGES
        return exc.connection_invalidated or isinstance(exc, OperationalError | InterfaceError)
    if type(exc).__module__.startswith("asyncpg"):  # only connecting raises asyncpg's own
        return True
    if isinstance(exc, OSError):  # TimeoutError and ConnectionError among them
        modules = (frame.f_globals.get("__name__", "") for frame, _ in walk_tb(exc.__traceback__))
        return any(module.startswith(_DATABASE_STACK) for module in modules)
    return False


POSTGRES_FOREIGN_KEY_VIOLATION = "23503"
SQLITE_FOREIGN_KEY_VIOLATION = "SQLITE_CONSTRAINT_FOREIGNKEY"


def is_foreign_key_violation(exc: BaseException) -> bool:
    """Whether the database refused a row because a row it references does not exist (a
    unique or NOT NULL violation is not one). PostgreSQL names the constraint; SQLite says
    only "FOREIGN KEY constraint failed": which row was missing is for the caller to tell
    from what it wrote."""
    if not isinstance(exc, IntegrityError):
        return False
    cause = exc.orig
    return (
        getattr(cause, "sqlstate", None) == POSTGRES_FOREIGN_KEY_VIOLATION
        or getattr(cause, "sqlite_errorname", None) == SQLITE_FOREIGN_KEY_VIOLATION
    )


async def update_if(
    session: AsyncSession, row: Any, *conditions: ColumnElement[bool], **values: Any
) -> bool:
    """Write `values` to `row` (by its id) only where `conditions` still hold, in one
    UPDATE: of two requests that read the row and then both change it, one wins, and the
    other learns it lost (False) instead of writing over it. On success the row carries
    the values as written, with nothing left for the session to flush."""
    model = type(row)
    stmt = (
        update(model)
        .where(model.id == row.id, *conditions)
        .values(**values)
        .execution_options(synchronize_session=False)
    )
    if not getattr(await session.execute(stmt), "rowcount", 0):
        return False
    for name, value in values.items():
        set_committed_value(row, name, value)
    return True


async def flush_owned(session: AsyncSession) -> None:
    """Flush new rows whose one foreign key is their owner's `user_id`, the caller's. The
    only row such a flush can miss is the caller's account, deleted since the request was
    authenticated: 401, as the caller's next request gets, rather than the database's
    error. Any other refusal (a duplicate, say) is raised as it is."""
    try:
        await session.flush()
    except IntegrityError as exc:
        if is_foreign_key_violation(exc):
            raise AccountGoneError() from exc
        raise


def describe_database_error(exc: BaseException) -> str:
    """One line for a database failure: the driver's own error (SQLAlchemy's message would
    add the statement and its parameters, a password hash among them)."""
    cause = exc.orig if isinstance(exc, DBAPIError) and exc.orig is not None else exc
    return f"{type(cause).__name__}: {' '.join(str(cause).split())}"


class RefusalLog:
    """The log lines of a write (or read) that is tried again and again while the database
    refuses it: an outage (`is_database_outage`: a restart, a failover, which every running
    answer's checkpoints meet at once) is one warning until the work succeeds again, then one
    line that it did; another refusal (a bug, perhaps) logs its traceback the first time,
    then one line per repeat."""

    __slots__ = ("_logger", "_refused")

    def __init__(self, logger: logging.Logger) -> None:
        self._logger = logger
        self._refused = False

    def refused(self, exc: BaseException, what: str, *args: object) -> None:
        """`what % args`: the failure ("could not store the answer %s"), without its reason."""
        first = not self._refused
        self._refused = True
        reason = describe_database_error(exc)
        if is_database_outage(exc):
            if first:
                self._logger.warning(f"{what}: the database is unavailable (%s)", *args, reason)
        elif first:
            self._logger.error(what, *args, exc_info=exc)
        else:
            self._logger.warning(f"{what}, again: %s", *args, reason)

    def succeeded(self, what: str, *args: object) -> None:
        """The work went through; `what % args` is logged if it had been refused."""
        if self._refused:
            self._refused = False
            self._logger.info(what, *args)


def create_sessionmaker(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    return async_sessionmaker(engine, expire_on_commit=False, autoflush=False)


@asynccontextmanager
async def session_scope(
    sessionmaker: async_sessionmaker[AsyncSession],
) -> AsyncIterator[AsyncSession]:
    """Commit on success, roll back on error. Services and repositories only flush."""
    session = sessionmaker()
    try:
        yield session
    except BaseException:
        try:
            await session.rollback()
        finally:
            await asyncio.shield(session.close())
        raise
    await end_session(session)


async def end_session(session: AsyncSession) -> None:
    """Commit and close a request's session, skipping each step that has nothing to do: a
    session that never ran a statement nor held an object (an API-key request that only
    starts a chat) costs no trip into SQLAlchemy's greenlet."""
    try:
        if session.in_transaction() or session.new or session.dirty or session.deleted:
            await session.commit()
    except BaseException:
        await asyncio.shield(session.close())
        raise
    if session.identity_map or session.in_transaction():
        await asyncio.shield(session.close())
