"""aiosqlite under SQLAlchemy, one trip to its thread per statement.

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

Server-side cursors (`stream_results`) keep SQLAlchemy's own cursor class.
"""

from __future__ import annotations

import sqlite3
from collections import deque
from collections.abc import Sequence
from typing import Any

import aiosqlite
from sqlalchemy.dialects.sqlite.aiosqlite import (
    AsyncAdapt_aiosqlite_connection,
    AsyncAdapt_aiosqlite_cursor,
    AsyncAdapt_aiosqlite_dbapi,
)
from sqlalchemy.util.concurrency import await_

Description = tuple[tuple[Any, ...], ...] | None
_COMMIT_NEXT = "_ollama_web_commit_next"
THREAD_STOP_SECONDS = 1.0


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


def _run(
    connection: sqlite3.Connection, operation: str, parameters: Any, many: bool, commit: bool
) -> tuple[Description, list[Any], int, int | None]:
    cursor = connection.cursor()
    try:
        if many:
            cursor.executemany(operation, parameters)
        else:
            cursor.execute(operation, () if parameters is None else parameters)
        description = cursor.description
        rows = cursor.fetchall() if description else []
        if commit:
            connection.commit()
        return description, rows, cursor.rowcount, cursor.lastrowid
    finally:
        cursor.close()


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
            description, rows, rowcount, lastrowid = await driver._execute(
                _run, driver._conn, operation, parameters, many, commit
            )
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

    def rollback(self) -> None:
        if self._connection.in_transaction:
            super().rollback()


class AiosqliteDBAPI(AsyncAdapt_aiosqlite_dbapi):
    """SQLAlchemy's aiosqlite DBAPI, which waits for aiosqlite's thread to end after a
    failed connect.

    aiosqlite queues its thread's stop with a future nobody awaits; had the event loop
    closed first (a CLI command exiting on the error), the thread would die posting to it,
    with a traceback on stderr. The stop is the next item on the thread's queue and needs
    nothing from the loop, so the join is short."""

    def connect(self, *arg: Any, **kw: Any) -> AsyncAdapt_aiosqlite_connection:
        connection = aiosqlite.connect(*arg, **kw)
        connection._thread.daemon = True  # as SQLAlchemy's own connect does
        try:
            opened: Any = await_(connection)
        except BaseException:
            connection._thread.join(timeout=THREAD_STOP_SECONDS)
            raise
        return AsyncAdapt_aiosqlite_connection(self, opened)


class OneTripDBAPI(AiosqliteDBAPI):
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


def aiosqlite_dbapi() -> AiosqliteDBAPI:
    """The plain adapter (SQLAlchemy's own cursors), for one-off command-line engines."""
    return AiosqliteDBAPI(aiosqlite, sqlite3)
