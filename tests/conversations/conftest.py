"""Seeding conversations straight into the database (no Ollama needed)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from datetime import timedelta
from typing import Any

import pytest
from fastapi import FastAPI

from ollama_web.core.db import session_scope
from ollama_web.db import Conversation, Message
from ollama_web.db.base import new_id, utcnow

Seeder = Callable[..., Awaitable[str]]


async def seed_conversation(
    app: FastAPI,
    user_id: str,
    texts: Sequence[str] = ("Hello", "Hi! How can I help?"),
    *,
    title: str = "Seeded",
    pinned: bool = False,
    archived: bool = False,
    age_minutes: float = 0,
) -> str:
    """A conversation whose messages alternate user/assistant in one branch; its id."""
    now = utcnow() - timedelta(minutes=age_minutes)
    conversation = Conversation(
        id=new_id(),
        user_id=user_id,
        title=title,
        model="llama3.2:latest",
        options={},
        pinned=pinned,
        archived=archived,
        title_generated=True,
        created_at=now,
        updated_at=now,
    )
    parent: str | None = None
    messages = []
    for index, text in enumerate(texts):
        message = Message(
            id=new_id(),
            conversation_id=conversation.id,
            parent_id=parent,
            role="user" if index % 2 == 0 else "assistant",
            content=text,
            status="complete",
            created_at=now + timedelta(milliseconds=index),
            updated_at=now,
        )
        messages.append(message)
        parent = message.id
    conversation.active_leaf_id = parent
    async with session_scope(app.state.core.sessionmaker) as session:
        session.add(conversation)
        await session.flush()
        session.add_all(messages)
    return conversation.id


@pytest.fixture
def seed(app: FastAPI) -> Seeder:
    async def make(user_id: str, *texts: str, **options: Any) -> str:
        return await seed_conversation(app, user_id, texts or ("Hello", "Hi!"), **options)

    return make
