"""Full-text search over titles and message text.

SQLite: the FTS5 table `messages_fts` (kept by triggers, see migration 0002). PostgreSQL: a
GIN index on `to_tsvector('simple', content)`. The user's text never reaches the database as
query syntax: it is cut into word tokens, and each token is bound as a parameter — quoted as
an FTS5 string on SQLite, passed to `plainto_tsquery` (which has no syntax) on PostgreSQL.
Every token must occur (AND). Titles match by case-insensitive substring, with LIKE
wildcards escaped.
"""

from __future__ import annotations

import re
from typing import Any

from sqlalchemy import column, func, literal_column, or_, select, table

from ollama_web.db import Conversation, Message

MAX_QUERY_CHARS = 200
MAX_TOKENS = 16
_WORD = re.compile(r"\w+")

# The text search configuration; the index expression and the query must use the same one.
TS_CONFIG = "simple"
_fts = table("messages_fts", column("conversation_id"))


def tokens(query: str) -> list[str]:
    """The words of `query` (Unicode letters, digits, underscore), at most MAX_TOKENS."""
    return _WORD.findall(query)[:MAX_TOKENS]


def fts5_query(words: list[str]) -> str:
    """An FTS5 MATCH string: every word as a quoted string (words hold no quotes)."""
    return " ".join(f'"{word}"' for word in words)


def content_tsvector() -> Any:
    """`to_tsvector('simple', content)`, spelled exactly as the GIN index is."""
    return func.to_tsvector(literal_column(f"'{TS_CONFIG}'"), Message.content)


def _message_match(dialect: str, words: list[str]) -> Any:
    if dialect == "sqlite":
        match = literal_column("messages_fts").op("MATCH")(fts5_query(words))
        return Conversation.id.in_(select(_fts.c.conversation_id).where(match))
    tsquery = func.plainto_tsquery(literal_column(f"'{TS_CONFIG}'"), " ".join(words))
    matching = select(Message.conversation_id).where(content_tsvector().op("@@")(tsquery))
    return Conversation.id.in_(matching)


def matches(dialect: str, query: str) -> Any:
    """A condition on conversations: the title contains `query`, or a message has its words."""
    query = query[:MAX_QUERY_CHARS]
    title = Conversation.title.icontains(query, autoescape=True)
    words = tokens(query)
    if not words:
        return title
    return or_(title, _message_match(dialect, words))
