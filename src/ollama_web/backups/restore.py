"""Verify a backup and restore it — from the command line only, with the server stopped.

Order of a restore, nothing replaced until every check passed:
1. take the server locks exclusively, the one in DATA_DIR and (SQLite) the one beside the
   database file (refuse if any server process holds either: it is running);
2. the archive's sha256 must equal its sidecar `<name>.sha256` (tampering, truncation);
3. the archive must unpack into a database that passes `PRAGMA integrity_check` and holds
   the users table (PostgreSQL: `pg_restore --list` must read it), at one schema revision
   this version knows (an older one is upgraded by `migrate`; a newer one is refused), with
   every table (SQLite: and column) our migrations create up to it (`schema`);
4. an existing database with users is only replaced with `force=True` (`--force`);
5. a safety backup of the current database is taken (listed like any other backup, and
   without applying the retention, which could delete the backup being restored); with
   `--force`, a SQLite database that cannot be backed up (damaged) is set aside instead,
   renamed beside itself with its -wal and -shm;
6. the file is swapped in (SQLite: WAL folded, old WAL/SHM removed, atomic rename;
   PostgreSQL: `pg_restore --clean --single-transaction`).
"""

from __future__ import annotations

import contextlib
import hmac
import logging
import os
import sqlite3
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ollama_web.backups import names, postgres, schema, sqlite
from ollama_web.backups.errors import (
    BackupCheckError,
    BackupError,
    ForceRequiredError,
    RestoreRefusedError,
)
from ollama_web.backups.locks import LockBusyError, holding, server_lock_paths
from ollama_web.backups.service import sha256_file
from ollama_web.migrations.runner import known_revisions, script_head

if TYPE_CHECKING:
    from ollama_web.backups.service import DatabaseBackup

logger = logging.getLogger("ollama_web.backups")


def checksum_problems(path: Path) -> list[str]:
    """What is wrong with the archive's sha256 ([] when it matches its sidecar).
    BackupCheckError when the archive or its sidecar is there but cannot be read (its mode,
    another owner): that says nothing about the backup."""
    sidecar = names.checksum_path(path)
    try:
        recorded = sidecar.read_text(encoding="utf-8").split()
    except FileNotFoundError:
        return [f"no checksum file {sidecar.name} next to the backup"]
    except OSError as exc:
        raise _cannot_read(sidecar, exc) from exc
    except UnicodeDecodeError:
        return [f"the checksum file {sidecar.name} is not text: it was altered or damaged"]
    if not recorded:
        return [f"the checksum file {sidecar.name} is empty"]
    try:
        actual = sha256_file(path)
    except OSError as exc:
        raise _cannot_read(path, exc) from exc
    if not hmac.compare_digest(recorded[0].lower(), actual):
        return ["sha256 mismatch: the backup was altered or damaged since it was taken"]
    return []


@contextlib.contextmanager
def unpacked(backup: DatabaseBackup, path: Path) -> Iterator[Path]:
    """The backup as a database file in the database's directory (removed afterwards).
    BackupCheckError when it cannot be written there: the check cannot run, which is no
    reason to call the backup damaged (an operator could delete a sound one for it)."""
    if not backup.settings.is_sqlite:
        yield path
        return
    target_dir = backup.database_path.parent
    work = target_dir / f"{names.UNPACKED_PREFIX}{uuid.uuid4().hex}.db"
    try:
        try:
            target_dir.mkdir(parents=True, exist_ok=True)
            sqlite.gunzip_file(path, work)
        except OSError as exc:
            raise _not_checked(
                "unpacking it beside the database failed",
                exc,
                "make room there, or make it writable, and try again",
            ) from exc
        yield work
    finally:
        # Not unlinked when missing: that fails on a read-only filesystem. os.path.exists,
        # not Path.exists, which raises where the directory cannot be searched (and then
        # masked the BackupCheckError with a traceback): nothing of ours can be there.
        if os.path.exists(work):
            work.unlink()


def _cannot_read(file: Path, exc: OSError) -> BackupCheckError:
    """The error for a backup (or its sidecar) that this user cannot read."""
    return _not_checked(f"{file.name} cannot be read", exc, "make it readable, and try again")


