"""Request and response bodies of /api/admin."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBool

from ollama_web.auth.schemas import Email, NewPassword, Username, UserPublic

Role = Literal["admin", "user"]


class AdminUserCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    username: Username
    password: NewPassword
    email: Email | None = None
    role: Role = "user"


class AdminUserUpdate(BaseModel):
    """Only the fields given change. `password` resets it and ends the user's sessions."""

    model_config = ConfigDict(extra="forbid")

    role: Role | None = None
    is_active: StrictBool | None = None
    password: NewPassword | None = None
    email: Email | None = Field(
        default=None, description="null clears it; omit it to keep the address."
    )


class AdminUserPublic(UserPublic):
    updated_at: datetime


class AuditEventPublic(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: str
    action: str
    actor_user_id: str | None
    target_type: str | None
    target_id: str | None
    ip_address: str | None
    details: dict[str, Any]
    created_at: datetime
