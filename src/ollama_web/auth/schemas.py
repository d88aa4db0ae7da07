"""Request and response bodies of /api/auth."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

from ollama_web.auth.passwords import MAX_PASSWORD_LENGTH, MIN_PASSWORD_LENGTH
from ollama_web.auth.users import EMAIL_PATTERN, MAX_EMAIL_LENGTH, USERNAME_PATTERN

Username = Annotated[
    str,
    Field(
        pattern=USERNAME_PATTERN,
        description="3-64 characters: letters, digits, '.', '_' or '-', starting with a "
        "letter or digit. Unique regardless of case.",
        examples=["alice"],
    ),
]
NewPassword = Annotated[str, Field(min_length=MIN_PASSWORD_LENGTH, max_length=MAX_PASSWORD_LENGTH)]
Email = Annotated[str, Field(max_length=MAX_EMAIL_LENGTH, pattern=EMAIL_PATTERN)]


class UserPublic(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: str
    username: str
    email: str | None
    role: Literal["admin", "user"]
    is_active: bool
    created_at: datetime
    last_login_at: datetime | None
    password_changed_at: datetime | None


class SetupRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    username: Username
    password: NewPassword
    email: Email | None = None


class SetupResponse(BaseModel):
    user: UserPublic
    api_key: str = Field(description="The full API key. It is shown only this once.")
    csrf_token: str
    expires_at: datetime = Field(description="When the session ends at the latest.")


class LoginRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    username: str = Field(min_length=1, max_length=64)
    password: str = Field(min_length=1, max_length=MAX_PASSWORD_LENGTH)


class LoginResponse(BaseModel):
    user: UserPublic
    csrf_token: str = Field(description="Send as X-CSRF-Token on POST/PUT/PATCH/DELETE.")
    expires_at: datetime = Field(description="When the session ends at the latest.")
    idle_timeout_minutes: int


class CsrfResponse(BaseModel):
    csrf_token: str | None = Field(description="The session's token; null without a session.")
    authenticated: bool


class MeResponse(BaseModel):
    user: UserPublic
    auth_method: Literal["api_key", "session"]
    session_id: str | None
    api_key_id: str | None


class PasswordChangeRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    current_password: str = Field(min_length=1, max_length=MAX_PASSWORD_LENGTH)
    new_password: NewPassword


class PasswordChangeResponse(BaseModel):
    sessions_ended: int = Field(description="How many of your other sessions were ended.")


class SessionPublic(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: str
    created_at: datetime
    last_seen_at: datetime
    expires_at: datetime
    ip_address: str | None
    user_agent: str | None
    current: bool = False


class VerifyRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    api_key: str | None = Field(default=None, max_length=256)


class VerifiedKey(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: str
    name: str
    prefix: str
    expires_at: datetime | None


class VerifyResponse(BaseModel):
    valid: Literal[True] = True
    user: UserPublic
    key: VerifiedKey
