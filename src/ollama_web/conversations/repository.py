"""Queries on conversations and messages. Every one starts from `owned()`, the one statement
builder scoped to the caller: a conversation or message of another user is never selected,
so it is "not found" rather than forbidden.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import BindParameter, Executable, Result, Select, String, bindparam, null, select
from sqlalchemy.ext.asyncio import AsyncSession

from ollama_web.conversations import search
from ollama_web.core.errors import NotFoundError
from ollama_web.core.sqlite_inline import InlineSQLite, read_rows
from ollama_web.db import Conversation, Message
from ollama_web.db.models import UNFINISHED_STATUSES, MessageRole

_MESSAGES = Message.__table__


def owned(user_id: str | BindParameter[str], *columns: Any) -> Select[Any]:
    """`SELECT columns` restricted to `user_id`'s conversations (and their messages).

    Columns of `messages` are joined to their conversation, so ownership is always checked
    on `conversations.user_id` whichever entity is selected.
    """
    stmt = select(*columns)
    if any(_of_messages(column) for column in columns):
        stmt = stmt.join(Conversation, Message.conversation_id == Conversation.id)
    return stmt.where(Conversation.user_id == user_id)


def _of_messages(column: Any) -> bool:
    """`Message`, `Message.<attribute>` or a column of `messages` (read off the argument:
    `Select.get_final_froms()` compiles the statement, ~1 ms a call on hot paths)."""
    if column is Message:
        return True
    return getattr(column, "class_", None) is Message or getattr(column, "table", None) is _MESSAGES


def conversation_not_found() -> NotFoundError:
    return NotFoundError("Conversation not found.")


def message_not_found() -> NotFoundError:
    return NotFoundError("Message not found.")


async def get_conversation(
    session: AsyncSession, user_id: str, conversation_id: str
) -> Conversation:
    stmt = owned(user_id, Conversation).where(Conversation.id == conversation_id)
    conversation: Conversation | None = (await session.scalars(stmt)).one_or_none()
    if conversation is None:
        raise conversation_not_found()
    return conversation


async def conversation_exists(session: AsyncSession, user_id: str, conversation_id: str) -> bool:
    stmt = owned(user_id, Conversation.id).where(Conversation.id == conversation_id)
    return (await session.scalar(stmt)) is not None


async def get_message(session: AsyncSession, user_id: str, message_id: str) -> Message:
    stmt = owned(user_id, Message).where(Message.id == message_id)
    message: Message | None = (await session.scalars(stmt)).one_or_none()
    if message is None:
        raise message_not_found()
    return message


async def sibling_ids(session: AsyncSession, user_id: str, message: Message) -> list[str]:
    """Every version at the message's position (same parent and role), oldest first."""
    stmt = (
        owned(user_id, Message.id)
        .where(
            Message.conversation_id == message.conversation_id,
            Message.role == message.role,
            Message.parent_id.is_(None)
            if message.parent_id is None
            else Message.parent_id == message.parent_id,
        )
        .order_by(Message.created_at, Message.id)
    )
    return list((await session.scalars(stmt)).all())


async def unfinished_answer_ids(
    session: AsyncSession, user_id: str, conversation_id: str | None = None
) -> list[str]:
    """The answers still being generated (`pending` or `streaming`) in the conversation, or
    (no conversation given) in every conversation of the user."""
    stmt = owned(user_id, Message.id).where(
        Message.role == MessageRole.ASSISTANT.value, Message.status.in_(UNFINISHED_STATUSES)
    )
    if conversation_id is not None:
        stmt = stmt.where(Message.conversation_id == conversation_id)
    return list((await session.scalars(stmt)).all())


@dataclass(frozen=True, slots=True)
class BranchMessage:
    """What building a model's context needs of a message."""

    id: str
    parent_id: str | None
    role: str
    content: str
    images: list[str] | None
    status: str


def _branch_query(user_id: BindParameter[str], conversation_id: Any) -> Select[Any]:
    """Every message of a conversation, oldest first, with only the context's columns."""
    return (
        owned(
            user_id,
            Message.id,
            Message.parent_id,
            Message.role,
            Message.content,
            Message.images,
            Message.status,
        )
        .where(Message.conversation_id == conversation_id)
        .order_by(Message.created_at, Message.id)
    )


