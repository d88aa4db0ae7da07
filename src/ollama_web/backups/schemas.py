"""Response models of the backup routes."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, Field

from ollama_web.backups.models import BackupInfo


class LastBackup(BaseModel):
    name: str
    created_at: datetime
    size_bytes: int
    sha256: str | None = Field(
        description="The archive's sha256 as its `.sha256` records it; null when that file "
        "cannot be read (its mode, its owner: verifying the backup then answers 503 "
        "BACKUP_CHECK_FAILED) or records none (empty, not text: verifying it says it is "
        "damaged)"
    )
    duration_ms: float | None = Field(description="How long taking it took; null if unknown")


class BackupPublic(LastBackup):
    reason: str | None = Field(
        default=None, description="startup, shutdown, scheduled, manual, before migrating, ..."
    )

    @classmethod
    def of(cls, info: BackupInfo) -> BackupPublic:
        return cls(
            name=info.name,
            created_at=info.created_at,
            size_bytes=info.size_bytes,
            sha256=info.sha256,
            duration_ms=info.duration_ms,
            reason=info.reason,
        )


class BackupStatus(BaseModel):
    enabled: bool = Field(description="Automatic backups (startup, shutdown, periodic) are on")
    mode: Literal["sqlite", "pg_dump", "external"] = Field(
        description="How backups are taken; `external`: PostgreSQL without pg_dump on this "
        "host, so backups are the operator's job"
    )
    directory: str
    last_backup: LastBackup | None
    count: int
    total_size_bytes: int
    retention_days: int = Field(description="0 means no age limit")
    max_count: int
    next_scheduled_at: datetime | None = Field(
        description="When the next periodic backup is due; null when BACKUP_INTERVAL_HOURS=0"
    )
    free_bytes: int | None = Field(description="Free space where backups are written")


class BackupVerification(BaseModel):
    name: str
    valid: bool
    problems: list[str]
