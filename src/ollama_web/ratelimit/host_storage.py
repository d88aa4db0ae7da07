"""A `limits` storage the processes of one host share without Redis: a SQLite file in
DATA_DIR.

The failed-login throttle (`auth.throttle`) counts on one (`login-failures.db`) when
REDIS_URL is not set, so that the workers of `serve --workers N` lock a username or an
address out together: counted in each process, N workers let N times LOGIN_MAX_FAILURES
guesses through. The request rate limiter counts on another (`request-limits.db`) when
WORKERS > 1 and REDIS_URL is not set, for the same reason: each process counting on its
own, a client spread over N workers would get N budgets. With one worker it counts in
memory, which costs less. Each storage does its work in a thread of its own (one
transaction at a time: they are short), never on the event loop, nor in the default
executor, where a backup's compression could hold every request behind it.

Counters (`incr`: the checks in progress) and moving-window entries (`acquire_entry`: the
failures, the requests) behave as limits' MemoryStorage's. Each operation that writes is
one IMMEDIATE transaction, so processes that count at once each see a different count.
Entries are dropped once out of their window. A file that cannot be used is an error for
`FallbackStorage`, which then counts in memory and says so.
"""

from __future__ import annotations

import asyncio
import os
import sqlite3
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TypeVar

from limits.aio.storage import MovingWindowSupport, Storage

T = TypeVar("T")

FILE_NAME = "login-failures.db"
REQUESTS_FILE_NAME = "request-limits.db"
BUSY_SECONDS = 5.0
_SCHEMA = """
CREATE TABLE IF NOT EXISTS counters (key TEXT PRIMARY KEY, value INTEGER NOT NULL,
                                     expires REAL NOT NULL);
CREATE TABLE IF NOT EXISTS entries (key TEXT NOT NULL, at REAL NOT NULL, expires REAL NOT NULL);
CREATE INDEX IF NOT EXISTS entries_key_at ON entries (key, at);
CREATE INDEX IF NOT EXISTS entries_expires ON entries (expires);
"""
_LOCKED = (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED)


