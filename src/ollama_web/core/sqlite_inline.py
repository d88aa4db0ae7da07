"""The hot statements of the embedded database, run on the event loop's thread.

Through SQLAlchemy's async engine, one statement on SQLite costs ~0.3 ms of CPU here before
SQLite does any work: a pooled connection, greenlet switches, an execution context and its
events, a trip to aiosqlite's thread and a callback back into the loop (where, on a busy
loop, the answer waits its turn). Authentication looks up a key on every request, a chat
turn reads its conversation and messages (through the engine, ~2 ms of the turn's wait
under load) and a chat writes four short transactions, so for these `InlineSQLite` runs
the same SQLAlchemy-built statements, compiled once, on one sqlite3 connection of its own,
on the loop's thread. What remains is the parameters' conversion (the bind and result
processors SQLAlchemy applies) and SQLite's own work, ~20 µs for an indexed lookup or a
one-row write.

It never waits. The connection has no busy timeout and a write begins with
`BEGIN IMMEDIATE`. When the database is locked (by another process, or by a transaction of
this one on the driver thread), nothing is done: `InlineUnavailable` is raised, and the
caller takes SQLAlchemy's path, which waits on the driver thread. Nothing can interleave:
a transaction here runs from start to end without yielding to the loop. Automatic WAL
checkpoints are off, because a commit would run one with its fsyncs (10 to 30 ms) on the
loop. `sqlite_checkpoint.Checkpointer` runs them on the driver thread.

Use it only for statements with bounded work (lookups by a unique key, writes of a few
rows, reads that stop at a bound), built once: compiled forms are kept per statement
object.
"""

from __future__ import annotations

import logging
import sqlite3
import time
from collections.abc import Callable, Sequence
from contextlib import suppress
from dataclasses import dataclass
from typing import Any, cast

from sqlalchemy import Executable
from sqlalchemy.engine import Dialect
from sqlalchemy.exc import DBAPIError, SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.sql.elements import ClauseElement

from ollama_web.core.db import SlowQueryRecorder, describe_database_error

logger = logging.getLogger("ollama_web.db")

Processor = Callable[[Any], Any] | None
Steps = Sequence[tuple[Executable, Any]]
_MAX_COMPILED = 256  # statements built once are a few dozen; more means some are not
_READ_BATCH = 64  # rows a bounded read takes at a time before it checks its bounds


# No busy timeout (it would wait on the loop), no automatic checkpoints (they would run
# inside a commit, on the loop); the journal mode (WAL) is the database's own, set by the
# engine's connections.
_PRAGMAS = ("busy_timeout=0", "wal_autocheckpoint=0", "foreign_keys=ON", "synchronous=NORMAL")


class InlineUnavailable(Exception):
    """Nothing was done: the database is locked, or the statement needs SQLAlchemy's path."""


class _Commits:
    """Commits made here, which the checkpointer looks at (core/sqlite_checkpoint.py)."""

    count = 0


def inline_commits() -> int:
    """How many transactions the inline connections of this process have committed."""
    return _Commits.count


def _failure(exc: sqlite3.Error, sql: str, parameters: Any) -> Exception:
    """What to raise for `exc`: InlineUnavailable when the database is locked and waiting
    can cure it (SQLITE_BUSY and its kinds, not BUSY_SNAPSHOT; nothing was done), else the
    error as SQLAlchemy raises it (IntegrityError, OperationalError, ...)."""
    code = getattr(exc, "sqlite_errorcode", None)
    if code is not None and code & 0xFF == sqlite3.SQLITE_BUSY and code != 517:
        return InlineUnavailable("the database is locked")
    return DBAPIError.instance(sql, parameters, exc, sqlite3.Error, hide_parameters=True)


