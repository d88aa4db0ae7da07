"""The per-user generation slots shared through a real Redis (several processes' worth of
`SharedSlots` on one server), and what happens when Redis is not there."""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any, cast

import pytest

from ollama_web.chat.registry import GenerationRegistry
from ollama_web.chat.slots import KEY_PREFIX, SharedSlots
from ollama_web.core.config import Settings
from tests.conftest import require_redis
from tests.ollama.faults import blackhole, closed_port_url


@asynccontextmanager
async def processes(count: int, stale_seconds: float = 15.0) -> AsyncIterator[list[SharedSlots]]:
    url = require_redis()
    async with AsyncExitStack() as stack:
        slots = []
        for _ in range(count):
            one = SharedSlots(url, stale_seconds)
            stack.push_async_callback(one.aclose)
            slots.append(one)
        yield slots


def new_user() -> str:
    return uuid.uuid4().hex


@pytest.mark.redis
async def test_a_users_slots_are_counted_across_processes() -> None:
    user, other = new_user(), new_user()
    async with processes(2) as (a, b):
        assert await a.take(user, "s1", 2) is True
        assert await b.take(user, "s2", 2) is True
        assert await a.take(user, "s3", 2) is False  # two in use, wherever they run
        assert await b.take(other, "s4", 2) is True  # another user has slots of their own
        b.give_back(user, "s2")  # in the background
        for _ in range(100):
            if await a.take(user, "s3", 2):
                break
            await asyncio.sleep(0.01)
        else:
            pytest.fail("the slot given back was never free")


@pytest.mark.redis
async def test_slots_of_a_process_that_is_gone_lapse_unless_refreshed() -> None:
    user, kept = new_user(), new_user()
    async with processes(2, stale_seconds=1.0) as (a, b):
        assert await a.take(user, "crashed", 1) is True
        assert await a.take(kept, "alive", 1) is True
        assert await b.take(user, "x", 1) is False
        for _ in range(12):  # a keeps its `kept` slot; its `user` slot was never refreshed
            await asyncio.sleep(0.1)
            await a.refresh([(kept, "alive")])
        assert await b.take(user, "x", 1) is True
        assert await b.take(kept, "y", 1) is False


@pytest.mark.redis
async def test_the_key_expires_with_its_last_slot() -> None:
    import redis.asyncio as aioredis

    user = new_user()
    async with processes(1, stale_seconds=0.5) as (a,):
        await a.take(user, "s", 1)
        client = aioredis.Redis.from_url(require_redis())
        try:
            ttl = await client.ttl(KEY_PREFIX + user)
        finally:
            await client.aclose()
    assert 0 < ttl <= 2


async def test_without_redis_slots_are_not_shared_and_chats_go_on(
    caplog: pytest.LogCaptureFixture,
) -> None:
    slots = SharedSlots(closed_port_url().replace("http://", "redis://"), 15.0)
    try:
        with caplog.at_level(logging.WARNING, logger="ollama_web.chat.slots"):
            assert await slots.take(new_user(), "s", 1) is None
            assert await slots.take(new_user(), "s", 1) is None
            await slots.refresh([(new_user(), "s")])
        assert [r.message for r in caplog.records].count(caplog.records[0].message) == 1
        assert "unreachable" in caplog.records[0].message
    finally:
        await slots.aclose()


async def test_a_reservation_cancelled_while_redis_answers_is_given_back(
    settings_factory: Callable[..., Settings],
) -> None:
    registry = GenerationRegistry(settings_factory(), cast(Any, None), cast(Any, None))
    with blackhole() as url:  # Redis "answers" only after its connect timeout
        registry.slots = SharedSlots(url.replace("http://", "redis://"), 15.0)
        try:
            waiting = asyncio.ensure_future(registry.reserve("someone"))
            await asyncio.sleep(0.1)
            waiting.cancel()
            with pytest.raises(asyncio.CancelledError):
                await waiting
            assert registry._reservations == {}  # the local slot is free again
        finally:
            await registry.slots.aclose()
