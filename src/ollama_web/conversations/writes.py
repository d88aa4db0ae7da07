"""Short write transactions on conversations and messages for work outside a request's own
transaction (turns of a chat, generations, titles), as Core statements (no unit of work).

On SQLite a transaction of a few rows runs on the event loop's thread (core/sqlite_inline.py)
when the database is not locked. Otherwise the writes of this process take turns on one
asyncio lock: colliding in SQLite's busy handler would cost sleeps of up to 100 ms between
retries. Single-row updates (checkpoints, final answers, titles) are group-committed:
whatever queued while a transaction ran is written by the next one, with one `executemany`
per statement.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import Executable, Table, Update, bindparam, delete, update
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from ollama_web.core.sqlite_inline import InlineSQLite, InlineUnavailable
from ollama_web.db import Conversation, Message

MESSAGES: Table = Message.__table__  # type: ignore[assignment]
CONVERSATIONS: Table = Conversation.__table__  # type: ignore[assignment]

Pending = tuple[Executable, dict[str, Any], "asyncio.Future[None]"]
# What a transaction may write on the event loop's thread, which does nothing else while
# it runs: rows (~20 µs each) and characters of text (a turn with images, up to the 10 MB
# request limit, would take tens of ms). More (a thousand streams' checkpoints in one
# group commit, a large turn) goes to the driver thread.
INLINE_ROWS = 64
INLINE_CHARS = 256 * 1024


@dataclass(slots=True)
class NewConversation:
    """A conversations row a chat turn inserts, as plain values: ORM objects built only to
    be read back as rows cost ~0.3 ms of a chat. Fields: exactly the table's columns."""

    id: str
    user_id: str
    title: str
    model: str
    created_at: datetime
    updated_at: datetime
    system_prompt: str | None = None
    options: dict[str, Any] = field(default_factory=dict)
    pinned: bool = False
    archived: bool = False
    title_generated: bool = False
    active_leaf_id: str | None = None

    def row(self) -> dict[str, Any]:
        return {key: getattr(self, key) for key in CONVERSATION_COLUMNS}


@dataclass(slots=True)
class NewMessage:
    """A messages row a chat turn inserts (see `NewConversation`)."""

    id: str
    conversation_id: str
    parent_id: str | None
    role: str
    content: str
    status: str
    created_at: datetime
    updated_at: datetime
    thinking: str | None = None
    images: list[str] | None = None
    model: str | None = None
    done_reason: str | None = None
    error: dict[str, Any] | None = None
    prompt_eval_count: int | None = None
    eval_count: int | None = None
    total_duration: int | None = None
    load_duration: int | None = None
    prompt_eval_duration: int | None = None
    eval_duration: int | None = None
    completed_at: datetime | None = None
    final_event_id: int | None = None

    def row(self) -> dict[str, Any]:
        return {key: getattr(self, key) for key in MESSAGE_COLUMNS}


CONVERSATION_COLUMNS = tuple(column.key for column in CONVERSATIONS.columns)
MESSAGE_COLUMNS = tuple(column.key for column in MESSAGES.columns)


@functools.cache
def _message_update(columns: tuple[str, ...]) -> Update:
    """`UPDATE messages SET <columns> WHERE id = :_id`, built once per set of columns (a
    handful: checkpoint, heartbeat, final answer), so its cache key is memoized."""
    return _update_by_id(MESSAGES, columns)


@functools.cache
def conversation_update(columns: tuple[str, ...]) -> Update:
    """`UPDATE conversations SET <columns> WHERE id = :_id`, built once per set of columns."""
    return _update_by_id(CONVERSATIONS, columns)


def _update_by_id(table: Table, columns: tuple[str, ...]) -> Update:
    return (
        update(table)
        .where(table.c.id == bindparam("_id"))
        .values({column: bindparam(column) for column in columns})
    )


# A pending answer taken back: the conversation's leaf returns to what it was before (its
# question, or for a regenerate the leaf shown then; only if the answer is still the leaf),
# then the row goes.
_LEAF_BACK = (
    update(CONVERSATIONS)
    .where(CONVERSATIONS.c.id == bindparam("_id"))
    .where(CONVERSATIONS.c.active_leaf_id == bindparam("_answer"))
    .values(active_leaf_id=bindparam("_leaf"))
)
_DELETE_MESSAGE = delete(MESSAGES).where(MESSAGES.c.id == bindparam("_id"))


