"""aiosqlite under SQLAlchemy: one trip to its thread per statement, or none.

aiosqlite runs each sqlite3 call on its own thread, and SQLAlchemy's adapter makes one call
per DBAPI step: create a cursor, execute, fetch the rows, close the cursor. Each is a round
trip between the event loop and that thread (a queue put, a thread wake-up, a callback back
into the loop): four for a SELECT, three for an INSERT. This adapter runs the whole
statement — cursor, execute, fetch, close — as one function on aiosqlite's thread, and keeps
what SQLAlchemy reads afterwards (description, rowcount, lastrowid, the rows) in a small
holder, and a commit or rollback with no transaction open (a read-only request) takes no
trip at all. A transaction's last statement can carry its commit on the same trip
(`commit_with_next_statement`); the commit SQLAlchemy sends after it then finds no
transaction open. Everything else is SQLAlchemy's aiosqlite dialect as is; it is plugged in as the
engine's DBAPI module (`create_async_engine(..., module=one_trip_dbapi())`).

Short statements can skip the thread altogether (`core.db.inline_statements`): a trip costs the
loop more than an indexed lookup or a one-row write itself (~20 µs), and on a loaded loop
its answer waits in the ready queue. They run on the loop's thread and never wait there for
a lock: the pool's connections have no busy timeout, and a statement that finds the
database locked is run again on the driver thread, which waits as SQLite's own busy handler
would (`_run`). Automatic WAL checkpoints are off for the same reason (a commit would run
one, with its fsyncs: 10 to 30 ms): `Checkpointer` runs them on the driver thread.

Server-side cursors (`stream_results`) keep SQLAlchemy's own cursor class.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import time
from collections import deque
from collections.abc import Iterator, Sequence
from contextlib import suppress
from typing import Any

import aiosqlite
from sqlalchemy.dialects.sqlite.aiosqlite import (
    AsyncAdapt_aiosqlite_connection,
    AsyncAdapt_aiosqlite_cursor,
    AsyncAdapt_aiosqlite_dbapi,
)
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncEngine

from ollama_web.core.db import INLINE, SQLITE_BUSY_TIMEOUT_MS

logger = logging.getLogger("ollama_web.db")

Description = tuple[tuple[Any, ...], ...] | None
_COMMIT_NEXT = "_ollama_web_commit_next"
_ON_THREAD = "_ollama_web_on_thread"  # trips sent to the driver thread and not yet run

BUSY_TIMEOUT_SECONDS = SQLITE_BUSY_TIMEOUT_MS / 1000
# The sleeps of SQLite's own busy handler (sqliteDefaultBusyCallback), in seconds.
_BUSY_SLEEPS = (0.001, 0.002, 0.005, 0.01, 0.015, 0.02, 0.025, 0.025, 0.025, 0.05, 0.05, 0.1)


class _Commits:
    """Commits made through the pool's connections (what `Checkpointer` looks at)."""

    count = 0


def commit_with_next_statement(driver_connection: Any, commit: bool = True) -> None:
    """Have the next statement on this aiosqlite connection commit on its own trip (call it
    before a transaction's last statement), or (`commit=False`) take the request back."""
    if isinstance(driver_connection, aiosqlite.Connection):
        setattr(driver_connection, _COMMIT_NEXT, commit)


class _Outcome:
    """What the statement left for SQLAlchemy to read (it stands in for the DBAPI cursor)."""

    __slots__ = ("arraysize", "description", "lastrowid", "rowcount")

    def __init__(self) -> None:
        self.description: Description = None
        self.rowcount = -1
        self.lastrowid: int | None = None
        self.arraysize = 1

    def close(self) -> None:
        """Nothing to release: the sqlite3 cursor was closed on aiosqlite's thread."""


def _locked(exc: sqlite3.OperationalError) -> bool:
    """SQLITE_BUSY and its kinds that waiting can cure (not BUSY_SNAPSHOT: a transaction
    whose snapshot is stale must start again)."""
    code = getattr(exc, "sqlite_errorcode", None)
    return code is not None and code & 0xFF == sqlite3.SQLITE_BUSY and code != 517


def _step(
    connection: sqlite3.Connection, operation: str, parameters: Any, many: bool
) -> tuple[Description, list[Any], int, int | None]:
    cursor = connection.cursor()
    try:
        if many:
            cursor.executemany(operation, parameters)
        else:
            cursor.execute(operation, () if parameters is None else parameters)
        description = cursor.description
        rows = cursor.fetchall() if description else []
        return description, rows, cursor.rowcount, cursor.lastrowid
    finally:
        cursor.close()


def _commit(connection: sqlite3.Connection) -> None:
    connection.commit()
    _Commits.count += 1


def _run(
    connection: sqlite3.Connection, operation: str, parameters: Any, many: bool, commit: bool
) -> tuple[Description, list[Any], int, int | None]:
    """The statement on the driver thread: while the database is locked, it sleeps and tries
    again (a statement that found it locked did nothing), up to BUSY_TIMEOUT_SECONDS."""
    deadline = time.monotonic() + BUSY_TIMEOUT_SECONDS
    for sleep in _sleeps():
        try:
            result = _step(connection, operation, parameters, many)
            break
        except sqlite3.OperationalError as exc:
            if not _locked(exc) or time.monotonic() + sleep > deadline:
                raise
        time.sleep(sleep)
    if commit:
        _commit(connection)
    return result


