"""Backup file names, and how a name from a request or a command line is accepted.

`ollama_web_backup_YYYYMMDD_HHMMSS.db.gz` (SQLite, gzip) or `....dump` (PostgreSQL,
pg_dump's custom format); a `_N` suffix before the extension when two fall in one second.
Times are UTC. A backup is complete when its sidecar `<name>.sha256` exists (written last).
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from pathlib import Path

PREFIX = "ollama_web_backup_"
SQLITE_EXTENSION = ".db.gz"
POSTGRES_EXTENSION = ".dump"
CHECKSUM_SUFFIX = ".sha256"
METADATA_SUFFIX = ".json"
TEMP_PREFIX = ".tmp-"
UNPACKED_PREFIX = ".restore-"
"""A backup unpacked beside the database, to be checked or restored (`restore.unpacked`)."""
MAX_NAME_LENGTH = 80

NAME_PATTERN = re.compile(
    r"^ollama_web_backup_(?P<stamp>\d{8}_\d{6})(?:_(?P<n>[1-9]\d{0,5}))?"
    r"(?P<ext>\.db\.gz|\.dump)$"
)


def format_name(created_at: datetime, extension: str, collision: int = 0) -> str:
    stamp = created_at.astimezone(UTC).strftime("%Y%m%d_%H%M%S")
    suffix = f"_{collision}" if collision else ""
    return f"{PREFIX}{stamp}{suffix}{extension}"


def is_backup_name(name: str) -> bool:
    return len(name) <= MAX_NAME_LENGTH and NAME_PATTERN.fullmatch(name) is not None


def sort_key(name: str) -> tuple[str, int]:
    """Chronological order of backup names (the `_N` suffix counts after the bare name)."""
    match = NAME_PATTERN.fullmatch(name)
    if match is None:
        return ("", 0)
    return (match["stamp"], int(match["n"] or 0))


def time_of(name: str) -> datetime | None:
    match = NAME_PATTERN.fullmatch(name)
    if match is None:
        return None
    return datetime.strptime(match["stamp"], "%Y%m%d_%H%M%S").replace(tzinfo=UTC)


def checksum_path(backup: Path) -> Path:
    return backup.with_name(backup.name + CHECKSUM_SUFFIX)


def metadata_path(backup: Path) -> Path:
    return backup.with_name(backup.name + METADATA_SUFFIX)


def inside(directory: Path, name: str) -> Path | None:
    """`directory/name` if it is a well-formed backup name that resolves inside directory."""
    if not is_backup_name(name):
        return None
    base = directory.resolve()
    candidate = (base / name).resolve()
    if candidate.parent != base:
        return None
    return candidate
