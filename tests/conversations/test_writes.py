"""The plain rows a chat turn inserts match the tables they go into."""

from __future__ import annotations

from dataclasses import fields

from ollama_web.conversations.writes import (
    CONVERSATION_COLUMNS,
    MESSAGE_COLUMNS,
    NewConversation,
    NewMessage,
)
from ollama_web.db.base import utcnow


def test_new_rows_have_exactly_the_columns_of_their_tables() -> None:
    """A column added to a table without its field here would fail every chat turn."""
    assert {f.name for f in fields(NewMessage)} == set(MESSAGE_COLUMNS)
    assert {f.name for f in fields(NewConversation)} == set(CONVERSATION_COLUMNS)


def test_a_row_holds_every_column_with_its_value() -> None:
    now = utcnow()
    message = NewMessage("m1", "c1", None, "user", "<b>hi</b> 👋", "complete", now, now)
    row = message.row()
    assert list(row) == list(MESSAGE_COLUMNS)
    assert (row["id"], row["content"], row["images"], row["created_at"]) == (
        "m1",
        "<b>hi</b> 👋",
        None,
        now,
    )
    conversation = NewConversation("c1", "u1", "Title", "llama3.2:latest", now, now)
    assert conversation.row()["options"] == {}
    assert conversation.row()["title_generated"] is False
