"""Conversations: create, read (the active branch with versions), change, delete, list."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from pydantic import TypeAdapter
from pydantic_core import to_json
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm.exc import StaleDataError

from ollama_web.conversations import repository
from ollama_web.conversations.schemas import (
    MODEL_CHARS,
    ConversationCreate,
    ConversationDetail,
    ConversationPatch,
    ConversationPublic,
    ConversationReplace,
    MessagePublic,
)
from ollama_web.conversations.tree import DEFAULT_TITLE, Tree
from ollama_web.conversations.writes import NewMessage
from ollama_web.core.db import flush_owned
from ollama_web.core.errors import ValidationError
from ollama_web.core.pagination import Keyset, Page, PageParams
from ollama_web.db import Conversation, Message
from ollama_web.ollama.names import validate_model_name


def model_display_name(name: str, loc: tuple[str, ...] = ("model",)) -> str:
    """`llama3.2` -> `llama3.2:latest` (422 for a name outside Ollama's grammar, or one
    whose full form is longer than the model columns hold, naming the field at `loc`)."""
    display = validate_model_name(name, loc).display
    if len(display) > MODEL_CHARS:
        raise ValidationError(
            f"The model name is too long: at most {MODEL_CHARS} characters with its tag.",
            details={"fields": [{"loc": list(loc), "message": "too long", "type": "too_long"}]},
        )
    return display


def tokens_per_second(message: Message | NewMessage) -> float | None:
    if not message.eval_count or not message.eval_duration:
        return None
    return round(message.eval_count / message.eval_duration * 1e9, 2)


def message_public(message: Message | NewMessage, sibling_ids: list[str]) -> MessagePublic:
    return MessagePublic(
        id=message.id,
        conversation_id=message.conversation_id,
        parent_id=message.parent_id,
        role=message.role,
        content=message.content,
        thinking=message.thinking,
        images=message.images,
        status=message.status,
        model=message.model,
        done_reason=message.done_reason,
        error=message.error,
        prompt_eval_count=message.prompt_eval_count,
        eval_count=message.eval_count,
        total_duration=message.total_duration,
        load_duration=message.load_duration,
        prompt_eval_duration=message.prompt_eval_duration,
        eval_duration=message.eval_duration,
        tokens_per_second=tokens_per_second(message),
        created_at=message.created_at,
        completed_at=message.completed_at,
        sibling_ids=sibling_ids,
    )


def conversation_public(conversation: Conversation) -> ConversationPublic:
    return ConversationPublic.model_validate(conversation, from_attributes=True)


def detail_of(conversation: Conversation, messages: Sequence[Message]) -> ConversationDetail:
    tree = Tree(messages)
    path = tree.path_to(tree.leaf(conversation.active_leaf_id))
    items = [message_public(tree.by_id[i], tree.siblings(i)) for i in path]
    public = conversation_public(conversation)
    return ConversationDetail(**public.model_dump(), messages=items)


async def detail(
    session: AsyncSession, user_id: str, conversation: Conversation
) -> ConversationDetail:
    """The conversation with its active branch. Messages are read as plain rows (no ORM
    objects): opening a long conversation stays cheap."""
    path = await _active_path(session, user_id, conversation)
    items = _MESSAGE_LIST.validate_python(path)  # one call into pydantic-core for them all
    public = conversation_public(conversation)
    return ConversationDetail(**dict(public), messages=items)


async def detail_json(session: AsyncSession, user_id: str, conversation: Conversation) -> bytes:
    """`detail()` serialised, byte for byte, without building a model per message: the
    message dicts hold our own rows' values in the schema's types (UTC datetimes included)
    and its field order, so pydantic-core serialises them directly (~3 ms less for 500)."""
    document = conversation_public(conversation).model_dump()
    document["messages"] = await _active_path(session, user_id, conversation)
    return to_json(document)


async def _active_path(
    session: AsyncSession, user_id: str, conversation: Conversation
) -> list[dict[str, Any]]:
    """The active branch, oldest first: `MessagePublic`'s fields, in order, as a dict per
    message."""
    rows = await repository.message_rows(session, user_id, conversation.id)
    tree = Tree([RowNode(row) for row in rows])
    path = []
    for message_id in tree.path_to(tree.leaf(conversation.active_leaf_id)):
        values = tree.by_id[message_id].values
        count, duration = values["eval_count"], values["eval_duration"]
        values["tokens_per_second"] = (
            round(count / duration * 1e9, 2) if count and duration else None
        )
        values["sibling_ids"] = tree.siblings(message_id)
        path.append(values)
    return path


_MESSAGE_LIST = TypeAdapter(list[MessagePublic])


class RowNode:
    """A message row (a dict of its columns) as a tree node."""

    __slots__ = ("id", "parent_id", "role", "values")

    def __init__(self, values: dict[str, Any]) -> None:
        self.id: str = values["id"]
        self.parent_id: str | None = values["parent_id"]
        self.role: str = values["role"]
        self.values = values


async def create(session: AsyncSession, user_id: str, body: ConversationCreate) -> Conversation:
    conversation = Conversation(
        user_id=user_id,
        title=body.title or DEFAULT_TITLE,
        title_generated=body.title is not None,
        model=model_display_name(body.model),
        system_prompt=body.system_prompt,
        options=body.options.as_dict() if body.options else {},
        pinned=False,
        archived=False,
    )
    session.add(conversation)
    await flush_owned(session)
    return conversation


async def _flush_changes(session: AsyncSession) -> None:
    """Write the changes of a conversation loaded by this request. Deleted meanwhile by
    another request, its UPDATE matches no row: it is not found, as it is for a request
    that comes a moment later."""
    try:
        await session.flush()
    except StaleDataError:
        raise repository.conversation_not_found() from None


async def replace(
    session: AsyncSession, conversation: Conversation, body: ConversationReplace
) -> Conversation:
    conversation.title = body.title
    conversation.title_generated = True
    conversation.model = model_display_name(body.model)
    conversation.system_prompt = body.system_prompt
    conversation.options = body.options.as_dict() if body.options else {}
    conversation.pinned = body.pinned
    conversation.archived = body.archived
    await _flush_changes(session)
    return conversation


async def patch(
    session: AsyncSession, conversation: Conversation, body: ConversationPatch
) -> Conversation:
    given = body.model_fields_set
    if "title" in given and body.title is not None:
        conversation.title = body.title
        conversation.title_generated = True
    if "model" in given and body.model is not None:
        conversation.model = model_display_name(body.model)
    if "system_prompt" in given:
        conversation.system_prompt = body.system_prompt
    if "options" in given:
        conversation.options = body.options.as_dict() if body.options else {}
    if "pinned" in given and body.pinned is not None:
        conversation.pinned = body.pinned
    if "archived" in given and body.archived is not None:
        conversation.archived = body.archived
    await _flush_changes(session)
    return conversation


async def delete(session: AsyncSession, conversation: Conversation) -> None:
    """The conversation and (by ON DELETE CASCADE) every message in it."""
    await session.delete(conversation)
    await session.flush()


async def activate(
    session: AsyncSession, user_id: str, conversation: Conversation, message_id: str
) -> ConversationDetail:
    """Show the branch through `message_id` (a version chosen among `sibling_ids`)."""
    messages = await repository.conversation_messages(session, user_id, conversation.id)
    tree = Tree(messages)
    if message_id not in tree.by_id:
        if not await repository.conversation_exists(session, user_id, conversation.id):
            raise repository.conversation_not_found()  # deleted since it was loaded
        raise repository.message_not_found()
    conversation.active_leaf_id = tree.newest_leaf_below(message_id)
    await _flush_changes(session)
    return detail_of(conversation, messages)


async def list_page(
    session: AsyncSession,
    user_id: str,
    page: PageParams,
    *,
    pinned: bool | None,
    archived: bool,
    query: str | None,
) -> Page[ConversationPublic]:
    """Newest activity first (`updated_at`, then id), keyset-paginated."""
    dialect = session.get_bind().dialect.name
    stmt = repository.list_statement(
        user_id, dialect=dialect, pinned=pinned, archived=archived, query=query
    )
    scope = f"conversations:{user_id}:pinned={pinned}:archived={archived}:q={query or ''}"
    result = await page.fetch(
        session, stmt, Keyset(Conversation.updated_at, Conversation.id), scope=scope
    )
    return result.to_page(conversation_public)