@dataclass(frozen=True, slots=True)
class _Compiled:
    statement: Executable
    compiled: SQLCompiler
    sql: str
    binds: tuple[tuple[str, Processor], ...]
    converters: tuple[tuple[int, Callable[[Any], Any]], ...]
    """The result columns SQLAlchemy converts (their positions and processors); the others,
    and every column of a statement without typed columns (text), are as read."""

    def parameters(self, values: dict[str, Any] | None) -> list[Any]:
        """The values in their positions, converted. InlineUnavailable when one is missing
        or cannot be converted: SQLAlchemy's path then raises its own error for it (a
        StatementError, as callers expect), not whatever the processor raised."""
        try:
            merged = self.compiled.construct_params(values)
            return [merged[name] if p is None else p(merged[name]) for name, p in self.binds]
        except Exception:
            raise InlineUnavailable("parameters SQLAlchemy must check") from None

    def row(self, raw: tuple[Any, ...]) -> tuple[Any, ...]:
        if not self.converters:
            return tuple(raw)
        row = list(raw)
        for index, processor in self.converters:
            row[index] = processor(row[index])
        return tuple(row)


def _prepared(statement: Executable, compiled: SQLCompiler, dialect: Dialect) -> _Compiled:
    """The statement's SQL with the processors SQLAlchemy applies to its parameters (in
    their positions) and to its result columns."""
    binds = tuple(
        (name, compiled.binds[name].type.dialect_impl(dialect).bind_processor(dialect))
        for name in compiled.positiontup or ()
    )
    columns = getattr(statement, "selected_columns", None) or ()
    processors = (c.type.dialect_impl(dialect).result_processor(dialect, None) for c in columns)
    converters = tuple((i, p) for i, p in enumerate(processors) if p is not None)
    return _Compiled(statement, compiled, compiled.string, binds, converters)


