"""Errors of the backup domain (HTTP codes for the routes, plain failures for the CLI)."""

from __future__ import annotations

from pathlib import Path

from ollama_web.core.errors import AppError, ConflictError, NotFoundError
from ollama_web.core.startup import DatabaseUnusableError


class BackupError(AppError):
    """A backup could not be taken or read (503: the server is fine, the backup is not)."""

    status_code = 503
    code = "BACKUP_FAILED"


class BackupCheckError(BackupError):
    """A backup could not be checked: there was no room, or no write access, where it is
    unpacked (beside the database), or the backup (or its sidecar) cannot be read. That
    says nothing about the backup, sound or not."""

    code = "BACKUP_CHECK_FAILED"


class BackupDirectoryError(BackupError):
    """BACKUP_DIR cannot be read (its mode, another owner): no backup can be listed, found
    or checked until that is fixed. The message, which clients see, is in the OS's words
    without the path; `str()` (for the log and the command line) names the directory."""

    code = "BACKUP_DIR_UNAVAILABLE"

    def __init__(self, directory: Path, exc: OSError) -> None:
        self.directory = directory
        self.reason = exc.strerror or type(exc).__name__
        super().__init__(
            f"the backup directory cannot be read: {self.reason}", details={"reason": self.reason}
        )

    def __str__(self) -> str:
        return f"the backup directory {self.directory} cannot be read: {self.reason}"


class BackupBusyError(BackupError):
    """Another backup holds the lock: nothing failed, try again shortly."""


class BackupsExternalError(ConflictError):
    """PostgreSQL without pg_dump on this host: backups are the operator's job."""

    code = "BACKUPS_EXTERNAL"


class BackupNotFoundError(NotFoundError):
    code = "BACKUP_NOT_FOUND"


class RestoreRefusedError(Exception):
    """A restore was refused before anything was changed (the message says why)."""


class ForceRequiredError(RestoreRefusedError):
    """Refused because only a forced restore replaces (or sets aside) the current database.
    Each surface names its own switch: `str()` is Python's (`force=True`); the command
    line says `advice("--force")`. There is no HTTP restore."""

    def __init__(self, reason: str, action: str) -> None:
        self.reason = reason
        self.action = action
        super().__init__(self.advice("force=True"))

    def advice(self, switch: str) -> str:
        return f"{self.reason}; pass {switch} to {self.action}"


class MigrationRefusedError(DatabaseUnusableError):
    """The backup taken before a migration failed, so the database is not migrated, and
    this version cannot use it until it is: one line and exit 3 from the commands that
    migrate (`migrate`, `users`, `create-admin`, `serve`), as for any unusable database."""