class HostStorage(Storage, MovingWindowSupport):
    STORAGE_SCHEME = None

    def __init__(self, path: Path) -> None:
        super().__init__()
        self.path = path
        self._connection: sqlite3.Connection | None = None
        self._lock = threading.Lock()
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="host-limits")

    @property
    def base_exceptions(self) -> type[Exception] | tuple[type[Exception], ...]:
        return sqlite3.Error

    def _connect(self) -> sqlite3.Connection:
        """The process's connection, opened on first use. Opening sets the file up (WAL, the
        tables); processes doing so at once on a new file can meet a lock SQLite will not
        wait for (the switch to WAL), so opening is tried again until BUSY_SECONDS."""
        if self._connection is None:
            deadline = time.monotonic() + BUSY_SECONDS
            while True:
                try:
                    self._connection = self._open()
                    break
                except sqlite3.OperationalError as error:
                    if error.sqlite_errorcode & 0xFF not in _LOCKED or time.monotonic() > deadline:
                        raise
                    time.sleep(0.005)
        return self._connection

    def _open(self) -> sqlite3.Connection:
        connection = sqlite3.connect(
            self.path, timeout=BUSY_SECONDS, isolation_level=None, check_same_thread=False
        )
        try:
            connection.execute("PRAGMA journal_mode=WAL")
            connection.execute("PRAGMA synchronous=NORMAL")
            connection.executescript(_SCHEMA)
            os.chmod(self.path, 0o600)
        except BaseException:
            connection.close()
            raise
        return connection

    async def _run(
        self, work: Callable[[sqlite3.Connection, float], T], *, write: bool = True
    ) -> T:
        """`work(connection, now)` in one transaction (IMMEDIATE when it writes: the write
        lock from its start), in the storage's thread."""

        def run() -> T:
            with self._lock:
                connection = self._connect()
                connection.execute("BEGIN IMMEDIATE" if write else "BEGIN")
                try:
                    result = work(connection, time.time())
                except BaseException:
                    connection.execute("ROLLBACK")
                    raise
                connection.execute("COMMIT")
                return result

        return await asyncio.get_running_loop().run_in_executor(self._executor, run)

    async def incr(self, key: str, expiry: float, amount: int = 1) -> int:
        def incr(db: sqlite3.Connection, now: float) -> int:
            db.execute("DELETE FROM counters WHERE key = ? AND expires <= ?", (key, now))
            db.execute(
                "INSERT INTO counters VALUES (?, ?, ?) "
                "ON CONFLICT (key) DO UPDATE SET value = value + excluded.value",
                (key, amount, now + expiry),
            )
            (value,) = db.execute("SELECT value FROM counters WHERE key = ?", (key,)).fetchone()
            return int(value)

        return await self._run(incr)

    async def get(self, key: str) -> int:
        def get(db: sqlite3.Connection, now: float) -> int:
            row = db.execute(
                "SELECT value FROM counters WHERE key = ? AND expires > ?", (key, now)
            ).fetchone()
            return int(row[0]) if row else 0

        return await self._run(get, write=False)

    async def get_expiry(self, key: str) -> float:
        def expiry(db: sqlite3.Connection, now: float) -> float:
            row = db.execute("SELECT expires FROM counters WHERE key = ?", (key,)).fetchone()
            return float(row[0]) if row else now

        return await self._run(expiry, write=False)

    async def clear(self, key: str) -> None:
        def clear(db: sqlite3.Connection, now: float) -> None:
            db.execute("DELETE FROM counters WHERE key = ?", (key,))
            db.execute("DELETE FROM entries WHERE key = ?", (key,))

        await self._run(clear)

    async def reset(self) -> int | None:
        def reset(db: sqlite3.Connection, now: float) -> int:
            counters = db.execute("DELETE FROM counters").rowcount
            return counters + db.execute("DELETE FROM entries").rowcount

        return await self._run(reset)

    async def check(self) -> bool:
        await self._run(lambda db, now: db.execute("SELECT 1").fetchone(), write=False)
        return True

    async def acquire_entry(self, key: str, limit: int, expiry: int, amount: int = 1) -> bool:
        allowed, _, _ = await self.acquire_with_window(key, limit, expiry, amount)
        return allowed

    async def get_moving_window(self, key: str, limit: int, expiry: int) -> tuple[float, int]:
        return await self._run(lambda db, now: _window(db, now, key, expiry), write=False)

    async def acquire_with_window(
        self, key: str, limit: int, expiry: int, amount: int = 1
    ) -> tuple[bool, float, int]:
        """`acquire_entry`, then `get_moving_window`, in one transaction: a request's one
        trip to the file (and the window it reports is the one its entry went into)."""

        def acquire(db: sqlite3.Connection, now: float) -> tuple[bool, float, int]:
            db.execute("DELETE FROM entries WHERE expires <= ?", (now,))
            oldest, count = _window(db, now, key, expiry)
            if count + amount > limit:
                return False, oldest, count
            db.executemany(
                "INSERT INTO entries VALUES (?, ?, ?)", [(key, now, now + expiry)] * amount
            )
            return True, (oldest if count else now), count + amount

        return await self._run(acquire)

    async def aclose(self) -> None:
        def close() -> None:
            with self._lock:
                if self._connection is not None:
                    self._connection.close()
                    self._connection = None

        # The thread stays (idle; it ends with the storage): a late call opens the file again.
        await asyncio.get_running_loop().run_in_executor(self._executor, close)


def _window(db: sqlite3.Connection, now: float, key: str, expiry: float) -> tuple[float, int]:
    """The oldest entry of `key` in its window and how many there are ((now, 0): none)."""
    oldest, count = db.execute(
        "SELECT min(at), count(*) FROM entries WHERE key = ? AND at > ?", (key, now - expiry)
    ).fetchone()
    return (float(oldest), int(count)) if count else (now, 0)
