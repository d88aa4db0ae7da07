"""Request storms on the relay: more re-attaches and stops through another process than
redis-py's default pool (100 connections) holds, all at once, over a real Redis."""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from ollama_web.emulator import OllamaEmulator
from tests.chat.conftest import EventReader
from tests.chat.test_relay import Processes, new_chat, two_processes

pytestmark = pytest.mark.redis

STORM = 150


@pytest.fixture
def processes(
    app_factory: Callable[..., Any],
    chat_settings: Callable[..., Any],
    live_server: Callable[[FastAPI], Any],
) -> Processes:
    return functools.partial(two_processes, app_factory, chat_settings, live_server)


async def test_a_storm_of_re_attaches_and_stops_through_another_process_is_served(
    processes: Processes, ollama_emulator: OllamaEmulator
) -> None:
    """Each follow holds a reply-channel connection while the answer runs, and the owner
    publishes each forward: past 100 of them, redis-py's default pool refused the rest
    ("Too many connections"), answered 409 GENERATION_ELSEWHERE for a running answer."""
    ollama_emulator.config.reply_tokens = 400
    ollama_emulator.config.tokens_per_second = 40  # runs until stopped
    limits = httpx.Limits(max_connections=STORM + 10)
    async with processes() as (user, _, (a, b)), new_chat(a, user) as response:
        reader = EventReader(response)
        answer_id = (await reader.next()).data["assistant_message_id"]
        assert (await reader.next()).event == "token"
        async with httpx.AsyncClient(base_url=b.base_url, timeout=20, limits=limits) as storm:

            async def follow(after: int) -> tuple[int, list[Any]]:
                headers = {**user.headers, "Last-Event-ID": str(after)}
                url = f"/api/chat/stream/{answer_id}"
                async with storm.stream("GET", url, headers=headers) as resumed:
                    if resumed.status_code != 200:
                        return resumed.status_code, []
                    return 200, await EventReader(resumed).rest()

            follows = [asyncio.ensure_future(follow(i % 3)) for i in range(STORM)]
            await asyncio.sleep(1.0)  # every follow is subscribed and forwarded to
            stops = [storm.post(f"/api/chat/{answer_id}/stop", headers=user.headers)]
            stopped = await asyncio.gather(*stops)
            followed = await asyncio.gather(*follows)
        final = (await reader.rest())[-1]
    assert [s.status_code for s in stopped] == [200]
    assert stopped[0].json()["message"]["status"] == "stopped"
    assert sorted({status for status, _ in followed}) == [200]
    for _, events in followed:  # a late one is replayed from storage (merged text)
        ids = [event.id for event in events]
        assert ids == sorted(set(ids))
        assert (events[-1].id, events[-1].event, events[-1].data) == (
            final.id,
            final.event,
            final.data,
        )
