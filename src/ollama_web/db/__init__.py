"""ORM tables, in one place."""

from ollama_web.db.base import Base
from ollama_web.db.models import (
    ApiKey,
    AuditEvent,
    Conversation,
    Message,
    MessageRole,
    MessageStatus,
    User,
    UserRole,
    UserSession,
)

__all__ = [
    "ApiKey",
    "AuditEvent",
    "Base",
    "Conversation",
    "Message",
    "MessageRole",
    "MessageStatus",
    "User",
    "UserRole",
    "UserSession",
]