@dataclass(frozen=True, slots=True)
class TurnConversation:
    """What a chat turn needs of the conversation it continues."""

    id: str
    model: str
    system_prompt: str | None
    options: dict[str, Any]
    title_generated: bool
    active_leaf_id: str | None


_TURN_COLUMNS = (
    Conversation.id,
    Conversation.model,
    Conversation.system_prompt,
    Conversation.options,
    Conversation.title_generated,
    Conversation.active_leaf_id,
)
# Built once: every chat turn but a new conversation's runs them (inline on SQLite).
_USER_ID = bindparam("user_id", type_=String)
_CONVERSATION_ID = bindparam("conversation_id", type_=String)
_MESSAGE_ID = bindparam("message_id", type_=String)
_TURN_CONVERSATION = owned(_USER_ID, *_TURN_COLUMNS).where(Conversation.id == _CONVERSATION_ID)
_TURN_BRANCH = _branch_query(_USER_ID, _CONVERSATION_ID)
# What a turn reads on the event loop's thread at most (a few ms of SQLite's work and row
# conversion); a longer conversation is read through the session, on the driver thread.
INLINE_READ_ROWS = 500
INLINE_READ_CHARS = 512 * 1024


async def _read(
    session: AsyncSession,
    inline: InlineSQLite | None,
    queries: Sequence[tuple[Executable, dict[str, Any]]],
) -> list[Sequence[tuple[Any, ...]]]:
    """A turn's rows in one snapshot, inline within the turn's bounds (`read_rows`)."""
    return await read_rows(
        session, inline, queries, max_rows=INLINE_READ_ROWS, max_chars=INLINE_READ_CHARS
    )


async def conversation_turn(
    session: AsyncSession, inline: InlineSQLite | None, user_id: str, conversation_id: str
) -> tuple[TurnConversation, list[BranchMessage]]:
    """The conversation a turn continues and all its messages, oldest first, with only the
    context's columns."""
    values = {"user_id": user_id, "conversation_id": conversation_id}
    found, rows = await _read(
        session, inline, [(_TURN_CONVERSATION, values), (_TURN_BRANCH, values)]
    )
    if not found:
        raise conversation_not_found()
    return TurnConversation(*found[0]), [BranchMessage(*row) for row in rows]


@dataclass(frozen=True, slots=True)
class MessageTurn:
    """What an edit or a regenerate reads: the message it names, its conversation, all the
    conversation's messages, and (when asked for) the named message's parent, whole."""

    target: BranchMessage
    conversation: TurnConversation
    messages: list[BranchMessage]
    parent: dict[str, Any] | None


# The named message's conversation, as a subquery: its rows come from one snapshot.
_TARGET_CONVERSATION = (
    select(Message.conversation_id).where(Message.id == _MESSAGE_ID).scalar_subquery()
)
_TARGET_TURN_CONVERSATION = owned(_USER_ID, *_TURN_COLUMNS).where(
    Conversation.id == _TARGET_CONVERSATION
)
_TARGET_TURN_BRANCH = _branch_query(_USER_ID, _TARGET_CONVERSATION)
_TARGET_PARENT = owned(_USER_ID, *_MESSAGES.c).where(
    Message.id == select(Message.parent_id).where(Message.id == _MESSAGE_ID).scalar_subquery()
)


async def message_turn(
    session: AsyncSession,
    inline: InlineSQLite | None,
    user_id: str,
    message_id: str,
    *,
    with_parent: bool = False,
) -> MessageTurn:
    """The message an edit or a regenerate names, with its conversation and all its messages
    (and its parent's row with `with_parent`); 404 when it is not the caller's."""
    values = {"user_id": user_id, "message_id": message_id}
    queries = [(_TARGET_TURN_CONVERSATION, values), (_TARGET_TURN_BRANCH, values)]
    if with_parent:
        queries.append((_TARGET_PARENT, values))
    found, rows, *parent = await _read(session, inline, queries)
    messages = [BranchMessage(*row) for row in rows]
    target = next((message for message in messages if message.id == message_id), None)
    if not found or target is None:
        raise message_not_found()
    parent_row = (
        dict(zip(_MESSAGES.c.keys(), parent[0][0], strict=True)) if parent and parent[0] else None
    )
    return MessageTurn(target, TurnConversation(*found[0]), messages, parent_row)