class InlineSQLite:
    """One sqlite3 connection, used only on the event loop's thread (sqlite3 checks that)."""

    def __init__(
        self, database: str, dialect: Dialect, slow_queries: SlowQueryRecorder | None = None
    ) -> None:
        self._database = database
        self._dialect = dialect
        self._slow_queries = slow_queries
        self._trace: Callable[[str], None] | None = None
        # Per statement object (held, so that its id stays its own) and parameter names; the
        # statement alone when it needs SQLAlchemy's path.
        self._compiled: dict[tuple[int, tuple[str, ...]], _Compiled | Executable] = {}
        self._opened: sqlite3.Connection | None = None
        self._closed = False

    @property
    def _connection(self) -> sqlite3.Connection:
        """Opened at first use: after the startup migration, which may create the file.
        Once closed (at shutdown), never again: callers take SQLAlchemy's path."""
        if self._opened is None:
            if self._closed:
                raise InlineUnavailable("the inline connection is closed")
            try:
                connection = sqlite3.connect(self._database, isolation_level=None)
            except sqlite3.Error as exc:
                raise _failure(exc, "(connect)", None) from None
            try:
                for pragma in _PRAGMAS:
                    connection.execute(f"PRAGMA {pragma}")
            except sqlite3.Error as exc:
                connection.close()
                raise _failure(exc, f"PRAGMA {pragma}", None) from None
            self._opened = connection
        return self._opened

    def trace(self, callback: Callable[[str], None] | None) -> None:
        """Have `callback` called with each statement's SQL once it has run (None: stop)."""
        self._trace = callback

    def close(self) -> None:
        self._closed = True
        if self._opened is not None:
            self._opened.close()
            self._opened = None

    def first(self, statement: Executable, values: dict[str, Any]) -> tuple[Any, ...] | None:
        """The first row of a query (its columns converted as SQLAlchemy would), or None."""
        compiled = self._compile(statement, tuple(values))
        parameters = compiled.parameters(values)
        connection = self._connection
        started = time.perf_counter()
        try:
            raw = connection.execute(compiled.sql, parameters).fetchone()
        except sqlite3.Error as exc:
            raise _failure(exc, compiled.sql, parameters) from None
        self._observe(compiled, started)
        return None if raw is None else compiled.row(raw)

    def read(
        self,
        queries: Sequence[tuple[Executable, dict[str, Any]]],
        *,
        max_rows: int,
        max_chars: int,
    ) -> list[Sequence[tuple[Any, ...]]]:
        """The rows of each query (columns converted as SQLAlchemy would), all read in one
        transaction: one snapshot of the database. Bounded: more than `max_rows` rows or
        `max_chars` characters of text in all raise InlineUnavailable as soon as they are
        seen, and so much is read through SQLAlchemy's path, where SQLite's work is done
        on the driver thread."""
        connection = self._connection
        results: list[Sequence[tuple[Any, ...]]] = []
        rows_left, chars_left = max_rows, max_chars
        sql, parameters = "BEGIN", None
        try:
            connection.execute(sql)
            for statement, values in queries:
                compiled = self._compile(statement, tuple(values))
                sql, parameters = compiled.sql, compiled.parameters(values)
                started = time.perf_counter()
                rows: list[tuple[Any, ...]] = []
                cursor = connection.execute(sql, parameters)
                while batch := cursor.fetchmany(_READ_BATCH):
                    rows_left -= len(batch)
                    chars_left -= sum([len(v) for raw in batch for v in raw if type(v) is str])
                    if rows_left < 0 or chars_left < 0:
                        raise InlineUnavailable("too much to read on the event loop's thread")
                    rows += batch
                self._observe(compiled, started)
                results.append([compiled.row(raw) for raw in rows] if compiled.converters else rows)
        except sqlite3.Error as exc:
            raise _failure(exc, sql, parameters) from None
        finally:
            if connection.in_transaction:
                connection.execute("ROLLBACK")  # it only read
        return results

    def write(self, steps: Steps) -> None:
        """Run `steps` (statement, parameters: a dict, a list of dicts, or None) in one
        committed transaction: all of them or, when an error is raised, none."""
        connection = self._connection
        try:
            try:
                connection.execute("BEGIN IMMEDIATE")
            except sqlite3.Error as exc:
                raise _failure(exc, "BEGIN IMMEDIATE", None) from None
            for statement, values in steps:
                self._execute(connection, statement, values)
            try:
                connection.execute("COMMIT")
            except sqlite3.Error as exc:
                raise _failure(exc, "COMMIT", None) from None
        except BaseException:
            if connection.in_transaction:
                connection.execute("ROLLBACK")
            raise
        _Commits.count += 1

    def probe_write(self) -> None:
        """Begin a write and roll it back, for /health. `BEGIN IMMEDIATE` alone succeeds on a
        file SQLite opened read-only; rewriting the header's user_version with its own value
        does not, and costs no I/O (the page is dropped by the rollback). InlineUnavailable
        when another writer holds the lock: that says nothing either way, and it never waits
        for it. Any other failure is raised as SQLAlchemy raises it."""
        connection = self._connection
        sql = "BEGIN IMMEDIATE"
        try:
            connection.execute(sql)
            sql = "PRAGMA user_version"
            version = int(connection.execute(sql).fetchone()[0])
            sql = f"PRAGMA user_version = {version}"
            connection.execute(sql)
        except sqlite3.Error as exc:
            raise _failure(exc, sql, None) from None
        finally:
            if connection.in_transaction:
                connection.execute("ROLLBACK")

    def _execute(self, connection: sqlite3.Connection, statement: Executable, values: Any) -> None:
        rows: list[dict[str, Any]] = values if isinstance(values, list) else [values or {}]
        compiled = self._compile(statement, tuple(rows[0]))
        parameters = [compiled.parameters(row) for row in rows]
        started = time.perf_counter()
        try:
            if len(parameters) == 1:
                connection.execute(compiled.sql, parameters[0])
            else:
                connection.executemany(compiled.sql, parameters)
        except sqlite3.Error as exc:
            raise _failure(exc, compiled.sql, parameters) from None
        self._observe(compiled, started)

    def _observe(self, compiled: _Compiled, started: float) -> None:
        if self._trace is not None:
            self._trace(compiled.sql)
        if self._slow_queries is not None:
            elapsed_ms = (time.perf_counter() - started) * 1000
            self._slow_queries.observe(compiled.sql, elapsed_ms)

    def _compile(self, statement: Executable, keys: tuple[str, ...]) -> _Compiled:
        key = (id(statement), keys)
        found = self._compiled.get(key)
        if isinstance(found, _Compiled):
            return found
        if found is not None:
            raise InlineUnavailable("Python-side defaults, RETURNING or expanded parameters")
        compiled = cast(ClauseElement, statement).compile(
            dialect=self._dialect, column_keys=list(keys)
        )
        assert isinstance(compiled, SQLCompiler)
        if len(self._compiled) >= _MAX_COMPILED:
            self._compiled.clear()
        if (
            compiled.insert_prefetch
            or compiled.update_prefetch
            or compiled.effective_returning
            or compiled.post_compile_params  # expanded when run: IN lists, literal values
            or compiled.literal_execute_params
        ):
            self._compiled[key] = statement
            raise InlineUnavailable("Python-side defaults, RETURNING or expanded parameters")
        found = self._compiled[key] = _prepared(statement, compiled, self._dialect)
        return found


