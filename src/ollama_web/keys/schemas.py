"""Request and response bodies of /api/keys."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictInt

from ollama_web.core.validation import Sanitized

MAX_GRACE_MINUTES = 60 * 24 * 90


class KeyCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: Annotated[str, Sanitized(max_length=100, min_length=1)] = Field(examples=["laptop"])
    """Stored as titles are (SECURITY.md): NFC, control characters but tab and newline removed."""
    expires_in_days: StrictInt | None = Field(
        default=None,
        ge=1,
        le=3650,
        description="Days until the key expires. Omitted: API_KEY_EXPIRY_DAYS (0 = never); "
        "when the server sets API_KEY_EXPIRY_DAYS, that is also the maximum.",
    )


class KeyRotate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    grace_period_minutes: StrictInt | None = Field(
        default=None,
        ge=0,
        le=MAX_GRACE_MINUTES,
        description="How long the old key keeps working (0: it stops at once). "
        "Omitted: API_KEY_ROTATION_GRACE_MINUTES.",
    )


class KeyPublic(BaseModel):
    """A key as listed: never the key itself, only its first characters."""

    model_config = ConfigDict(from_attributes=True)

    id: str
    name: str
    prefix: str
    status: Literal["active", "rotated", "expired", "revoked"]
    created_at: datetime
    expires_at: datetime | None
    last_used_at: datetime | None
    revoked_at: datetime | None
    rotated_at: datetime | None
    grace_until: datetime | None
    replaced_by_id: str | None


class KeyCreated(BaseModel):
    id: str
    name: str
    prefix: str
    key: str = Field(description="The full API key. It is shown only this once.")
    created_at: datetime
    expires_at: datetime | None


class KeyRotated(KeyCreated):
    previous_key_id: str
    previous_key_valid_until: datetime
