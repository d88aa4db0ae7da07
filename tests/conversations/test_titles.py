"""The title writer's queue, against a fake model that answers when told to (unit level)."""

from __future__ import annotations

import asyncio
import logging
from typing import Any, cast

import pytest

from ollama_web.conversations import titles
from ollama_web.conversations.titles import TitleWriter
from ollama_web.ollama.chunks import ChatChunk


class SlowModel:
    """Answers one title request for each `answer()`; records what it was asked."""

    def __init__(self) -> None:
        self._answers = asyncio.Semaphore(0)
        self.asked: list[str] = []

    def answer(self, count: int) -> None:
        for _ in range(count):
            self._answers.release()

    async def chat_once(self, model: str, messages: list[dict[str, Any]], **_: Any) -> ChatChunk:
        self.asked.append(messages[-1]["content"])
        await self._answers.acquire()
        return ChatChunk(content="A title", done=True)


class StoredTitles:
    def __init__(self) -> None:
        self.conversations: list[str] = []

    async def grouped(self, statement: Any, params: dict[str, Any]) -> None:
        self.conversations.append(params["b_id"])


async def _stored(writes: StoredTitles, count: int) -> None:
    async with asyncio.timeout(5):
        while len(writes.conversations) < count:
            await asyncio.sleep(0.01)
    await asyncio.sleep(0.05)  # a title still queued would be asked and stored meanwhile


async def test_a_full_title_queue_takes_no_more_titles_until_it_has_drained_to_half(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Conversations starting faster than the model writes titles: the queue stops at
    MAX_PENDING_TITLES (the others keep their first words) instead of growing for as long as
    the load lasts; it takes titles again once half of it is written, saying so once each
    way (not a pair of lines for every title at the edge)."""
    monkeypatch.setattr(titles, "MAX_PENDING_TITLES", 6, raising=False)
    model, writes = SlowModel(), StoredTitles()
    writer = TitleWriter(model, cast(Any, writes))
    caplog.set_level(logging.INFO, logger="ollama_web.conversations.titles")
    for i in range(10):
        writer.schedule("user", f"conversation {i}", "m:latest", f"question {i}")
    model.answer(2)
    await _stored(writes, 2)
    writer.schedule("user", "conversation 10", "m:latest", "question 10")  # 4 still queued
    model.answer(1)
    await _stored(writes, 3)
    writer.schedule("user", "conversation 11", "m:latest", "question 11")  # 3: half drained
    model.answer(100)
    await _stored(writes, 7)

    assert writes.conversations == [*(f"conversation {i}" for i in range(6)), "conversation 11"]
    assert len(model.asked) == 7
    lines = [(r.levelno, r.getMessage()) for r in caplog.records]
    assert len(lines) == 2
    assert lines[0][0] == logging.WARNING
    assert lines[0][1].startswith("6 titles are waiting for the model")
    assert lines[1] == (logging.INFO, "titles are written again (5 conversations were not)")
    await writer.aclose()