async def first_row(
    session: AsyncSession,
    inline: InlineSQLite | None,
    statement: Executable,
    values: dict[str, Any],
) -> tuple[Any, ...] | None:
    """The first row of a query: inline when there is an inline connection and the database
    is not locked, else through the session."""
    if inline is not None:
        with suppress(InlineUnavailable):
            return inline.first(statement, values)
    row = (await session.execute(statement, values)).first()
    return None if row is None else tuple(row)


async def read_rows(
    session: AsyncSession,
    inline: InlineSQLite | None,
    queries: Sequence[tuple[Executable, dict[str, Any]]],
    *,
    max_rows: int,
    max_chars: int,
) -> list[Sequence[tuple[Any, ...]]]:
    """The rows of `queries` in one snapshot: inline (`InlineSQLite.read`, within its
    bounds) when there is an inline connection and the database allows it, else through
    the session, in its transaction."""
    if inline is not None:
        with suppress(InlineUnavailable):
            return inline.read(queries, max_rows=max_rows, max_chars=max_chars)
    return [(await session.execute(query, values)).all() for query, values in queries]


async def record_in_passing(
    session: AsyncSession,
    inline: InlineSQLite | None,
    statement: Executable,
    values: dict[str, Any],
    what: str,
) -> None:
    """A throttled bookkeeping write of a request that may only read (a key's use, a
    session's activity). Inline, in a transaction of its own. Otherwise in the request's
    transaction: one of its own would hold a second pooled connection while the request
    holds one, and a burst of requests would then exhaust the pool and deadlock. A database
    that refuses the inline write (a full disk, a read-only file) must not fail the request:
    that is logged (`what` says what was not recorded) and a later request records it."""
    if inline is not None:
        try:
            inline.write([(statement, values)])
            return
        except InlineUnavailable:
            pass  # locked: through the request's transaction, which waits its turn
        except SQLAlchemyError as exc:
            logger.warning("could not record %s: %s", what, describe_database_error(exc))
            return
    await session.execute(statement, values)


def open_inline(engine: AsyncEngine, slow_queries: SlowQueryRecorder) -> InlineSQLite | None:
    """The inline connection for an engine on a SQLite file (None for anything else,
    including a `file:` URI, whose parameters only SQLAlchemy's driver applies)."""
    url = engine.url
    database = url.database
    if engine.dialect.name != "sqlite" or not database or database == ":memory:":
        return None
    if database.startswith("file:") or "uri" in url.query:
        return None
    return InlineSQLite(database, engine.dialect, slow_queries)
