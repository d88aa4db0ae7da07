"""Export (JSON: every message of every branch; Markdown: the active branch) and import.

Import takes the JSON export and creates a new conversation with new ids (parents and the
active leaf remapped, the order kept); exporting it again gives the same document apart from
ids and times.
"""

from __future__ import annotations

import json
import re
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    field_serializer,
)
from pydantic import ValidationError as PydanticValidationError
from pydantic_core import to_json
from sqlalchemy import insert
from sqlalchemy.ext.asyncio import AsyncSession

from ollama_web.chat.schemas import OllamaOptions, image_problem
from ollama_web.conversations.repository import message_dicts, messages_query
from ollama_web.conversations.schemas import MODEL_CHARS, ModelName, SystemPrompt, Title
from ollama_web.conversations.service import RowNode, model_display_name
from ollama_web.conversations.tree import DEFAULT_TITLE, Tree
from ollama_web.conversations.writes import MESSAGES
from ollama_web.core.config import Settings
from ollama_web.core.db import flush_owned
from ollama_web.core.errors import ValidationError
from ollama_web.core.validation import clean_text
from ollama_web.db import Conversation, Message
from ollama_web.db.base import as_utc, new_id, utcnow
from ollama_web.db.models import UNFINISHED_STATUSES, MessageStatus
from ollama_web.ollama.names import parse_model_name

MAX_IMPORT_MESSAGES = 10_000
"""Imported in one request and one transaction: 100 000 held the event loop for ~7 s and
took ~500 MB; 10 000 (~1 MiB of JSON at the least) is beyond any real conversation."""
MAX_IMPORTED_ANSWER_CHARS = 1_000_000
"""The longest answer (content, and thinking) an import takes: ~250 000 tokens, beyond any
model's context. Without a bound one 9 MB answer of emoji replayed as 55 MB of events
(each escaped to 12 bytes, the text in `token` and again in `done`): 0.5 s of the event
loop per re-attach."""
ExportId = Annotated[str, Field(min_length=1, max_length=64)]
Status = Literal["pending", "streaming", "complete", "stopped", "error", "interrupted"]
Count = Annotated[int, Field(ge=0, le=2**31 - 1)]  # Integer columns
Nanoseconds = Annotated[int, Field(ge=0, le=2**63 - 1)]  # BigInteger columns
MAX_ERROR_DEPTH = 8
MAX_ERROR_CHARS = 16_384


def _depth(value: Any) -> int:
    if isinstance(value, dict):
        return 1 + max(map(_depth, value.values()), default=0)
    if isinstance(value, list):
        return 1 + max(map(_depth, value), default=0)
    return 0


def _bounded_error(value: dict[str, Any]) -> dict[str, Any]:
    """An answer's error as the server writes it is a small object ({error, message,
    details}); an imported one may nest at most MAX_ERROR_DEPTH levels and take
    MAX_ERROR_CHARS of JSON, so that it can always be stored and read back."""
    if _depth(value) > MAX_ERROR_DEPTH:
        raise ValueError(f"nests deeper than {MAX_ERROR_DEPTH} levels")
    if len(json.dumps(value)) > MAX_ERROR_CHARS:
        raise ValueError(f"is longer than {MAX_ERROR_CHARS} characters of JSON")
    return value


def _model_name(value: str) -> str:
    if parse_model_name(value) is None:
        raise ValueError("is not a model name")
    return value


Time = Annotated[AwareDatetime, AfterValidator(as_utc)]  # refused here, not when written
AnswerModel = Annotated[str, Field(max_length=MODEL_CHARS), AfterValidator(_model_name)]
ErrorObject = Annotated[dict[str, Any], AfterValidator(_bounded_error)]


class ExportedMessage(BaseModel):
    model_config = ConfigDict(extra="forbid")

    id: ExportId
    parent_id: ExportId | None = None
    role: Literal["user", "assistant", "system"]
    content: str
    thinking: str | None = None
    images: list[str] | None = None
    status: Status = "complete"
    model: AnswerModel | None = None
    done_reason: Annotated[str, Field(max_length=32)] | None = None
    error: ErrorObject | None = None
    prompt_eval_count: Count | None = None
    eval_count: Count | None = None
    total_duration: Nanoseconds | None = None
    load_duration: Nanoseconds | None = None
    prompt_eval_duration: Nanoseconds | None = None
    eval_duration: Nanoseconds | None = None
    created_at: Time
    completed_at: Time | None = None


class ExportedConversation(BaseModel):
    model_config = ConfigDict(extra="forbid")

    id: ExportId
    title: Title
    model: ModelName
    system_prompt: SystemPrompt | None = None
    options: OllamaOptions = Field(default_factory=OllamaOptions)
    pinned: StrictBool = False
    archived: StrictBool = False
    title_generated: StrictBool = False
    active_leaf_id: ExportId | None = None
    created_at: Time
    updated_at: Time

    @field_serializer("options")
    def _options(self, options: OllamaOptions) -> dict[str, Any]:
        return options.as_dict()


