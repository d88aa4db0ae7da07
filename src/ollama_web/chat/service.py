"""Preparing a turn: the mode, the model, the context, and the messages stored before Ollama
is called.

Order (API-CONTRACT "Chat"): validated and slot taken (429) -> conversation and target
message found (404) -> model resolved (unknown: 404 with nothing stored; no node reachable:
the user's message is stored, then 503 with its id) -> the user message and an empty
`pending` answer committed in one short transaction of their own (Core statements, see
`conversations.writes`); the turn's reads (on SQLite's inline connection when they can,
else in the request's transaction, which only reads) are done first. The
job starts as soon as this returns; the response waits until its request is written to a
node (a node that died since the health cache saw it up: the answer's row is deleted, and
the same 503 as above). A conversation or account deleted between the read and
the write answers 404 or 401, as a later request would (`_store_turn`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any

from sqlalchemy import insert, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from ollama_web.chat.errors import AnswerInProgressError
from ollama_web.chat.generation import COMPLETE, GenerationSpec
from ollama_web.chat.options import check_options, sendable_options
from ollama_web.chat.registry import GenerationRegistry, Reservation
from ollama_web.chat.schemas import ChatRequest, check_limits
from ollama_web.conversations import repository
from ollama_web.conversations.repository import BranchMessage, TurnConversation
from ollama_web.conversations.schemas import MessagePublic
from ollama_web.conversations.service import message_public, model_display_name
from ollama_web.conversations.tree import Tree, first_words
from ollama_web.conversations.writes import (
    CONVERSATIONS,
    MESSAGES,
    NewConversation,
    NewMessage,
    Writes,
    conversation_update,
)
from ollama_web.core.config import Settings
from ollama_web.core.db import end_session, is_foreign_key_violation
from ollama_web.core.errors import AccountGoneError, AppError, ValidationError
from ollama_web.core.sqlite_inline import InlineSQLite
from ollama_web.db import Message, User
from ollama_web.db.base import new_id, utcnow
from ollama_web.db.models import UNFINISHED_STATUSES, MessageRole, MessageStatus
from ollama_web.ollama.errors import OllamaUnavailableError
from ollama_web.ollama.gateway import OllamaGateway

USER = MessageRole.USER.value
ASSISTANT = MessageRole.ASSISTANT.value
PENDING = MessageStatus.PENDING.value


@dataclass
class Turn:
    """Where the new messages go. Loaded objects are only read, never changed."""

    conversation: TurnConversation | None
    """None: a new conversation (created only once the model is known)."""
    messages: Sequence[BranchMessage] = ()
    parent_id: str | None = None
    """Parent of the new user message, or (regenerate) of the new answer."""
    question: NewMessage | None = None
    """Regenerate: the existing user message being answered again (its row, not written)."""


@dataclass
class Stored:
    """What this turn writes: the conversation (new, or changed values) and messages."""

    conversation_id: str
    new_conversation: NewConversation | None = None
    changes: dict[str, Any] = field(default_factory=dict)
    messages: list[NewMessage] = field(default_factory=list)


@dataclass
class PreparedChat:
    reservation: Reservation
    spec: GenerationSpec
    user_message: MessagePublic


class StoredBeforeFailure(AppError):
    """No node was reachable; the user's message is stored (and committed)."""

    def __init__(self, error: AppError, conversation_id: str, user_message_id: str) -> None:
        details = {
            **error.details,
            "conversation_id": conversation_id,
            "user_message_id": user_message_id,
        }
        super().__init__(
            error.message,
            details=details,
            code=error.code,
            status_code=error.status_code,
            headers=error.headers,
        )


def _invalid(field: str, message: str) -> ValidationError:
    return ValidationError(
        "The request payload is invalid.",
        details={"fields": [{"loc": [field], "message": message, "type": "value_error"}]},
    )


async def _target(
    session: AsyncSession,
    inline: InlineSQLite | None,
    user_id: str,
    body: ChatRequest,
    role: str,
) -> repository.MessageTurn:
    """The message an edit (`role` user) or a regenerate (assistant) names, with the turn's
    reads; a regenerate's question too."""
    name = "edit_message_id" if role == USER else "regenerate_message_id"
    message_id = body.edit_message_id if role == USER else body.regenerate_message_id
    assert message_id is not None
    found = await repository.message_turn(
        session, inline, user_id, message_id, with_parent=role == ASSISTANT
    )
    if body.conversation_id is not None and body.conversation_id != found.conversation.id:
        raise repository.message_not_found()
    if found.target.role != role:
        article = "an" if role == ASSISTANT else "a"
        raise _invalid(name, f"must be the id of {article} {role} message")
    return found


