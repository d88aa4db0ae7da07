"""Conversation titles, written in the background after the first exchange.

A new conversation is titled at once with the first words of its first message; when its
first answer is complete, the model is asked (non-streamed, `think: false`, a few tokens)
for a short title, which replaces the first words unless the user renamed the conversation
meanwhile. Nothing waits for it: the answer is already streamed and stored. A title request
waits while answers are waiting for their first token (at most TITLE_DEFER_SECONDS): it
should not compete with them, here or on the node.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

from sqlalchemy import bindparam, literal_column, update
from sqlalchemy.exc import SQLAlchemyError

from ollama_web.conversations.writes import CONVERSATIONS, Writes
from ollama_web.core.errors import AppError
from ollama_web.core.validation import sanitize_string
from ollama_web.ollama.chunks import ChatChunk

logger = logging.getLogger("ollama_web.conversations.titles")

TITLE_TIMEOUT_SECONDS = 30.0
TITLE_DEFER_SECONDS = 10.0
TITLE_CONCURRENCY = 4
"""Title requests in flight at once: when many answers end together (say 1000 streams),
their titles queue here instead of flooding the upstream connection pool."""
MAX_PENDING_TITLES = 256
"""Titles queued or in flight, at most. When conversations start faster than the nodes
write titles (answers keep them busy), the queue would grow for as long as the load lasts;
once full, new conversations keep their first words as their title until it has drained
to half of this."""
MAX_TITLE_CHARS = 80
MAX_SOURCE_CHARS = 2000
TITLE_INSTRUCTION = (
    "Write a short title, at most six words, for a conversation that begins with the "
    "message below. Answer with the title only: no quotes, no trailing punctuation."
)
TITLE_OPTIONS: dict[str, Any] = {"num_predict": 24, "temperature": 0.2}
_PREFIX = re.compile(r"^\s*(title\s*:\s*)", re.IGNORECASE)
# Quotes (ASCII and typographic), markup and trailing punctuation models like to add.
_STRIP = " \t\"'`*#.:\u201c\u201d\u2018\u2019"


_STORE_TITLE = (
    update(CONVERSATIONS)
    .where(
        CONVERSATIONS.c.id == bindparam("b_id"),
        CONVERSATIONS.c.user_id == bindparam("b_user_id"),
        CONVERSATIONS.c.title_generated.is_(False),
    )
    # A title is not activity: the list order stays as it was.
    .values(
        title=bindparam("b_title"), title_generated=True, updated_at=literal_column("updated_at")
    )
)


class TitleGateway(Protocol):
    async def chat_once(
        self,
        model: str,
        messages: list[dict[str, Any]],
        *,
        options: dict[str, Any] | None = None,
        think: bool | str | None = None,
    ) -> ChatChunk: ...


def clean_title(text: str) -> str | None:
    """The model's answer as a title: first non-empty line, no prefix, quotes or markup."""
    for line in text.splitlines():
        candidate = " ".join(line.split()).strip(_STRIP)
        candidate = _PREFIX.sub("", candidate).strip(_STRIP)
        if candidate:
            if len(candidate) > MAX_TITLE_CHARS:
                candidate = candidate[: MAX_TITLE_CHARS - 1].rstrip() + "…"
            return sanitize_string(candidate, "title", MAX_TITLE_CHARS) or None
    return None


class TitleWriter:
    def __init__(
        self,
        gateway: TitleGateway,
        writes: Writes,
        yield_to: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        self._gateway = gateway
        self._writes = writes
        self._yield_to = yield_to
        """Awaited before each title request: while answers wait for their first token, a
        title would compete with them for this process and for the node's slots."""
        self._tasks: set[asyncio.Task[Any]] = set()
        self._slots = asyncio.Semaphore(TITLE_CONCURRENCY)
        self._skipped = 0
        """Conversations left with their first words since the queue filled up."""

    def schedule(self, user_id: str, conversation_id: str, model: str, first_message: str) -> None:
        pending = len(self._tasks)
        if pending >= MAX_PENDING_TITLES or (self._skipped and pending > MAX_PENDING_TITLES // 2):
            if not self._skipped:
                logger.warning(
                    "%d titles are waiting for the model: new conversations keep their first "
                    "words as their title until the queue drains",
                    pending,
                )
            self._skipped += 1
            return
        if self._skipped:
            logger.info("titles are written again (%d conversations were not)", self._skipped)
            self._skipped = 0
        # Only what the request uses is kept while the title waits its turn.
        source = first_message[:MAX_SOURCE_CHARS]
        task = asyncio.get_running_loop().create_task(
            self.write(user_id, conversation_id, model, source)
        )
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def write(
        self, user_id: str, conversation_id: str, model: str, first_message: str
    ) -> str | None:
        """Ask the model for a title and store it; None when the first words stay.
        `first_message`: its first MAX_SOURCE_CHARS (cut by `schedule`)."""
        messages = [
            {"role": "system", "content": TITLE_INSTRUCTION},
            {"role": "user", "content": first_message},
        ]
        if self._yield_to is not None:
            await self._yield_to()
        try:
            async with self._slots, asyncio.timeout(TITLE_TIMEOUT_SECONDS):
                answer = await self._gateway.chat_once(
                    model, messages, options=TITLE_OPTIONS, think=False
                )
            title = clean_title(answer.content)
        except (AppError, TimeoutError) as exc:
            logger.info("no title from %s for %s: %s", model, conversation_id, exc)
            return None
        if title is None:
            return None
        values = {"b_id": conversation_id, "b_user_id": user_id, "b_title": title}
        try:  # with the answers' own updates: no transaction of its own
            await self._writes.grouped(_STORE_TITLE, values)
        except SQLAlchemyError:
            logger.exception("could not store the title of %s", conversation_id)
            return None
        return title

    async def aclose(self) -> None:
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
