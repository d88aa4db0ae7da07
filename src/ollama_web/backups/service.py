"""`DatabaseBackup`: take, list, verify, prune and restore database backups.

    from pathlib import Path
    from ollama_web.backups import DatabaseBackup

    backup = DatabaseBackup()                  # settings from the environment / .env
    info = backup.create_backup()              # None when the database has no users yet
    backup.restore_backup(Path("backups/ollama_web_backup_20240101_120000.db.gz"), force=True)

Everything here is synchronous (the command line uses it directly; the server runs it in a
worker thread). SQLite backups use SQLite's online backup API and gzip; PostgreSQL backups
use pg_dump when it is installed, otherwise backups are external (`mode == "external"`).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import sqlite3
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from ollama_web.backups import names, postgres, sqlite
from ollama_web.backups.errors import (
    BackupBusyError,
    BackupDirectoryError,
    BackupError,
    BackupsExternalError,
)
from ollama_web.backups.locks import BACKUP_LOCK_NAME, LockBusyError, holding
from ollama_web.backups.models import BackupInfo
from ollama_web.core.config import Settings

logger = logging.getLogger("ollama_web.backups")

BACKUP_LOCK_TIMEOUT_SECONDS = 120.0
ORPHAN_AGE_SECONDS = 3600.0
HASH_CHUNK = 1024 * 1024
CLOCK_SKEW = timedelta(minutes=5)
"""A backup dated later than now by more than this was taken while the clock was ahead (a
VM resumed with a wrong time, an NTP step): it is not the newest backup."""

MODE_SQLITE, MODE_PG_DUMP, MODE_EXTERNAL = "sqlite", "pg_dump", "external"


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(HASH_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def write_atomically(path: Path, text: str) -> None:
    """Replace `path` with `text`, a private file (0600), flushed to disk first."""
    temporary = path.with_name(f"{names.TEMP_PREFIX}{uuid.uuid4().hex}")
    sqlite.create_private(temporary)
    try:
        temporary.write_text(text, encoding="utf-8")
        sqlite.fsync_file(temporary)
        os.replace(temporary, path)
    except BaseException:  # a full disk, say: no empty temporary file left behind for good
        temporary.unlink(missing_ok=True)
        raise


def _claim_name(directory: Path, created_at: datetime, extension: str) -> Path:
    """Reserve a free name (O_EXCL); `_N` is added when the second is already taken.

    N continues after the highest suffix present for that second, so names keep their
    chronological order even after pruning freed a lower one.
    """
    base = names.format_name(created_at, extension)
    stamp = names.sort_key(base)[0]
    taken = [
        names.sort_key(path.name)[1] + 1
        for path in directory.iterdir()
        if names.is_backup_name(path.name) and names.sort_key(path.name)[0] == stamp
    ]
    for collision in range(max(taken, default=0), 100_000):
        candidate = directory / names.format_name(created_at, extension, collision)
        try:
            fd = os.open(candidate, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            continue
        os.close(fd)
        return candidate
    raise BackupError("no free backup name in this second")


class DatabaseBackup:
    def __init__(self, settings: Settings | None = None) -> None:
        self.settings = settings or Settings()
        self.directory = self.settings.backup_dir

    # What kind of database -------------------------------------------------------------
    @property
    def mode(self) -> str:
        if self.settings.is_sqlite:
            return MODE_SQLITE
        return MODE_PG_DUMP if postgres.tools_available() else MODE_EXTERNAL

    @property
    def database_path(self) -> Path:
        """The SQLite database file."""
        database = self.settings.sqlite_file
        if database is None:
            raise BackupError("an in-memory SQLite database cannot be backed up")
        return database

    @property
    def extension(self) -> str:
        return names.SQLITE_EXTENSION if self.settings.is_sqlite else names.POSTGRES_EXTENSION

    def has_users(self) -> bool:
        if self.settings.is_sqlite:
            return sqlite.has_users(self.database_path)
        return postgres.has_users(self.settings.async_database_url)

    # Taking backups --------------------------------------------------------------------
    def create_backup(
        self,
        reason: str = "manual",
        *,
        require_users: bool = True,
        lock_timeout: float | None = None,
        prune: bool = True,
        unless_unchanged: bool = False,
    ) -> BackupInfo | None:
        """Take a backup now; None (nothing written) when the database has no users yet.
        Then apply the retention, unless `prune` is False (a restore's safety backup: the
        retention could delete the very backup being restored).

        `unless_unchanged` (the startup and shutdown backups): when the database is the
        same as in the newest backup (SQLite: the same bytes; PostgreSQL: the same dump but
        for the time it was made), nothing is written and that backup is returned. A server
        restarted in a loop (its port taken, say: a start and a stop backup every few
        seconds) otherwise filled BACKUP_MAX_COUNT with copies of one database within
        minutes, and the retention deleted every older backup."""
        if self.mode == MODE_EXTERNAL:
            missing = postgres.not_installed(postgres.missing_tools())
            raise BackupsExternalError(f"PostgreSQL backups are external: {missing} on this host.")
        try:
            empty = require_users and not self.has_users()
        except (sqlite3.Error, postgres.PostgresBackupError) as exc:
            raise BackupError(f"the database cannot be read: {exc}") from exc
        if empty:
            logger.info("no backup (%s): the database has no users yet", reason)
            return None
        timeout = BACKUP_LOCK_TIMEOUT_SECONDS if lock_timeout is None else lock_timeout
        try:
            self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
            with holding(self.directory / BACKUP_LOCK_NAME, timeout=timeout):
                info = self._create_locked(reason, unless_unchanged)
                if prune:
                    self._prune_locked(keep=info.name)
        except LockBusyError:
            raise BackupBusyError("another backup is in progress; try again shortly") from None
        except OSError as exc:  # the backup directory, a full disk: said as a backup error
            raise BackupError(f"the backup failed: {exc}") from exc
        return info

    def _create_locked(self, reason: str, unless_unchanged: bool) -> BackupInfo:
        started = time.perf_counter()
        created_at = datetime.now(UTC).replace(microsecond=0)
        work = self.directory / f"{names.TEMP_PREFIX}{uuid.uuid4().hex}"
        try:
            try:
                sqlite.create_private(work)  # pg_dump writes into it, keeping the mode
                content = self._write_archive(work)
            except (sqlite3.Error, sqlite.SQLiteBackupError, postgres.PostgresBackupError) as exc:
                raise BackupError(f"the backup failed: {exc}") from exc
            newest = newest_backup(self.list_backups()) if unless_unchanged else None
            if content is not None and newest is not None and newest.content_sha256 == content:
                logger.info("no new backup (%s): the database is as in %s", reason, newest.name)
                return newest
            digest = sha256_file(work)
            final = _claim_name(self.directory, created_at, self.extension)
            os.replace(work, final)
        finally:
            for leftover in (work, work.with_suffix(".db")):
                leftover.unlink(missing_ok=True)
        info = BackupInfo(
            name=final.name,
            path=final,
            created_at=created_at,
            size_bytes=final.stat().st_size,
            sha256=digest,
            duration_ms=round((time.perf_counter() - started) * 1000, 1),
            reason=reason[:100],
            kind=self.mode,
            content_sha256=content,
        )
        write_atomically(names.metadata_path(final), json.dumps(info.metadata(), indent=1))
        write_atomically(names.checksum_path(final), f"{digest}  {final.name}\n")
        sqlite.fsync_directory(self.directory)
        logger.info(
            "backup %s taken (%s, %d bytes, %.0f ms)",
            info.name,
            reason,
            info.size_bytes,
            info.duration_ms,
        )
        return info

    def _write_archive(self, work: Path) -> str | None:
        """Write the archive into `work`; returns the sha256 of its database (see
        `BackupInfo.content_sha256`) when it is known."""
        content = None
        if not self.settings.is_sqlite:
            postgres.dump(self.settings.async_database_url, work)
            problems = postgres.archive_problems(work)
            if not problems:
                content = postgres.content_digest(work)
        else:
            copy = work.with_suffix(".db")
            sqlite.online_copy(self.database_path, copy)
            problems = sqlite.integrity_problems(copy)
            if not problems:
                content = sqlite.gzip_file(copy, work)
        if problems:
            raise BackupError("the new backup failed its check: " + "; ".join(problems[:5]))
        return content

    # Listing and pruning ---------------------------------------------------------------
    def list_backups(self) -> list[BackupInfo]:
        """Complete backups (archive and checksum file present, readable or not), newest
        first. What lists, finds or reports backups goes through here: a BACKUP_DIR that
        cannot be read (its mode, another owner) is BackupDirectoryError, said as such, not
        an OSError that callers would each have to catch (the routes answered 500, the
        commands a traceback)."""
        try:
            return self._list_backups()
        except OSError as exc:
            raise BackupDirectoryError(self.directory, exc) from exc

    def _list_backups(self) -> list[BackupInfo]:
        if not self.directory.is_dir():
            return []
        found = []
        for path in self.directory.iterdir():
            if path.is_symlink() or not names.is_backup_name(path.name):
                continue  # a link could point anywhere; backups are plain files
            if path.is_file() and names.checksum_path(path).is_file():
                info = BackupInfo.load(path)
                if info is not None:
                    found.append(info)
        return sorted(found, key=lambda info: names.sort_key(info.name), reverse=True)

    def find(self, name: str) -> BackupInfo | None:
        """A listed backup by name; anything else (traversal, unknown names) is None."""
        if names.inside(self.directory, name) is None:
            return None
        return next((info for info in self.list_backups() if info.name == name), None)

    def prune(self) -> list[str]:
        with holding(self.directory / BACKUP_LOCK_NAME, timeout=BACKUP_LOCK_TIMEOUT_SECONDS):
            return self._prune_locked(keep=None)

    def _prune_locked(self, keep: str | None) -> list[str]:
        """Apply BACKUP_RETENTION_DAYS (0 = no age limit) and BACKUP_MAX_COUNT."""
        backups = self.list_backups()
        now = datetime.now(UTC)
        retention = self.settings.backup_retention_days
        removed = []
        for index, info in enumerate(backups):
            too_many = index >= self.settings.backup_max_count
            too_old = retention > 0 and now - info.created_at > timedelta(days=retention)
            if (too_many or too_old) and info.name != keep:
                try:
                    info.delete()
                except OSError as exc:  # the backup just taken stands; the next prune retries
                    logger.warning("cannot remove the old backup %s: %s", info.name, exc)
                    continue
                removed.append(info.name)
        try:
            self.remove_orphans()
        except OSError as exc:  # DATA_DIR 0300, say: the backup is taken and checked all the same
            logger.warning("cannot remove unfinished backup files: %s", exc)
        if removed:
            logger.info("pruned %d old backup(s): %s", len(removed), ", ".join(removed))
        return removed

    def remove_orphans(self) -> None:
        """Files older than an hour that a killed process left unfinished: a backup's in
        BACKUP_DIR, and a backup unpacked beside the SQLite database by a restore or a
        verification (as large as the database). Run after each backup and at each start."""
        cutoff = time.time() - ORPHAN_AGE_SECONDS
        for path in _files(self.directory):
            unfinished = path.name.startswith(names.TEMP_PREFIX) or (
                names.is_backup_name(path.name) and not names.checksum_path(path).exists()
            )
            if unfinished and _older(path, cutoff):
                path.unlink(missing_ok=True)
        if self.settings.sqlite_file is None:
            return
        for path in _files(self.settings.sqlite_file.parent):
            if path.name.startswith(names.UNPACKED_PREFIX) and _older(path, cutoff):
                path.unlink(missing_ok=True)

    # Verification ----------------------------------------------------------------------
    def verify(self, path: Path) -> list[str]:
        """[] when the archive matches its recorded sha256 and its database checks out;
        BackupCheckError when it could not be checked (no room to unpack it)."""
        from ollama_web.backups.restore import verify_archive

        return verify_archive(self, path)

    def restore_backup(self, path: Path | str, force: bool = False) -> dict[str, Any]:
        """Restore a backup (the server must be stopped); see `ollama_web.backups.restore`."""
        from ollama_web.backups.restore import restore

        return restore(self, Path(path), force=force)

    def free_bytes(self) -> int | None:
        try:
            return shutil.disk_usage(self.directory).free
        except OSError:
            return None


def newest_backup(backups: list[BackupInfo]) -> BackupInfo | None:
    """The newest of `backups` (newest first) not dated in the future."""
    latest = datetime.now(UTC) + CLOCK_SKEW
    return next((info for info in backups if info.created_at <= latest), None)


def _files(directory: Path) -> list[Path]:
    """The plain files in `directory` (none when it is missing)."""
    try:
        return [path for path in directory.iterdir() if path.is_file() and not path.is_symlink()]
    except FileNotFoundError:
        return []


def _older(path: Path, cutoff: float) -> bool:
    try:
        return path.stat().st_mtime < cutoff
    except FileNotFoundError:  # its process finished meanwhile
        return False
