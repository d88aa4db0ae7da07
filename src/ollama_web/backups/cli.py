"""`ollama-web backup` and `ollama-web restore`.

    ollama-web backup                 take a backup now (none while there are no users)
    ollama-web backup --list          list backups, newest first
    ollama-web backup --verify NAME   check a backup's sha256, integrity, schema revision and tables
    ollama-web restore FILE [--force] restore (stop the server first)

FILE (and NAME) is one of the listed backup names in BACKUP_DIR, or the path of a backup file
the operator names (its `.sha256` sidecar must be next to it). Exit codes, as README lists
them: 0 done; 1 refused or failed, nothing changed (also: no such backup, no pg_dump; for
--verify, the backup is damaged or not ours); 2 a malformed command line; 74 the backup
could not be checked (no room or no write access beside the database to unpack it, or it,
or BACKUP_DIR, cannot be read, or pg_restore is not installed), which says nothing about
it, and nothing changed; 78 invalid configuration.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from ollama_web.backups import names
from ollama_web.backups.errors import (
    BackupCheckError,
    BackupDirectoryError,
    BackupError,
    BackupsExternalError,
    ForceRequiredError,
    RestoreRefusedError,
)
from ollama_web.backups.lifespan import install_migration_hook
from ollama_web.backups.service import DatabaseBackup
from ollama_web.core.startup import load_settings_or_exit

EXIT_FAILED = 1
EXIT_NOT_CHECKED = 74  # EX_IOERR from sysexits.h: not 1, which says the backup is bad


def _resolve(service: DatabaseBackup, given: str) -> Path | None:
    """A listed backup, a backup's name in BACKUP_DIR that is not listed (its checksum file
    missing: the check then says so), or a file named by its path."""
    listed = service.find(given)
    if listed is not None:
        return listed.path
    unlisted = names.inside(service.directory, given)
    if unlisted is not None and unlisted.is_file():
        return unlisted
    path = Path(given).expanduser()
    return path if path.is_file() else None


def _list(service: DatabaseBackup) -> int:
    try:
        backups = service.list_backups()
    except BackupDirectoryError as exc:
        print(f"cannot list the backups: {exc}", file=sys.stderr)
        return EXIT_FAILED
    if not backups:
        print(f"no backups in {service.directory}")
    for info in backups:
        created = info.created_at.isoformat()
        print(f"{info.name}  {info.size_bytes:>12}  {created}  {info.reason or ''}")
    return 0


def _verify(service: DatabaseBackup, given: str) -> int:
    try:
        path = _resolve(service, given)
    except BackupDirectoryError as exc:  # nothing found, nothing said about the backup
        print(f"{given}: the backup could not be checked: {exc}", file=sys.stderr)
        return EXIT_NOT_CHECKED
    if path is None:
        print(f"no such backup: {given}", file=sys.stderr)
        return EXIT_FAILED
    try:
        problems = service.verify(path)
    except BackupCheckError as exc:
        print(f"{path.name}: {exc.message}", file=sys.stderr)
        return EXIT_NOT_CHECKED
    for problem in problems:
        print(f"{path.name}: {problem}", file=sys.stderr)
    if not problems:
        print(f"{path.name}: ok (sha256, integrity check, schema revision and tables)")
    return EXIT_FAILED if problems else 0


def _require_database_file(service: DatabaseBackup) -> None:
    """Not "no users yet" (exit 0) for a SQLite file that is not there: a cron job given
    the wrong DATA_DIR must fail; nor a traceback for a DATA_DIR this user cannot search."""
    if not service.settings.is_sqlite:
        return
    database = service.database_path
    try:
        found = database.is_file()
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise BackupError(f"the database {database} cannot be read: {reason}") from exc
    if not found:
        raise BackupError(f"there is no database at {database} (check DATA_DIR)")


def _backup(args: argparse.Namespace) -> int:
    service = DatabaseBackup(load_settings_or_exit())
    if args.list:
        return _list(service)
    if args.verify:
        return _verify(service, args.verify)
    try:
        _require_database_file(service)
        info = service.create_backup(args.reason)
    except BackupsExternalError as exc:
        print(exc.message, file=sys.stderr)
        return EXIT_FAILED
    except BackupError as exc:
        print(f"backup failed: {exc}", file=sys.stderr)  # str: with the paths, if any
        return EXIT_FAILED
    if info is None:
        print("no backup taken: the database has no users yet")
        return 0
    print(f"{info.path}  {info.size_bytes} bytes  sha256 {info.sha256}")
    return 0


def _restore(args: argparse.Namespace) -> int:
    service = DatabaseBackup(load_settings_or_exit())
    try:
        path = _resolve(service, args.file)
    except BackupDirectoryError as exc:
        print(f"restore refused, nothing was changed: {exc}", file=sys.stderr)
        return EXIT_NOT_CHECKED
    if path is None:
        print(f"no such backup: {args.file} (a listed name or an existing file)", file=sys.stderr)
        return EXIT_FAILED
    try:
        result: dict[str, Any] = service.restore_backup(path, force=args.force)
    except ForceRequiredError as exc:  # in this command's words: not force=True
        print(f"restore refused, nothing was changed: {exc.advice('--force')}", file=sys.stderr)
        return EXIT_FAILED
    except RestoreRefusedError as exc:
        print(f"restore refused, nothing was changed: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except BackupCheckError as exc:
        print(f"restore refused, nothing was changed: {exc.message}", file=sys.stderr)
        return EXIT_NOT_CHECKED
    print(f"restored {path.name}")
    if result["safety_backup"]:
        print(f"the previous database was saved as {result['safety_backup']}")
    print("run `ollama-web migrate` if the backup is older than this version, then start")
    return 0


def register(subparsers: Any) -> None:
    backup = subparsers.add_parser("backup", help="take a database backup now (or list/verify)")
    choice = backup.add_mutually_exclusive_group()
    choice.add_argument("--list", action="store_true", help="list backups, newest first")
    choice.add_argument("--verify", metavar="NAME", help="check one backup")
    backup.add_argument("--reason", default="manual (command line)", help=argparse.SUPPRESS)
    backup.set_defaults(handler=_backup)

    restore = subparsers.add_parser(
        "restore",
        help="restore a backup (stop the server first)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    restore.add_argument("file", metavar="FILE", help="a listed backup name or a backup file")
    restore.add_argument("--force", action="store_true", help="replace a database that has users")
    restore.set_defaults(handler=_restore)
    # `ollama-web migrate` takes a safety backup before changing an existing database.
    install_migration_hook()
