"""SQLite: online copies through SQLite's backup API, checks, and the file swap of a restore.

The copy runs in one step (`pages=-1`) inside a read transaction, so it is a consistent
snapshot of every transaction committed before it began, taken while writers keep writing
(WAL mode lets them). A live database file is never copied with file tools.
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import os
import sqlite3
import zlib
from collections.abc import Callable, Collection, Iterator
from pathlib import Path

COPY_CHUNK = 1024 * 1024
BUSY_TIMEOUT_SECONDS = 30.0


class SQLiteBackupError(Exception):
    pass


def _connect_readonly(path: Path) -> sqlite3.Connection:
    return sqlite3.connect(
        f"{path.resolve().as_uri()}?mode=ro", uri=True, timeout=BUSY_TIMEOUT_SECONDS
    )


def _connect_private(path: Path) -> sqlite3.Connection:
    """A file nobody else uses (a copy being checked): no locking, no WAL files created."""
    return sqlite3.connect(f"{path.resolve().as_uri()}?immutable=1", uri=True)


def has_users(database: Path) -> bool:
    """True when the database has at least one user (False for no file or no table)."""
    if not database.exists():
        return False
    connection = _connect_readonly(database)
    try:
        row = connection.execute("SELECT EXISTS (SELECT 1 FROM users)").fetchone()
    except sqlite3.OperationalError as exc:
        if "no such table" in str(exc):
            return False
        raise
    finally:
        connection.close()
    return bool(row and row[0])


def online_copy(database: Path, destination: Path) -> None:
    """Copy a live database into `destination` (a new file) with the backup API."""
    if not database.exists():
        raise SQLiteBackupError(f"database file {database} does not exist")
    create_private(destination)
    source = _connect_readonly(database)
    target = sqlite3.connect(destination)
    try:
        source.backup(target, pages=-1)
    finally:
        target.close()
        source.close()


def integrity_problems(database: Path) -> list[str]:
    """The output of `PRAGMA integrity_check` on a copy unless it is just "ok" (then [])."""
    return _check(_connect_private, database, "PRAGMA integrity_check")


def is_sound(database: Path) -> bool:
    """Whether a live database (its WAL included) opens and passes `PRAGMA quick_check`."""
    return not _check(_connect_readonly, database, "PRAGMA quick_check")


def _check(connect: Callable[[Path], sqlite3.Connection], database: Path, pragma: str) -> list[str]:
    try:
        connection = connect(database)
        try:
            rows = connection.execute(pragma).fetchall()
        finally:
            connection.close()
    except sqlite3.DatabaseError as exc:
        return [f"not a usable SQLite database: {exc}"]
    messages = [str(row[0]) for row in rows]
    return [] if messages == ["ok"] else messages


def tables(database: Path) -> set[str]:
    connection = _connect_private(database)
    try:
        rows = connection.execute("SELECT name FROM sqlite_master WHERE type = 'table'")
        return {str(row[0]) for row in rows}
    finally:
        connection.close()


_TABLES = (
    "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite^_%' ESCAPE '^'"
    " ORDER BY name"
)
_COLUMNS = "SELECT name FROM pragma_table_info(?)"


def schema(
    connection: sqlite3.Connection, only: Collection[str] | None = None
) -> dict[str, frozenset[str]]:
    """The column names of each table (not views, nor SQLite's own `sqlite_*`); with `only`,
    of those of them that exist. A table outside `only` is never opened: an extra virtual
    table of a module this SQLite lacks could not be."""
    names = [str(row[0]) for row in connection.execute(_TABLES)]
    return {
        name: frozenset(str(row[0]) for row in connection.execute(_COLUMNS, (name,)))
        for name in names
        if only is None or name in only
    }


def stored_schema(database: Path, only: Collection[str]) -> dict[str, frozenset[str]]:
    """`schema` of a copy, for the tables in `only` it has."""
    connection = _connect_private(database)
    try:
        return schema(connection, only)
    except sqlite3.DatabaseError as exc:
        raise SQLiteBackupError(f"the schema cannot be read: {exc}") from exc
    finally:
        connection.close()


def stored_revisions(database: Path) -> list[str] | None:
    """The rows of a copy's alembic_version (its schema revision); None without the table."""
    connection = _connect_private(database)
    try:
        rows = connection.execute("SELECT version_num FROM alembic_version").fetchall()
    except sqlite3.DatabaseError as exc:
        if "no such table" in str(exc):
            return None
        raise SQLiteBackupError(f"the schema revision cannot be read: {exc}") from exc
    finally:
        connection.close()
    return [str(row[0]) for row in rows]


def gzip_file(source: Path, destination: Path) -> str:
    """Compress `source` into `destination`; returns the sha256 of `source`'s bytes (an
    unchanged database copies to the same bytes: `BackupInfo.content_sha256`)."""
    create_private(destination)
    digest = hashlib.sha256()
    with source.open("rb") as raw, gzip.open(destination, "wb", compresslevel=6) as packed:
        while chunk := raw.read(COPY_CHUNK):
            digest.update(chunk)
            packed.write(chunk)
        packed.flush()
    fsync_file(destination)
    return digest.hexdigest()


def gunzip_file(source: Path, destination: Path) -> None:
    """Decompress. A damaged (or unreadable) archive raises SQLiteBackupError; an OSError is
    the destination's (its filesystem full or read-only, its directory not writable), and
    says nothing about the archive."""
    create_private(destination)
    with destination.open("wb") as raw:
        for chunk in _decompressed(source):
            raw.write(chunk)
    fsync_file(destination)


def _decompressed(source: Path) -> Iterator[bytes]:
    try:
        with gzip.open(source, "rb") as packed:
            while chunk := packed.read(COPY_CHUNK):
                yield chunk
    except (OSError, EOFError, zlib.error) as exc:  # a damaged stream is a zlib.error
        raise SQLiteBackupError(f"the archive cannot be decompressed: {exc}") from exc


def create_private(path: Path) -> None:
    """Create `path` empty (or empty it) with mode 0600, whatever the umask: what is written
    into it next keeps that mode (a database copy, an archive, its sidecars)."""
    os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600))
    os.chmod(path, 0o600)


def fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_directory(path: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def checkpoint_and_close(database: Path) -> None:
    """Fold the WAL into the main file before it is replaced (no server is running)."""
    if not database.exists():
        return
    connection = sqlite3.connect(database, timeout=BUSY_TIMEOUT_SECONDS)
    try:
        connection.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    finally:
        connection.close()


def replace_database(new_file: Path, database: Path) -> None:
    """Put `new_file` in place of `database`, dropping the old WAL and shared-memory files."""
    checkpoint_and_close(database)
    for suffix in ("-wal", "-shm", "-journal"):
        with contextlib.suppress(FileNotFoundError):
            database.with_name(database.name + suffix).unlink()
    os.replace(new_file, database)
    fsync_directory(database.parent)
