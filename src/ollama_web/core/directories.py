"""DATA_DIR, LOG_DIR, BACKUP_DIR (and PROMETHEUS_MULTIPROC_DIR): created when missing, and
proved usable before the server starts.

A path that is a regular file, on a read-only filesystem or immutable failed deep inside
the start with a traceback (the secret key's temporary file, the first log handler), or,
for a read-only LOG_DIR, not at all: the server ran and every log record printed a
"Logging error" traceback. Checked first, each is one line naming the variable and exit
status 78: configuration the server cannot use, as an invalid setting is.
"""

from __future__ import annotations

import errno
import os
import sys
import tempfile
from pathlib import Path

from ollama_web.core.config import Settings
from ollama_web.core.logging import LOG_DIR_MODE, LOG_FILES
from ollama_web.core.startup import forbidden_file

WRITE_CHECK_PREFIX = ".write-check-"


class DirectoryError(Exception):
    """A directory the server needs cannot be used; the message names its variable."""


# The directories this process proved usable. `ollama-web serve` checks them, then uvicorn
# imports `ollama_web.main:app` and the app starts, in the same process: once is enough.
_PREPARED: set[tuple[Path | None, ...]] = set()


def prepare_directories(settings: Settings) -> None:
    """Create the missing directories (DATA_DIR, BACKUP_DIR and PROMETHEUS_MULTIPROC_DIR
    private to the service's user, 0700; LOG_DIR 0750 as its files, whatever the umask; an
    existing one keeps the mode its owner gave it) and check that DATA_DIR (the database, the
    secret key, the server lock: those that exist too) and LOG_DIR, with its log files, can
    be written. BACKUP_DIR only has to be a directory: a backup that cannot be written fails on
    its own, /health's `backups` component says so, and the server serves without it.
    PROMETHEUS_MULTIPROC_DIR, when set, must be writable too."""
    key = (
        settings.data_dir,
        settings.log_dir,
        settings.backup_dir,
        settings.prometheus_multiproc_dir,
    )
    if key in _PREPARED:
        return
    _prepare("DATA_DIR", settings.data_dir, mode=0o700, writable=True)
    _check_server_files(settings)
    _prepare("LOG_DIR", settings.log_dir, mode=LOG_DIR_MODE, writable=True)
    for name in LOG_FILES:
        path = settings.log_dir / name
        try:
            # Only one that exists: the check above proved a missing one can be created.
            os.close(os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CLOEXEC))
        except FileNotFoundError:
            continue
        except OSError as exc:
            raise _error("LOG_DIR", settings.log_dir, exc, path) from None
    _prepare("BACKUP_DIR", settings.backup_dir, mode=0o700, writable=False)
    if settings.prometheus_multiproc_dir is not None:  # every worker writes its values there
        _prepare(
            "PROMETHEUS_MULTIPROC_DIR", settings.prometheus_multiproc_dir, mode=0o700, writable=True
        )
    _PREPARED.add(key)


def prepare_directories_or_exit(settings: Settings) -> None:
    """`prepare_directories` for a command that starts the server: one line on stderr and
    exit status 78 (EX_CONFIG) instead of a traceback."""
    from ollama_web.core.startup import EXIT_CONFIG_ERROR

    try:
        prepare_directories(settings)
    except DirectoryError as exc:
        print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(EXIT_CONFIG_ERROR) from None


def _check_server_files(settings: Settings) -> None:
    """The files the server opens for writing, when they exist, must be this user's to
    write: one left by another user (a command run as root, a copy) stopped the start
    deep inside, as "unable to open database file" or a bare EACCES, with exit status 3,
    which systemd restarts for ever."""
    from ollama_web.backups.locks import MIGRATION_LOCK_SUFFIX, server_lock_paths
    from ollama_web.core.secrets import secret_file

    files = [secret_file(settings), *server_lock_paths(settings)]
    database = settings.sqlite_file
    if database is not None:
        suffixes = ("", "-wal", "-shm", MIGRATION_LOCK_SUFFIX)
        files += [database.with_name(database.name + suffix) for suffix in suffixes]
    for path in files:
        forbidden = forbidden_file(path)
        if forbidden is not None:
            raise DirectoryError(
                f"cannot use {forbidden}; give the server's files back to the user it runs "
                "as (chown), or run it as their owner"
            )


def _prepare(variable: str, directory: Path, *, mode: int, writable: bool) -> None:
    try:
        directory.mkdir(mode=mode, parents=True, exist_ok=True)
        if writable:
            fd, name = tempfile.mkstemp(prefix=WRITE_CHECK_PREFIX, dir=directory)
            os.close(fd)
            os.unlink(name)
    except OSError as exc:
        raise _error(variable, directory, exc) from None


def _error(
    variable: str, directory: Path, exc: OSError, file: Path | None = None
) -> DirectoryError:
    code = errno.errorcode.get(exc.errno or 0)
    reason = f"{exc.strerror or exc} ({code})" if code else str(exc)
    if isinstance(exc, FileExistsError) and file is None:
        reason += ": it is not a directory"
    where = f"{directory}" if file is None else f"{directory} ({file.name})"
    return DirectoryError(
        f"cannot use {variable} {where}: {reason}; "
        f"{variable} must be a directory this user can write"
    )
