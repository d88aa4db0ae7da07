"""Engine and session factory. One request = one transaction (see `session_scope`)."""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from contextvars import ContextVar
from typing import TYPE_CHECKING, Any

from sqlalchemy import event
from sqlalchemy.engine import Connection, ExecutionContext
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)
from sqlalchemy.pool import NullPool

from ollama_web.core.config import Settings

if TYPE_CHECKING:
    from ollama_web.core.sqlite_driver import Checkpointer

logger = logging.getLogger("ollama_web.db")
slow_query_logger = logging.getLogger("ollama_web.db.slow")

SQLITE_BUSY_TIMEOUT_MS = 5000
INLINE: ContextVar[bool] = ContextVar("ollama_web_sqlite_inline", default=False)


@contextmanager
def inline_statements() -> Iterator[None]:
    """Run the SQLite statements of this block on the event loop's thread, not the driver's
    (see core/sqlite_driver.py). For statements with bounded work only (lookups by key,
    writes of a few rows): the loop does nothing else while one runs. It changes nothing
    for PostgreSQL.
    """
    token = INLINE.set(True)
    try:
        yield
    finally:
        INLINE.reset(token)


_PRAGMAS = ("journal_mode=WAL", "foreign_keys=ON", "synchronous=NORMAL")


def _run_pragmas(dbapi_connection: Any, pragmas: tuple[str, ...]) -> None:
    cursor = dbapi_connection.cursor()
    for pragma in pragmas:
        cursor.execute(f"PRAGMA {pragma}")
    cursor.close()


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    _run_pragmas(dbapi_connection, (*_PRAGMAS, f"busy_timeout={SQLITE_BUSY_TIMEOUT_MS}"))


def _pooled_sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    """The server's connections (see core/sqlite_driver.py): no busy timeout, since a
    statement run on the event loop's thread must not wait there (the driver thread waits
    instead), and no automatic checkpoints (`Checkpointer` runs them)."""
    _run_pragmas(dbapi_connection, (*_PRAGMAS, "busy_timeout=0", "wal_autocheckpoint=0"))


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
        elapsed_ms = (time.perf_counter() - starts.pop()) * 1000
        if elapsed_ms >= self.threshold_ms:
            self.count += 1
            slow_query_logger.warning(
                "slow query %.1f ms: %s", elapsed_ms, " ".join(statement.split())[:500]
            )


def create_engine(settings: Settings) -> tuple[AsyncEngine, SlowQueryRecorder]:
    url = settings.async_database_url
    kwargs: dict[str, Any] = {}
    if settings.is_sqlite:
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        # Statements may run on the event loop's thread (`inline_statements`), one at a time.
        kwargs["connect_args"] = {"timeout": 0, "check_same_thread": False}
        kwargs["pool_reset_on_return"] = None  # done by reset_on_return
        # Each connection is a thread and four PRAGMAs to open: the default pool (5 kept,
        # the rest closed on return) opened one for a chat in ten at 8 concurrent chats.
        # Last used first: its page cache is the warm one.
        kwargs.update(pool_size=16, max_overflow=16, pool_use_lifo=True)
        # Imported here: the aiosqlite dialect it builds on is ~10 ms that PostgreSQL skips.
        from ollama_web.core.sqlite_driver import one_trip_dbapi, reset_on_return

        kwargs["module"] = one_trip_dbapi()
    else:
        kwargs.update(pool_size=10, max_overflow=20, pool_pre_ping=True, pool_recycle=1800)
    engine = create_async_engine(url, **kwargs)
    if settings.is_sqlite:
        event.listen(engine.sync_engine, "connect", _pooled_sqlite_pragmas)
        event.listen(engine.sync_engine.pool, "reset", reset_on_return)
    recorder = SlowQueryRecorder(settings.slow_query_ms)
    event.listen(engine.sync_engine, "before_cursor_execute", recorder.before)
    event.listen(engine.sync_engine, "after_cursor_execute", recorder.after)
    return engine, recorder


def start_checkpoints(engine: AsyncEngine, settings: Settings) -> Checkpointer | None:
    """The WAL checkpoints the pool's SQLite connections do not make (None elsewhere)."""
    if not settings.is_sqlite:
        return None
    from ollama_web.core.sqlite_driver import Checkpointer

    checkpointer = Checkpointer(engine)
    checkpointer.start()
    return checkpointer


def create_null_pool_engine(settings: Settings) -> AsyncEngine:
    """An engine for one-off command-line work (no pool left behind)."""
    engine = create_async_engine(settings.async_database_url, poolclass=NullPool)
    if settings.is_sqlite:
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        event.listen(engine.sync_engine, "connect", _sqlite_pragmas)
    return engine


def create_sessionmaker(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    return async_sessionmaker(engine, expire_on_commit=False, autoflush=False)


@asynccontextmanager
async def session_scope(
    sessionmaker: async_sessionmaker[AsyncSession],
) -> AsyncIterator[AsyncSession]:
    """Commit on success, roll back on error. Services and repositories only flush."""
    async with sessionmaker() as session:
        try:
            yield session
        except BaseException:
            await session.rollback()
            raise
        else:
            await session.commit()
