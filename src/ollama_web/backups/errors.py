"""Errors of the backup domain (HTTP codes for the routes, plain failures for the CLI)."""

from __future__ import annotations

from ollama_web.core.errors import AppError, ConflictError, NotFoundError


class BackupError(AppError):
    """A backup could not be taken or read (503: the server is fine, the backup is not)."""

    status_code = 503
    code = "BACKUP_FAILED"


class BackupCheckError(BackupError):
    """A backup could not be checked: there was no room, or no write access, where it is
    unpacked (beside the database). That says nothing about the backup, sound or not."""

    code = "BACKUP_CHECK_FAILED"


class BackupBusyError(BackupError):
    """Another backup holds the lock: nothing failed, try again shortly."""


class BackupsExternalError(ConflictError):
    """PostgreSQL without pg_dump on this host: backups are the operator's job."""

    code = "BACKUPS_EXTERNAL"


class BackupNotFoundError(NotFoundError):
    code = "BACKUP_NOT_FOUND"


class RestoreRefusedError(Exception):
    """A restore was refused before anything was changed (the message says why)."""
