"""WAL checkpoints of the embedded database, on the driver thread, after the inline
connection's commits (core/sqlite_inline.py turns SQLite's automatic ones off: they would run
inside a commit, with their fsyncs, on the event loop)."""

from __future__ import annotations

import asyncio
import logging
from contextlib import suppress

from sqlalchemy.exc import OperationalError, SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from ollama_web.core.db import SQLITE_BUSY_TIMEOUT_MS
from ollama_web.core.sqlite_inline import inline_commits

logger = logging.getLogger("ollama_web.db")

WAL_RESTART_FRAMES = 1000
"""A WAL this many frames long (~4 MiB of pages; SQLite's own automatic checkpoint mark) is
emptied by a `TRUNCATE` checkpoint."""
TRUNCATE_BACKLOG_FRAMES = 256
"""The most frames a `TRUNCATE` copies while writers wait: when the passive checkpoint left
more (a burst of commits outran it), the WAL is emptied at a later checkpoint."""


class Checkpointer:
    """WAL checkpoints after the inline connection's commits: one at most every `interval`
    seconds, on the driver thread, and only after something was committed.

    - `PASSIVE` first: it copies what no reader still needs, and never waits for a lock.
    - Under a steady stream of commits a passive checkpoint never catches up with the
      last one, so the WAL would never start over and would grow without end. Once it
      holds `restart_frames`, a `TRUNCATE` checkpoint empties it. It blocks writers while
      it copies the few frames the passive one left and syncs the database (inline writes
      meanwhile take SQLAlchemy's path, which waits), but it never waits itself: busy,
      it is tried again next time.
    - Once everything is copied, the WAL is started over here, by rewriting the header's
      `user_version` with its own value. The first write to an emptied WAL writes its
      header and syncs it; done here, that fsync is not the next inline commit's, on the
      loop.
    """

    def __init__(
        self, engine: AsyncEngine, interval: float = 1.0, restart_frames: int = WAL_RESTART_FRAMES
    ) -> None:
        self._engine = engine
        self._interval = interval
        self._restart_frames = restart_frames
        self._stop = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    async def checkpoint(self) -> None:
        async with self._engine.connect() as connection:
            busy, frames, copied = await _wal_checkpoint(connection, "PASSIVE")
            truncate = frames >= self._restart_frames and frames - copied <= TRUNCATE_BACKLOG_FRAMES
            if not (truncate or _all_copied(busy, frames, copied)):
                return  # frames left behind, in a WAL still short: next time
            await connection.exec_driver_sql("PRAGMA busy_timeout=0")
            try:
                if truncate:
                    busy, frames, copied = await _wal_checkpoint(connection, "TRUNCATE")
                if _all_copied(busy, frames, copied):
                    with suppress(OperationalError):  # another writer came first
                        await _restart_wal(connection)
            finally:
                await connection.exec_driver_sql(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        """Stop after the checkpoint under way, if any (its connection back in the pool);
        none starts once stopping."""
        self._stop.set()
        if self._task is not None:
            await self._task

    async def _run(self) -> None:
        seen = inline_commits()
        while True:
            with suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), self._interval)
            if self._stop.is_set():
                return
            if inline_commits() == seen:
                continue
            seen = inline_commits()
            try:
                await self.checkpoint()
            except SQLAlchemyError:
                logger.warning("WAL checkpoint failed", exc_info=True)


async def _wal_checkpoint(connection: AsyncConnection, mode: str) -> tuple[int, int, int]:
    """(busy, frames in the WAL, frames copied to the database)."""
    result = await connection.exec_driver_sql(f"PRAGMA wal_checkpoint({mode})")
    busy, frames, copied = (int(value) for value in tuple(result.one()))
    return busy, frames, copied


def _all_copied(busy: int, frames: int, copied: int) -> bool:
    """A checkpoint's result: every frame of the WAL is in the database (-1: not in WAL mode)."""
    return not busy and frames == copied >= 0


async def _restart_wal(connection: AsyncConnection) -> None:
    """A write of one unchanged page: it starts a WAL whose frames are all copied over (when
    no reader still uses them) from its beginning."""
    version = (await connection.exec_driver_sql("PRAGMA user_version")).scalar_one()
    await connection.exec_driver_sql(f"PRAGMA user_version = {int(version)}")