async def load_turn(
    session: AsyncSession, inline: InlineSQLite | None, user_id: str, body: ChatRequest
) -> Turn:
    if body.edit_message_id is not None:
        edit = await _target(session, inline, user_id, body, USER)
        return Turn(edit.conversation, edit.messages, edit.target.parent_id)
    if body.regenerate_message_id is not None:
        again = await _target(session, inline, user_id, body, ASSISTANT)
        if again.target.parent_id is None:
            raise _invalid("regenerate_message_id", "this answer has no question to answer")
        if again.parent is None:
            raise repository.message_not_found()
        question = NewMessage(**again.parent)
        return Turn(again.conversation, again.messages, question.id, question=question)
    if body.conversation_id is None:
        return Turn(None)
    conversation, messages = await repository.conversation_turn(
        session, inline, user_id, body.conversation_id
    )
    tree = Tree(messages)
    leaf = tree.leaf(conversation.active_leaf_id)
    if leaf is not None and tree.by_id[leaf].status in UNFINISHED_STATUSES:
        raise AnswerInProgressError(conversation.id, leaf)
    return Turn(conversation, messages, leaf)


def ollama_messages(
    system_prompt: str | None, path: Sequence[BranchMessage | Message | NewMessage]
) -> list[dict[str, Any]]:
    """The conversation as Ollama reads it: system prompt, then the branch, oldest first."""
    out: list[dict[str, Any]] = []
    if system_prompt:
        out.append({"role": "system", "content": system_prompt})
    for message in path:
        if not message.content and not message.images:
            continue  # an answer that failed before its first token
        item: dict[str, Any] = {"role": message.role, "content": message.content}
        if message.images:
            item["images"] = message.images
        out.append(item)
    return out


def _model_name(turn: Turn, body: ChatRequest) -> str:
    """The model asked for, as given (errors echo it); 422 outside Ollama's name grammar."""
    name = body.model or (turn.conversation.model if turn.conversation is not None else None)
    if not name:
        raise _invalid("model", "is required to start a conversation")
    model_display_name(name)
    return name


def _conversation_changes(turn: Turn, user_id: str, body: ChatRequest, model: str) -> Stored:
    """The conversation this turn belongs to: a new row, or the values that change."""
    now = utcnow()
    current = turn.conversation
    if current is None:
        conversation = NewConversation(
            id=new_id(),
            user_id=user_id,
            title=first_words(body.content or ""),
            model=model,
            created_at=now,
            updated_at=now,
            system_prompt=body.system_prompt,
            options=body.options.as_dict() if body.options else {},
        )
        return Stored(conversation.id, new_conversation=conversation)
    changes: dict[str, Any] = {"model": model, "updated_at": now}
    if body.system_prompt is not None:
        changes["system_prompt"] = body.system_prompt
    if body.options is not None:
        changes["options"] = {**current.options, **body.options.as_dict()}
    if not turn.messages and not current.title_generated and body.content:
        changes["title"] = first_words(body.content)
    return Stored(current.id, changes=changes)


def _new_message(
    conversation_id: str, parent_id: str | None, role: str, content: str, status: str
) -> NewMessage:
    now = utcnow()
    return NewMessage(new_id(), conversation_id, parent_id, role, content, status, now, now)


# Built once: a reused statement keeps its memoized cache key.
_INSERT_CONVERSATION = insert(CONVERSATIONS)
_INSERT_MESSAGES = insert(MESSAGES)


async def _store_turn(
    session: AsyncSession, user_id: str, body: ChatRequest, writes: Writes, stored: Stored
) -> None:
    """Commit the turn (before Ollama is called).

    The turn was read in the request's transaction, ended since: what another request
    deleted meanwhile (the conversation, or the caller's account and everything of it)
    makes the database refuse the turn's rows. The answer is then the one the same request
    gets a moment later: 401 for the account, 404 for the conversation (or the message the
    request names). A refusal with both still there is a bug, raised as it is."""
    try:
        await _store(writes, stored)
    except IntegrityError as exc:
        if not is_foreign_key_violation(exc):
            raise
        if await session.scalar(select(User.id).where(User.id == user_id)) is None:
            raise AccountGoneError() from exc
        if stored.new_conversation is None and not await repository.conversation_exists(
            session, user_id, stored.conversation_id
        ):
            if body.edit_message_id is not None or body.regenerate_message_id is not None:
                raise repository.message_not_found() from exc
            raise repository.conversation_not_found() from exc
        raise


async def _store(writes: Writes, stored: Stored) -> None:
    """The turn's rows, in one transaction."""
    steps: list[tuple[Any, Any]] = []
    if stored.new_conversation is not None:
        steps.append((_INSERT_CONVERSATION, [stored.new_conversation.row()]))
    if stored.messages:
        steps.append((_INSERT_MESSAGES, [message.row() for message in stored.messages]))
    if stored.changes:
        changes = conversation_update(tuple(sorted(stored.changes)))
        steps.append((changes, {"_id": stored.conversation_id, **stored.changes}))
    await writes.run(steps)