def _cannot_run(tool: str, reason: str) -> BackupCheckError:
    """The error for a PostgreSQL client tool that is missing or will not start."""
    remedy = "install PostgreSQL's client tools on this host, and try again"
    return _not_checked(f"{tool} cannot be run", reason, remedy)


def _not_checked(what_failed: str, exc: OSError | str, remedy: str) -> BackupCheckError:
    """A check that could not run, in the OS's words without the path they carry (the
    route logs the whole error; a backup's name is no secret)."""
    reason = exc if isinstance(exc, str) else exc.strerror or type(exc).__name__
    return BackupCheckError(
        f"the backup could not be checked, which says nothing about it: {what_failed} "
        f"({reason}); {remedy}",
        details={"reason": reason},
    )


def content_problems(backup: DatabaseBackup, database: Path) -> list[str]:
    if not backup.settings.is_sqlite:
        try:
            return _archive_problems(database)
        except postgres.ToolUnavailableError as exc:
            raise _cannot_run(exc.tool, exc.reason) from exc
    problems = sqlite.integrity_problems(database)
    if not problems and "users" not in sqlite.tables(database):
        problems = ["the backup does not hold an ollama-web database (no users table)"]
    if problems:
        return problems
    revisions = sqlite.stored_revisions(database)
    problems = revision_problems(revisions)
    if problems or revisions is None:
        return problems
    return schema.sqlite_problems(database, revisions[0])


def _archive_problems(archive: Path) -> list[str]:
    try:
        tables = postgres.archive_tables(archive)
    except postgres.ToolUnavailableError:
        raise
    except postgres.PostgresBackupError as exc:
        return [str(exc)]
    if "users" not in tables:
        return [postgres.NO_USERS_TABLE]
    revisions = postgres.archive_revisions(archive)
    problems = revision_problems(revisions)
    if problems or revisions is None:
        return problems
    return schema.postgres_problems(tables, revisions[0])


def revision_problems(revisions: list[str] | None) -> list[str]:
    """A backup must be at one schema revision this version knows: an older one is upgraded
    by `migrate`; nothing here would start on a newer one (nor on a database without one)."""
    if revisions is None:
        return ["the backup does not hold an ollama-web database (no alembic_version table)"]
    if len(revisions) != 1:
        return [
            f"the backup records {len(revisions)} schema revisions in alembic_version "
            f"({', '.join(revisions)}) where ollama-web keeps one"
        ]
    if revisions[0] not in known_revisions():
        return [
            f"the backup is at schema revision {revisions[0]}, which this version of "
            f"ollama-web does not know (its newest is {script_head()}): it was made by a "
            "newer version; restore it with that version, or choose a backup made by this one"
        ]
    return []


def verify_archive(backup: DatabaseBackup, path: Path) -> list[str]:
    """Every problem found with a backup ([] when it is sound); BackupCheckError when the
    check could not run."""
    if not path.is_file():
        return [f"{path} is not a file"]
    problems = checksum_problems(path)
    if problems:
        return problems
    try:
        with unpacked(backup, path) as database:
            return content_problems(backup, database)
    except (sqlite.SQLiteBackupError, postgres.PostgresBackupError) as exc:
        return [str(exc)]


def _refuse_if_not_forced(backup: DatabaseBackup, force: bool) -> None:
    if force:
        return
    try:
        has_users = backup.has_users()
    except (sqlite3.Error, postgres.PostgresBackupError) as exc:
        if not backup.settings.is_sqlite:  # nothing to set aside: its safety backup would fail
            raise RestoreRefusedError(
                f"the current database cannot be read ({exc}); check DATABASE_URL and that "
                "the PostgreSQL server answers, then try again"
            ) from exc
        raise ForceRequiredError(
            f"the current database cannot be read ({exc})", "set it aside and restore"
        ) from exc
    if has_users:
        raise ForceRequiredError(
            "the current database has users", "replace it (a safety backup of it is taken first)"
        )


