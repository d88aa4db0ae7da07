"""File locks (flock) that coordinate servers, workers, backups and restores on one host.

- The server lock, `DATA_DIR/ollama-web.lock`: every running server process holds it
  *shared* for its whole life; `restore` takes it *exclusive* without waiting, so it refuses
  while any server uses the data directory, and a server cannot start during a restore.
- The database lock, `<database file>.server.lock` beside a SQLite file (its real path,
  links resolved): held the same way, so a restore that names the file through
  `DATABASE_URL` with another `DATA_DIR` (or another spelling of the path) still finds the
  server that uses it.
- The backup lock, `BACKUP_DIR/.backup.lock`: exclusive around taking a backup and pruning,
  so workers, the CLI and the scheduler never write backups at the same time.
- The scheduler lock, `BACKUP_DIR/.scheduler.lock`: held by one worker, the one that takes
  the startup, shutdown and periodic backups.

flock locks belong to the open file and vanish when the process dies, so a crash never
leaves a stale lock behind. They are advisory and local to one host (a PostgreSQL database
shared by servers on other hosts cannot be protected this way; see OPERATIONS.md).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ollama_web.core.config import Settings

SERVER_LOCK_NAME = "ollama-web.lock"
BACKUP_LOCK_NAME = ".backup.lock"
SCHEDULER_LOCK_NAME = ".scheduler.lock"
DATABASE_LOCK_SUFFIX = ".server.lock"
MIGRATION_LOCK_SUFFIX = ".migration-lock"  # beside a SQLite database: one upgrade at a time


class LockBusyError(Exception):
    """The lock is held by someone else."""


class FileLock:
    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def acquire(self, *, shared: bool = False, timeout: float = 0.0) -> None:
        """Take the lock, waiting up to `timeout` seconds; LockBusyError if it stays held."""
        if self._fd is not None:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        mode = (fcntl.LOCK_SH if shared else fcntl.LOCK_EX) | fcntl.LOCK_NB
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(fd, mode)
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    os.close(fd)
                    raise LockBusyError(str(self.path)) from None
                time.sleep(0.05)
            else:
                self._fd = fd
                return

    def alone(self) -> bool:
        """Whether no other process holds this lock (held shared here): taken exclusive for
        an instant, then shared again. LockBusyError if another took it in that instant.

        Linux converts a flock by dropping the lock held, then taking the new one: an
        exclusive request refused (another holds it shared) leaves this process holding
        nothing. The shared lock is taken again then, or a server that started beside
        another would run without it: a server starting later would take itself for its
        database's only one (and interrupt this one's running answers), and a restore
        naming the database from another DATA_DIR would not see it."""
        fd = self._fd
        if fd is None:
            raise RuntimeError("take the lock before asking whether it is held alone")
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            alone = True
        except BlockingIOError:
            alone = False
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:  # dropped, and taken exclusive by another meanwhile
            self._fd = None
            os.close(fd)
            raise LockBusyError(str(self.path)) from None
        return alone

    def release(self) -> None:
        if self._fd is not None:
            fd, self._fd = self._fd, None
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)


@contextlib.contextmanager
def holding(path: Path, *, shared: bool = False, timeout: float = 0.0) -> Iterator[FileLock]:
    lock = FileLock(path)
    lock.acquire(shared=shared, timeout=timeout)
    try:
        yield lock
    finally:
        lock.release()


def server_lock_path(data_dir: Path) -> Path:
    return data_dir / SERVER_LOCK_NAME


def database_lock_path(database: Path) -> Path:
    """The lock keyed on a SQLite database file itself: beside its real path."""
    real = database.resolve()
    return real.with_name(real.name + DATABASE_LOCK_SUFFIX)


def server_lock_paths(settings: Settings) -> list[Path]:
    """Every lock a server holds shared (and a restore takes exclusive) for `settings`."""
    paths = [server_lock_path(settings.data_dir)]
    if settings.sqlite_file is not None:
        paths.append(database_lock_path(settings.sqlite_file))
    return paths