class ConversationExport(BaseModel):
    """The JSON export, and what import accepts."""

    model_config = ConfigDict(extra="forbid")

    format: Literal["ollama-web.conversation"] = "ollama-web.conversation"
    version: Literal[1] = 1
    exported_at: Time
    conversation: ExportedConversation
    messages: list[ExportedMessage] = Field(
        description="Every message of every branch, oldest first, each after its parent."
    )


_MESSAGE_FIELDS = tuple(name for name in ExportedMessage.model_fields if name != "id")
_MESSAGE_FIELD_SET = set(_MESSAGE_FIELDS)
IMPORT_BATCH_ROWS = 500


def _stored_options(stored: dict[str, Any]) -> OllamaOptions:
    """The conversation's options; one an older version accepted and this one refuses (an
    integer beyond Ollama's 64 bits) is left out rather than failing the export."""
    try:
        return OllamaOptions.model_validate(stored)
    except PydanticValidationError as exc:
        refused = {error["loc"][0] for error in exc.errors() if error["loc"]}
        return OllamaOptions.model_validate({k: v for k, v in stored.items() if k not in refused})


# Every message of a conversation as plain values, keyed in `ExportedMessage`'s field
# order: Core rows, not ORM objects (10 000 messages loaded as ORM objects, then built into
# models and dumped, held the event loop ~330 ms; ~110 ms as rows).
_EXPORT_ROWS = messages_query(Message.id, *(getattr(Message, name) for name in _MESSAGE_FIELDS))


async def export_rows(
    session: AsyncSession, user_id: str, conversation_id: str
) -> list[dict[str, Any]]:
    """Every message of the conversation (all branches), oldest first, as dicts."""
    return await message_dicts(session, _EXPORT_ROWS, user_id, conversation_id)


def export_json(conversation: Conversation, rows: list[dict[str, Any]]) -> bytes:
    """The JSON export of the stored rows as they are, not validated again: a value an
    older version (or a larger limit) let in must not fail the export. Import checks it
    under today's rules. The rows are serialised straight from their values, in
    `ExportedMessage`'s field order (the document is `ConversationExport`'s)."""
    document = ConversationExport.model_construct(
        exported_at=utcnow(),
        conversation=ExportedConversation.model_construct(
            id=conversation.id,
            # Cleaned again: a title stored by an older version may hold control characters.
            title=clean_text(conversation.title) or DEFAULT_TITLE,
            model=conversation.model,
            system_prompt=conversation.system_prompt,
            options=_stored_options(conversation.options or {}),
            pinned=conversation.pinned,
            archived=conversation.archived,
            title_generated=conversation.title_generated,
            active_leaf_id=conversation.active_leaf_id,
            created_at=conversation.created_at,
            updated_at=conversation.updated_at,
        ),
        messages=[],
    ).model_dump(mode="json")
    document["messages"] = parents_first(rows)
    return to_json(document)