def _safety_backup(backup: DatabaseBackup, force: bool) -> str | None:
    if backup.settings.is_sqlite and not backup.database_path.exists():
        return None
    try:
        info = backup.create_backup("pre-restore safety backup", require_users=False, prune=False)
    except (BackupError, sqlite.SQLiteBackupError, postgres.PostgresBackupError) as exc:
        sqlite_file = backup.settings.is_sqlite
        if force and sqlite_file and not sqlite.is_sound(backup.database_path):
            return _set_aside(backup.database_path, exc)
        # A sound database whose backup failed for where it goes (BACKUP_DIR full, read-only
        # or missing) is not set aside: that is no file `restore` could bring back.
        hint = "; the current database is sound: make BACKUP_DIR usable and run it again"
        raise RestoreRefusedError(
            f"the safety backup of the current database failed: {exc}"
            + (hint if force and sqlite_file else "")
        ) from exc
    return info.name if info else None


def _set_aside(database: Path, why: Exception) -> str:
    """A database that cannot be backed up because it is damaged (the usual reason to
    restore) is kept as it is, renamed beside itself with its -wal and -shm, so that
    --force can still restore over it."""
    stamp = datetime.now(UTC).strftime("%Y%m%d_%H%M%S")
    kept = database.with_name(f"{database.name}.set-aside-{stamp}-{uuid.uuid4().hex[:6]}")
    for suffix in ("", "-wal", "-shm"):
        source = database.with_name(database.name + suffix)
        if source.exists():
            os.replace(source, kept.with_name(kept.name + suffix))
    logger.warning("the current database could not be backed up (%s); set aside as %s", why, kept)
    return str(kept)


def _refuse_without_tools() -> None:
    """pg_restore checks the backup and restores it (without it the check cannot run), psql
    looks for users, pg_dump takes the safety backup."""
    missing = postgres.missing_tools()
    if "pg_restore" in missing:
        raise _cannot_run("pg_restore", "not installed")
    if missing:
        raise RestoreRefusedError(
            f"{postgres.not_installed(missing)} on this host (a restore needs pg_dump, "
            "pg_restore and psql): install PostgreSQL's client tools"
        )


def restore(backup: DatabaseBackup, path: Path, *, force: bool) -> dict[str, Any]:
    """Restore `path` over the configured database. RestoreRefusedError changes nothing,
    nor does BackupCheckError (the backup could not be checked)."""
    if not backup.settings.is_sqlite:
        _refuse_without_tools()
    with contextlib.ExitStack() as locks:
        for lock in server_lock_paths(backup.settings):
            try:
                locks.enter_context(holding(lock, shared=False, timeout=0))
            except LockBusyError:
                raise RestoreRefusedError(
                    f"a server is using this database (it holds {lock}); stop every server "
                    "process and run the restore again"
                ) from None
            except OSError as exc:  # its directory not writable: no restore could be either
                reason = exc.strerror or type(exc).__name__
                raise RestoreRefusedError(
                    f"the lock {lock} cannot be taken ({reason}); run the restore as the "
                    "user the server runs as"
                ) from exc
        return _restore_locked(backup, path, force)


def _restore_locked(backup: DatabaseBackup, path: Path, force: bool) -> dict[str, Any]:
    if not path.is_file():
        raise RestoreRefusedError(f"{path} is not a file")
    problems = checksum_problems(path)
    if problems:
        raise RestoreRefusedError("; ".join(problems))
    try:
        with unpacked(backup, path) as database:
            problems = content_problems(backup, database)
            if problems:
                raise RestoreRefusedError("the backup failed its check: " + "; ".join(problems[:5]))
            _refuse_if_not_forced(backup, force)
            safety = _safety_backup(backup, force)
            if backup.settings.is_sqlite:
                sqlite.replace_database(database, backup.database_path)
            else:
                postgres.restore(backup.settings.async_database_url, database)
    except sqlite.SQLiteBackupError as exc:
        raise RestoreRefusedError(str(exc)) from None
    except postgres.PostgresBackupError as exc:
        raise RestoreRefusedError(f"{exc}; the database is unchanged") from None
    logger.warning("database restored from %s (safety backup: %s)", path.name, safety or "none")
    return {"restored_from": str(path), "safety_backup": safety}