# The columns of `MessagePublic`, in its field order. `tokens_per_second` is computed by the
# service; the NULL placeholder keeps its place, so a row's dict serialises in schema order.
_PUBLIC_COLUMNS = (
    *(
        getattr(Message, name)
        for name in (
            "id", "conversation_id", "parent_id", "role", "content", "thinking", "images",
            "status", "model", "done_reason", "error", "prompt_eval_count", "eval_count",
            "total_duration", "load_duration", "prompt_eval_duration", "eval_duration",
        )
    ),
    null().label("tokens_per_second"),
    Message.created_at,
    Message.completed_at,
)  # fmt: skip


def messages_query(*columns: Any) -> Select[Any]:
    """`columns` of every message of a conversation, oldest first, for `message_dicts`.
    Build it once, at import: executing the very statement that was compiled and cached
    also spares SQLAlchemy re-keying the cached result columns to a new statement's (~0.3 ms
    a call)."""
    return (
        owned(bindparam("user_id", type_=String), *columns)
        .where(Message.conversation_id == bindparam("conversation_id", type_=String))
        .order_by(Message.created_at, Message.id)
    )


async def message_dicts(
    session: AsyncSession, query: Select[Any], user_id: str, conversation_id: str
) -> list[dict[str, Any]]:
    """The rows of a `messages_query` as plain dicts, keys in its columns' order: executed as
    Core on the session's connection (no ORM loading)."""
    parameters = {"user_id": user_id, "conversation_id": conversation_id}
    return await dict_rows(await (await session.connection()).execute(query, parameters))


_MESSAGE_ROWS = messages_query(*_PUBLIC_COLUMNS)


async def message_rows(
    session: AsyncSession, user_id: str, conversation_id: str
) -> list[dict[str, Any]]:
    """Every message of the conversation as plain dicts, oldest first, keys in the order of
    `MessagePublic` (`tokens_per_second` None)."""
    return await message_dicts(session, _MESSAGE_ROWS, user_id, conversation_id)


ROWS_PER_STEP = 1000
"""Rows converted (times parsed, JSON decoded) between two turns of the event loop."""


async def dict_rows(result: Result[Any]) -> list[dict[str, Any]]:
    """A buffered result's rows as dicts, keys paired with values once per row. Converted
    ROWS_PER_STEP at a time, letting the event loop run in between: the 10 000 messages of
    a long conversation took ~50 ms in one go, that long without a token for any stream."""
    keys = tuple(result.keys())
    rows: list[dict[str, Any]] = []
    for index, part in enumerate(result.partitions(ROWS_PER_STEP)):
        if index:
            await asyncio.sleep(0)
        rows.extend(dict(zip(keys, row, strict=True)) for row in part)
    return rows


async def conversation_messages(
    session: AsyncSession, user_id: str, conversation_id: str
) -> Sequence[Message]:
    """Every message of the conversation (all branches), oldest first."""
    stmt = (
        owned(user_id, Message)
        .where(Message.conversation_id == conversation_id)
        .order_by(Message.created_at, Message.id)
    )
    return (await session.scalars(stmt)).all()


def list_statement(
    user_id: str,
    *,
    dialect: str,
    pinned: bool | None,
    archived: bool,
    query: str | None,
) -> Select[Conversation]:
    """The conversations of the list endpoint (ordering and paging are added by the caller)."""
    stmt = owned(user_id, Conversation).where(Conversation.archived == archived)
    if pinned is not None:
        stmt = stmt.where(Conversation.pinned == pinned)
    if query:
        stmt = stmt.where(search.matches(dialect, user_id, query))
    return stmt