def parents_first(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """`rows` (oldest first) in that order, except that a message older than its parent
    (an imported document can hold one) waits until its parent was placed: import reads a
    parent before its children."""
    ids = {row["id"] for row in rows}
    placed: set[str] = set()
    waiting: dict[str, list[dict[str, Any]]] = {}
    ordered: list[dict[str, Any]] = []
    for row in rows:
        parent = row["parent_id"]
        if parent is not None and parent in ids and parent not in placed:
            waiting.setdefault(parent, []).append(row)
            continue
        stack = [row]
        while stack:
            current = stack.pop()
            ordered.append(current)
            placed.add(current["id"])
            stack.extend(reversed(waiting.pop(current["id"], [])))
    return ordered


def _one_line(text: str) -> str:
    """A heading or list item stays one line, whatever the text holds."""
    return " ".join(text.split())


def _markdown_heading(message: dict[str, Any]) -> str:
    role, model, status = message["role"], message["model"], message["status"]
    heading = {"user": "User", "assistant": "Assistant", "system": "System"}[role]
    if role == "assistant" and model:
        heading += f" ({_one_line(model)})"
    if status != MessageStatus.COMPLETE.value:
        heading += f" — {status}"
    return heading


_FENCE = re.compile(r" {0,3}(`{3,}|~{3,})(.*)")


def _open_fence(text: str) -> str | None:
    """The fence (three or more backticks or tildes) of a code block `text` leaves open, by
    CommonMark's rules: closed by a line of at least as many of the same character."""
    fence: str | None = None
    for line in text.split("\n"):
        found = _FENCE.fullmatch(line.rstrip("\r"))
        if found is None:
            continue
        marks, rest = found.groups()
        if fence is None:
            if not (marks[0] == "`" and "`" in rest):  # an info string holds no backtick
                fence = marks
        elif marks[0] == fence[0] and len(marks) >= len(fence) and not rest.strip():
            fence = None
    return fence


def _block(text: str) -> list[str]:
    """A message's text as stored, and the end of a code block it leaves open: every later
    heading stays a heading, not text inside that block."""
    fence = _open_fence(text)
    return [text] if fence is None else [text, fence]


def to_markdown(conversation: Conversation, rows: list[dict[str, Any]]) -> str:
    """The active branch as Markdown (text is written as stored, not escaped; a code block
    left open is closed after its message)."""
    tree = Tree([RowNode(row) for row in rows])
    lines = [f"# {_one_line(conversation.title)}", "", f"- Model: {conversation.model}"]
    lines += [f"- Created: {conversation.created_at.isoformat()}", ""]
    if conversation.system_prompt:
        lines += ["## System", "", *_block(conversation.system_prompt), ""]
    for message_id in tree.path_to(tree.leaf(conversation.active_leaf_id)):
        message = tree.by_id[message_id].values
        lines += [f"## {_markdown_heading(message)}", "", *_block(message["content"]), ""]
    return "\n".join(lines)


def _invalid(message: str) -> ValidationError:
    return ValidationError(f"The import is invalid: {message}.", details={"reason": message})


def _check_messages(document: ConversationExport, settings: Settings) -> None:
    if len(document.messages) > MAX_IMPORT_MESSAGES:
        raise _invalid(f"at most {MAX_IMPORT_MESSAGES} messages")
    seen: set[str] = set()
    for message in document.messages:
        if message.id in seen:
            raise _invalid(f"message id {message.id} appears twice")
        if message.parent_id is not None and message.parent_id not in seen:
            raise _invalid(f"the parent of {message.id} must come before it")
        if message.role == "user" and len(message.content) > settings.max_message_chars:
            raise _invalid(f"message {message.id} is longer than MAX_MESSAGE_CHARS")
        longest = max(len(message.content), len(message.thinking or ""))
        if message.role != "user" and longest > MAX_IMPORTED_ANSWER_CHARS:
            raise _invalid(
                f"message {message.id} is longer than {MAX_IMPORTED_ANSWER_CHARS} characters"
            )
        problem = image_problem(message.images, settings) if message.images else None
        if problem is not None:
            where, text, _ = problem
            place = f"image {where[0]}" if where else "images"
            raise _invalid(f"message {message.id}: {place} {text}")
        seen.add(message.id)
    leaf = document.conversation.active_leaf_id
    if leaf is not None and leaf not in seen:
        raise _invalid("active_leaf_id is not one of the messages")


def _imported_row(
    exported: ExportedMessage, new_ids: dict[str, str], conversation_id: str
) -> dict[str, Any]:
    """A messages row, as plain values (every row has the same keys: one executemany)."""
    values = exported.model_dump(include=_MESSAGE_FIELD_SET)
    if values["status"] in UNFINISHED_STATUSES:
        values["status"] = MessageStatus.INTERRUPTED.value
    values["parent_id"] = new_ids[exported.parent_id] if exported.parent_id else None
    values["id"] = new_ids[exported.id]
    values["conversation_id"] = conversation_id
    values["updated_at"] = exported.completed_at or exported.created_at
    return values


async def import_conversation(
    session: AsyncSession, user_id: str, document: ConversationExport, settings: Settings
) -> Conversation:
    """A new conversation of `user_id` holding the document's messages under new ids."""
    _check_messages(document, settings)
    exported = document.conversation
    leaf = exported.active_leaf_id
    if leaf is not None:  # a message inside a branch shows the branch to its end, as `activate`
        leaf = Tree(document.messages).newest_leaf_below(leaf)
    # Ids sort by time; sorting a fresh batch keeps the document's order among equal times.
    fresh = sorted(new_id() for _ in document.messages)
    new_ids = {m.id: fresh[index] for index, m in enumerate(document.messages)}
    conversation = Conversation(
        id=new_id(),
        user_id=user_id,
        title=exported.title,
        model=model_display_name(exported.model, ("conversation", "model")),
        system_prompt=exported.system_prompt,
        options=exported.options.as_dict(),
        pinned=exported.pinned,
        archived=exported.archived,
        title_generated=exported.title_generated,
        active_leaf_id=new_ids[leaf] if leaf is not None else None,
        created_at=exported.created_at,
        updated_at=utcnow(),
    )
    session.add(conversation)
    await flush_owned(session)  # the caller's account deleted meanwhile: 401
    # Rows, not ORM objects, in batches: 10 000 messages made as ORM objects and flushed
    # held the event loop (every stream of the process) for half a second. Between
    # batches the loop runs while the database writes.
    messages = document.messages
    for start in range(0, len(messages), IMPORT_BATCH_ROWS):
        batch = messages[start : start + IMPORT_BATCH_ROWS]
        rows = [_imported_row(m, new_ids, conversation.id) for m in batch]
        await session.execute(insert(MESSAGES), rows)
    return conversation
