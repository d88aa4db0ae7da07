"""Conversation and message payloads: create, replace (PUT), change (PATCH), the answers."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, StrictBool

from ollama_web.chat.schemas import SYSTEM_PROMPT_CHARS, OllamaOptions
from ollama_web.core.validation import Identifier, Sanitized

MODEL_CHARS = 200  # conversations.model and messages.model
Title = Annotated[str, Sanitized(max_length=200, min_length=1)]
ModelName = Annotated[str, Field(min_length=1, max_length=MODEL_CHARS)]
SystemPrompt = Annotated[str, Field(max_length=SYSTEM_PROMPT_CHARS)]


class ConversationCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    title: Title | None = None
    model: ModelName
    system_prompt: SystemPrompt | None = None
    options: OllamaOptions | None = None


class ConversationReplace(BaseModel):
    """PUT: every editable field; one left out takes its default."""

    model_config = ConfigDict(extra="forbid")

    title: Title
    model: ModelName
    system_prompt: SystemPrompt | None = None
    options: OllamaOptions | None = None
    pinned: StrictBool = False
    archived: StrictBool = False


class ConversationPatch(BaseModel):
    """PATCH: only the fields given change. `null` clears `system_prompt` and `options`; for
    `title`, `model`, `pinned` and `archived`, which cannot be empty, it leaves the value as it
    is (as leaving the field out does)."""

    model_config = ConfigDict(extra="forbid")

    title: Title | None = None
    model: ModelName | None = None
    system_prompt: SystemPrompt | None = None
    options: OllamaOptions | None = None
    pinned: StrictBool | None = None
    archived: StrictBool | None = None


class ActivateMessage(BaseModel):
    model_config = ConfigDict(extra="forbid")

    message_id: Identifier = Field(
        description="A message (any version) to show: the active branch becomes the path to "
        "it, continued to its newest descendant."
    )


class MessagePublic(BaseModel):
    id: str
    conversation_id: str
    parent_id: str | None
    role: str
    content: str
    thinking: str | None = None
    images: list[str] | None = None
    status: str = Field(description="pending, streaming, complete, stopped, error, interrupted")
    model: str | None = None
    done_reason: str | None = None
    error: dict[str, Any] | None = None
    prompt_eval_count: int | None = None
    eval_count: int | None = None
    total_duration: int | None = Field(default=None, description="nanoseconds")
    load_duration: int | None = Field(default=None, description="nanoseconds")
    prompt_eval_duration: int | None = Field(default=None, description="nanoseconds")
    eval_duration: int | None = Field(default=None, description="nanoseconds")
    tokens_per_second: float | None = None
    created_at: datetime
    completed_at: datetime | None = None
    sibling_ids: list[str] = Field(
        default_factory=list,
        description="Every version at this position (same parent and role), oldest first, "
        "this one included.",
    )


class ConversationPublic(BaseModel):
    id: str
    title: str
    model: str
    system_prompt: str | None
    options: dict[str, Any]
    pinned: bool
    archived: bool
    title_generated: bool
    active_leaf_id: str | None
    created_at: datetime
    updated_at: datetime


class ConversationDetail(ConversationPublic):
    messages: list[MessagePublic] = Field(
        description="The active branch, oldest first.", default_factory=list
    )