def _sleeps() -> Iterator[float]:
    yield from _BUSY_SLEEPS
    while True:
        yield _BUSY_SLEEPS[-1]


async def _on_thread(
    driver: Any, operation: str, parameters: Any, many: bool, commit: bool
) -> tuple[Description, list[Any], int, int | None]:
    """`_run` on the driver thread. Counted until it has run there (even when the caller
    was cancelled first), so that no statement runs inline on the connection meanwhile."""

    def statement() -> tuple[Description, list[Any], int, int | None]:
        try:
            return _run(driver._conn, operation, parameters, many, commit)
        finally:
            setattr(driver, _ON_THREAD, getattr(driver, _ON_THREAD) - 1)

    setattr(driver, _ON_THREAD, getattr(driver, _ON_THREAD, 0) + 1)
    result: tuple[Description, list[Any], int, int | None] = await driver._execute(statement)
    return result


class OneTripCursor(AsyncAdapt_aiosqlite_cursor):
    __slots__ = ()
    _awaitable_cursor_close = False

    def _make_new_cursor(self, connection: Any) -> Any:
        return _Outcome()

    def _aenter_cursor(self, cursor: Any) -> Any:
        return cursor

    async def _statement(self, operation: Any, parameters: Any, many: bool) -> None:
        driver: Any = self._connection  # aiosqlite.Connection; `_execute` is untyped
        commit = getattr(driver, _COMMIT_NEXT, False)
        if commit:
            setattr(driver, _COMMIT_NEXT, False)
        async with self._adapt_connection._execute_mutex:
            result = None
            if INLINE.get() and not getattr(driver, _ON_THREAD, 0):
                try:
                    result = _step(driver._conn, operation, parameters, many)
                except sqlite3.OperationalError as exc:
                    if not _locked(exc):
                        raise
                else:
                    if commit:
                        _commit(driver._conn)
            if result is None:  # not inline, or the database was locked
                result = await _on_thread(driver, operation, parameters, many, commit)
        description, rows, rowcount, lastrowid = result
        outcome: _Outcome = self._cursor  # type: ignore[assignment]
        outcome.description = description
        outcome.rowcount = rowcount
        outcome.lastrowid = lastrowid
        if description:
            self._rows = deque(rows)

    async def _execute_async(self, operation: Any, parameters: Any) -> Any:
        await self._statement(operation, parameters, False)

    async def _executemany_async(self, operation: Any, seq_of_parameters: Sequence[Any]) -> Any:
        await self._statement(operation, seq_of_parameters, True)


class OneTripConnection(AsyncAdapt_aiosqlite_connection):
    __slots__ = ()
    _cursor_cls = OneTripCursor

    # sqlite3 begins a transaction only before a write, so a request that only read has
    # none to end; sqlite3 would make its commit or rollback a no-op anyway, after the trip.
    def commit(self) -> None:
        if self._connection.in_transaction:
            super().commit()
            _Commits.count += 1

    def rollback(self) -> None:
        if self._connection.in_transaction:
            super().rollback()


class OneTripDBAPI(AsyncAdapt_aiosqlite_dbapi):
    def connect(self, *arg: Any, **kw: Any) -> AsyncAdapt_aiosqlite_connection:
        adapted = super().connect(*arg, **kw)
        adapted.__class__ = OneTripConnection
        return adapted


def reset_on_return(dbapi_connection: Any, _record: Any, state: Any) -> None:
    """Reset a connection going back to the pool: roll back only if a transaction is open.

    The pool's default is an unconditional rollback, which for aiosqlite is one more trip to
    its thread after every committed transaction. sqlite3 knows whether a transaction is
    open (`in_transaction`, readable from any thread); a connection returned mid-transaction
    (an error path) is still rolled back.
    """
    if state.terminate_only:
        return
    driver = dbapi_connection.driver_connection
    commit_with_next_statement(driver, False)  # a request left by a failed statement
    if driver.in_transaction:
        dbapi_connection.rollback()


def one_trip_dbapi() -> OneTripDBAPI:
    return OneTripDBAPI(aiosqlite, sqlite3)


class Checkpointer:
    """Passive WAL checkpoints for an engine whose connections make none of their own: one
    at most every `interval` seconds, on the driver thread, and only after something was
    committed. Passive: it copies what no reader still needs and never waits for a lock."""

    def __init__(self, engine: AsyncEngine, interval: float = 1.0) -> None:
        self._engine = engine
        self._interval = interval
        self._stop = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    async def checkpoint(self) -> None:
        async with self._engine.connect() as connection:
            await connection.exec_driver_sql("PRAGMA wal_checkpoint(PASSIVE)")

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        """Stop after the checkpoint under way, if any (its connection back in the pool)."""
        self._stop.set()
        if self._task is not None:
            await self._task

    async def _run(self) -> None:
        seen = _Commits.count
        while not self._stop.is_set():
            with suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), self._interval)
            if _Commits.count == seen:
                continue
            seen = _Commits.count
            try:
                await self.checkpoint()
            except SQLAlchemyError:
                logger.warning("WAL checkpoint failed", exc_info=True)