def _question(turn: Turn, stored: Stored, body: ChatRequest) -> Message | NewMessage:
    if turn.question is not None:
        return turn.question
    question = _new_message(
        stored.conversation_id, turn.parent_id, USER, body.content or "", COMPLETE
    )
    question.images = body.images or None
    question.completed_at = question.created_at
    stored.messages.append(question)
    return question


def _set_leaf(stored: Stored, leaf_id: str) -> None:
    if stored.new_conversation is not None:
        stored.new_conversation.active_leaf_id = leaf_id
    else:
        stored.changes["active_leaf_id"] = leaf_id


def _siblings(messages: Sequence[BranchMessage], new: Message | NewMessage) -> list[str]:
    same = [m.id for m in messages if m.parent_id == new.parent_id and m.role == new.role]
    return same if new.id in same else [*same, new.id]


async def prepare(
    session: AsyncSession,
    inline: InlineSQLite | None,
    user_id: str,
    body: ChatRequest,
    settings: Settings,
    gateway: OllamaGateway,
    registry: GenerationRegistry,
    *,
    is_admin: bool,
) -> PreparedChat:
    """Store the question and an empty answer; raises before anything is stored on 4xx.
    `inline`: the SQLite database's connection on the loop's thread, if any (the turn's
    reads run there when they can: core/sqlite_inline.py). `is_admin`: the caller's role,
    for the options it may set and have sent (chat/options.py)."""
    check_limits(body, settings)
    check_options(body.options, is_admin=is_admin, settings=settings)
    reservation = await registry.reserve(user_id)
    try:
        sendable = partial(sendable_options, is_admin=is_admin, settings=settings)
        return await _prepare(
            session, inline, user_id, body, gateway, registry.writes, reservation, sendable
        )
    except BaseException:
        registry.release(reservation)
        raise


async def _prepare(
    session: AsyncSession,
    inline: InlineSQLite | None,
    user_id: str,
    body: ChatRequest,
    gateway: OllamaGateway,
    writes: Writes,
    reservation: Reservation,
    sendable: Callable[[dict[str, Any] | None], dict[str, Any] | None],
) -> PreparedChat:
    turn = await load_turn(session, inline, user_id, body)
    # The request's reads are done: end its transaction (keeping the authentication's
    # throttled activity write) and give its connection back before the write transaction
    # takes one (holding both at once deadlocks the pool under load).
    await end_session(session)
    name = _model_name(turn, body)
    try:
        model = await gateway.resolve_model(name)
    except OllamaUnavailableError as exc:
        if turn.question is not None:  # a regenerate: nothing new to keep, nothing changes
            assert turn.conversation is not None
            raise StoredBeforeFailure(exc, turn.conversation.id, turn.question.id) from None
        stored = _conversation_changes(turn, user_id, body, model_display_name(name))
        question = _question(turn, stored, body)
        _set_leaf(stored, question.id)
        await _store_turn(session, user_id, body, writes, stored)
        raise StoredBeforeFailure(exc, stored.conversation_id, question.id) from None
    if body.think and gateway.lacks_capability(model, "thinking"):
        # Ollama would answer 400 after the stream started (a stored failed answer, a 502):
        # the client's mistake is a 422 now, with nothing stored.
        raise _invalid("think", f"{model} is not a thinking model; leave think unset or false")
    stored = _conversation_changes(turn, user_id, body, model)
    question = _question(turn, stored, body)
    answer = _new_message(stored.conversation_id, question.id, ASSISTANT, "", PENDING)
    answer.model = model
    stored.messages.append(answer)
    _set_leaf(stored, answer.id)
    await _store_turn(session, user_id, body, writes, stored)
    tree = Tree(turn.messages)
    path: list[BranchMessage | Message | NewMessage]
    path = [tree.by_id[i] for i in tree.path_to(turn.parent_id)]
    if turn.question is None:
        path.append(question)
    conversation = stored.new_conversation or turn.conversation
    assert conversation is not None
    system_prompt = stored.changes.get("system_prompt", conversation.system_prompt)
    options = stored.changes.get("options", conversation.options)
    first_exchange = not turn.messages and not conversation.title_generated
    leaf_before = question.id
    if turn.question is not None and turn.conversation is not None:  # a regenerate
        leaf_before = tree.leaf(turn.conversation.active_leaf_id) or question.id
    spec = GenerationSpec(
        user_id=user_id,
        conversation_id=stored.conversation_id,
        user_message_id=question.id,
        leaf_before=leaf_before,
        message=message_public(answer, _siblings(turn.messages, answer)),
        model=model,
        messages=ollama_messages(system_prompt, path),
        options=sendable(options),
        think=body.think,
        title_source=question.content if first_exchange else None,
    )
    user_public = message_public(question, _siblings(turn.messages, question))
    return PreparedChat(reservation, spec, user_public)