def _small(steps: list[tuple[Executable, Any]]) -> bool:
    """Whether `steps` stay within INLINE_ROWS and INLINE_CHARS (a large group commit is
    turned away by its row count, without a look at its values)."""
    rows = [
        row
        for _, values in steps
        for row in (values if isinstance(values, list) else [values or {}])
    ]
    if len(rows) > INLINE_ROWS:
        return False
    chars = 0
    for row in rows:
        for value in row.values():
            if isinstance(value, str):
                chars += len(value)
            elif isinstance(value, list):  # images: base64 strings
                chars += sum(len(item) for item in value if isinstance(item, str))
    return chars <= INLINE_CHARS


class Writes:
    def __init__(self, engine: AsyncEngine, inline: InlineSQLite | None = None) -> None:
        self._engine = engine
        self._inline = inline
        self._lock = asyncio.Lock() if engine.dialect.name == "sqlite" else None
        self._pending: list[Pending] = []
        self._flusher: asyncio.Task[None] | None = None

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[AsyncConnection]:
        """One committed transaction (rolled back on error)."""
        if self._lock is None:
            async with self._engine.begin() as connection:
                yield connection
            return
        async with self._lock, self._engine.begin() as connection:
            yield connection

    async def run(self, steps: list[tuple[Executable, Any]]) -> None:
        """One committed transaction running `steps` (statement, parameters) in order. On
        SQLite a small one runs inline when it can; else its last statement carries the
        commit on its own trip to the driver thread."""
        if self._inline is not None and _small(steps):
            with suppress(InlineUnavailable):
                self._inline.write(steps)
                return
        async with self.transaction() as connection:
            for index, (statement, parameters) in enumerate(steps):
                if self._lock is not None and index == len(steps) - 1:
                    from ollama_web.core.sqlite_driver import commit_with_next_statement

                    raw = await connection.get_raw_connection()
                    commit_with_next_statement(raw.driver_connection)
                await connection.execute(statement, parameters)

    async def update_message(self, message_id: str, values: dict[str, Any]) -> None:
        """Update one message; returns once committed (raises what the database raised)."""
        await self.grouped(_message_update(tuple(sorted(values))), {"_id": message_id, **values})

    async def withdraw_answer(self, answer_id: str, conversation_id: str, leaf_id: str) -> None:
        """Delete an answer no one has seen (its request reached no node), in one
        transaction that makes `leaf_id` the conversation's leaf again."""
        leaf = {"_id": conversation_id, "_answer": answer_id, "_leaf": leaf_id}
        await self.run([(_LEAF_BACK, leaf), (_DELETE_MESSAGE, {"_id": answer_id})])

    async def grouped(self, statement: Executable, params: dict[str, Any]) -> None:
        """Run `statement` (built once, so the same object each time) with `params` in the
        next group commit; returns once committed (raises what the database raised)."""
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._pending.append((statement, params, future))
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.get_running_loop().create_task(self._flush())
        await future

    async def aclose(self) -> None:
        """Let the group commit in progress end, so its connection is back in the pool
        before the engine is disposed (one still checked out then is never closed)."""
        if self._flusher is not None:
            await asyncio.gather(self._flusher, return_exceptions=True)

    async def _flush(self) -> None:
        while self._pending:
            batch, self._pending = self._pending, []
            groups: dict[int, tuple[Executable, list[dict[str, Any]]]] = {}
            for statement, params, _ in batch:
                groups.setdefault(id(statement), (statement, []))[1].append(params)
            try:
                await self.run(list(groups.values()))
            except Exception as exc:
                if len(batch) == 1:
                    _settle(batch, exc)
                else:  # one row the database refuses must not fail the others
                    await self._one_by_one(batch)
                continue
            except BaseException as exc:
                _settle(batch, exc)
                raise
            _settle(batch, None)

    async def _one_by_one(self, batch: list[Pending]) -> None:
        for index, (statement, params, _) in enumerate(batch):
            try:
                await self.run([(statement, params)])
            except Exception as exc:
                _settle(batch[index : index + 1], exc)
            except BaseException as exc:
                _settle(batch[index:], exc)
                raise
            else:
                _settle(batch[index : index + 1], None)


def _settle(items: list[Pending], exc: BaseException | None) -> None:
    for _, _, future in items:
        if future.done():
            continue
        if exc is None:
            future.set_result(None)
        else:
            future.set_exception(exc)
