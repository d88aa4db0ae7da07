"""`BackupInfo`: one complete backup on disk (archive + sha256 sidecar + metadata)."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from ollama_web.backups import names

_SHA256 = re.compile(r"[0-9a-fA-F]{64}")


@dataclass(frozen=True)
class BackupInfo:
    name: str
    path: Path
    created_at: datetime
    size_bytes: int
    sha256: str | None
    """As its sidecar records it; None when the sidecar is there but cannot be read (its
    mode, another owner: still a complete backup, which a check says it could not check) or
    holds no sha256 (empty, not text: damaged, which a check says)."""
    duration_ms: float | None
    reason: str | None
    kind: str | None
    content_sha256: str | None = None
    """sha256 of the database the archive holds (SQLite: the uncompressed copy; PostgreSQL:
    the dump without its creation time), or None (backups of older versions)."""

    def metadata(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "created_at": self.created_at.isoformat(),
            "size_bytes": self.size_bytes,
            "sha256": self.sha256,
            "duration_ms": self.duration_ms,
            "reason": self.reason,
            "kind": self.kind,
            "content_sha256": self.content_sha256,
        }

    def public(self) -> dict[str, Any]:
        """The contract's `last_backup` shape."""
        return {
            "name": self.name,
            "created_at": self.created_at.isoformat(),
            "size_bytes": self.size_bytes,
            "sha256": self.sha256,
            "duration_ms": self.duration_ms,
        }

    @classmethod
    def load(cls, path: Path) -> BackupInfo | None:
        """Read a backup's facts from its files; None if it vanished or its sidecar did.
        A sidecar written (atomically, last) and later damaged, or one that cannot be read,
        leaves a backup that is listed (so seen, checked and pruned) with sha256
        None; its check says what is wrong (damaged) or that it could not run (503, 74)."""
        created_at = names.time_of(path.name)
        if created_at is None:
            return None
        try:
            size = path.stat().st_size
        except OSError:
            return None
        recorded: list[str] = []
        try:
            recorded = names.checksum_path(path).read_text("utf-8").split()
        except FileNotFoundError:
            return None
        except (OSError, UnicodeDecodeError):  # unreadable, or bytes that are not text
            pass
        extra: dict[str, Any] = {}
        try:
            loaded = json.loads(names.metadata_path(path).read_text(encoding="utf-8"))
            extra = loaded if isinstance(loaded, dict) else {}
        except (OSError, ValueError):
            extra = {}
        duration = extra.get("duration_ms")
        content = extra.get("content_sha256")
        return cls(
            name=path.name,
            path=path,
            created_at=created_at,
            size_bytes=size,
            sha256=recorded[0].lower() if recorded and _SHA256.fullmatch(recorded[0]) else None,
            duration_ms=float(duration) if isinstance(duration, int | float) else None,
            reason=str(extra["reason"]) if extra.get("reason") else None,
            kind=str(extra["kind"]) if extra.get("kind") else None,
            content_sha256=content if isinstance(content, str) else None,
        )

    def delete(self) -> None:
        for path in (names.checksum_path(self.path), names.metadata_path(self.path), self.path):
            path.unlink(missing_ok=True)
