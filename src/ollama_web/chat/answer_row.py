"""The database row of an answer being generated (see `ollama_web.chat.generation`): its
writes (checkpoints, heartbeats), its final write, tried again while the database refuses
it, and its withdrawal when no node took its request."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from ollama_web.conversations.schemas import MessagePublic
from ollama_web.conversations.writes import Writes
from ollama_web.core.db import RefusalLog
from ollama_web.db.base import utcnow
from ollama_web.ollama.chunks import ChatChunk

logger = logging.getLogger("ollama_web.chat")

# The final write is tried again for this long while the database refuses it (a restart, a
# failover), waits doubling from FINAL_WRITE_FIRST_WAIT to FINAL_WRITE_LONGEST_WAIT seconds.
FINAL_WRITE_RETRY_SECONDS = 30.0
FINAL_WRITE_FIRST_WAIT = 0.25
FINAL_WRITE_LONGEST_WAIT = 4.0
# What the final write stores (and `final_event_id`).
FINAL_COLUMNS = {
    "content", "thinking", "status", "error", "completed_at", "done_reason",
    "prompt_eval_count", "eval_count", "total_duration", "load_duration",
    "prompt_eval_duration", "eval_duration",
}  # fmt: skip


def done_metrics(done: ChatChunk) -> dict[str, Any]:
    """A complete answer's numbers, from Ollama's done chunk."""
    metrics: dict[str, Any] = {
        "done_reason": done.done_reason,
        "prompt_eval_count": done.prompt_eval_count,
        "eval_count": done.eval_count,
        "total_duration": done.total_duration,
        "load_duration": done.load_duration,
        "prompt_eval_duration": done.prompt_eval_duration,
        "eval_duration": done.eval_duration,
    }
    if done.eval_count and done.eval_duration:
        metrics["tokens_per_second"] = round(done.eval_count / done.eval_duration * 1e9, 2)
    return metrics


class AnswerRow:
    def __init__(self, writes: Writes, message_id: str) -> None:
        self.id = message_id
        self._writes = writes
        self.last_write = asyncio.get_running_loop().time()
        """When the row was last written (it was committed just before the job started)."""
        self._refusals = RefusalLog(logger)

    async def write(self, values: dict[str, Any]) -> bool:
        """Store `values` in the row; False (logged) when the database refused."""
        values["updated_at"] = utcnow()
        try:
            await self._writes.update_message(self.id, values)
        except Exception as exc:  # SQLAlchemy's errors, and the driver's own (asyncpg's)
            self._refusals.refused(exc, "could not store the answer %s", self.id)
            return False
        self._refusals.succeeded("the answer %s was stored after the database came back", self.id)
        self.last_write = asyncio.get_running_loop().time()
        return True

    async def write_final(self, message: MessagePublic, final_event_id: int) -> bool:
        """The final write of the ended answer, tried again for FINAL_WRITE_RETRY_SECONDS
        while the database refuses it; `done` waits for it (attached clients get keep-alives
        meanwhile)."""
        values = message.model_dump(include=FINAL_COLUMNS)
        values["final_event_id"] = final_event_id
        loop = asyncio.get_running_loop()
        deadline = loop.time() + FINAL_WRITE_RETRY_SECONDS
        wait = FINAL_WRITE_FIRST_WAIT
        if await self.write(values):
            return True
        while loop.time() + wait <= deadline:
            await asyncio.sleep(wait)
            if await self.write(values):
                return True
            wait = min(wait * 2, FINAL_WRITE_LONGEST_WAIT)
        return False

    async def withdraw(self, conversation_id: str, leaf_id: str) -> bool:
        """Delete the row of an answer no one has seen, `leaf_id` the conversation's leaf
        again; False (logged) when the database refused."""
        try:
            await self._writes.withdraw_answer(self.id, conversation_id, leaf_id)
        except Exception:  # SQLAlchemy's errors, and the driver's own (asyncpg's)
            logger.exception("could not delete the unstarted answer %s", self.id)
            return False
        return True
