"""The per-user generation slots shared through a real Redis (several processes' worth of
`SharedSlots` on one server), and what happens when Redis is not there."""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import AsyncIterator, Callable, Iterable
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any, cast

import pytest

from ollama_web.chat.errors import TooManyGenerationsError
from ollama_web.chat.registry import GenerationRegistry
from ollama_web.chat.slots import KEY_PREFIX, SharedSlots
from ollama_web.core.config import Settings
from tests.conftest import require_redis
from tests.fixtures.servers import RedisServer
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


@asynccontextmanager
async def registries(
    count: int, url: str, settings: Settings
) -> AsyncIterator[list[GenerationRegistry]]:
    """`count` processes' registries (no jobs: only their slots) sharing the Redis at `url`."""
    async with AsyncExitStack() as stack:
        made = []
        for _ in range(count):
            registry = GenerationRegistry(settings, cast(Any, None), cast(Any, None))
            registry.slots = SharedSlots(url, 15.0)
            stack.push_async_callback(registry.slots.aclose)
            made.append(registry)
        yield made


async def _members(url: str, user_id: str) -> set[bytes]:
    import redis.asyncio as aioredis

    async with aioredis.Redis.from_url(url) as client:
        return set(await client.zrange(KEY_PREFIX + user_id, 0, -1))


async def _settle(slots: SharedSlots | None) -> None:
    """Until the slots given back in the background are."""
    assert slots is not None
    await asyncio.gather(*slots._tasks)


@pytest.mark.redis
async def test_slots_held_when_redis_restarts_empty_are_back_after_one_refresh(
    redis_server: RedisServer, settings_factory: Callable[..., Settings]
) -> None:
    """Node A runs the user's limit; Redis restarts empty and node B starts one more chat
    before A's next heartbeat: that heartbeat puts A's slots back (four run, above the
    limit), and B refuses the user's next chat."""
    settings = settings_factory(max_concurrent_generations_per_user=3)
    user = new_user()
    async with registries(2, redis_server.url, settings) as (a, b):
        held = [await a.reserve(user) for _ in range(3)]
        assert all(reservation.shared for reservation in held)
        redis_server.restart()
        held.append(await b.reserve(user))  # Redis is empty: nothing to count yet
        await a.heartbeat(1.0)
        assert await _members(redis_server.url, user) == {r.id.encode() for r in held}
        with pytest.raises(TooManyGenerationsError):
            await b.reserve(user)


@pytest.mark.redis
async def test_a_slot_taken_while_redis_was_down_is_counted_once_it_is_back(
    redis_server: RedisServer, settings_factory: Callable[..., Settings]
) -> None:
    """A chat started while Redis was down is counted only in its process; once Redis is
    back, that process's next heartbeat adds its slot, and the other process counts it."""
    settings = settings_factory(max_concurrent_generations_per_user=3)
    user = new_user()
    async with registries(2, redis_server.url, settings) as (a, b):
        a.release(await a.reserve(user))  # a connection is pooled
        await _settle(a.slots)
        redis_server.kill()
        taken_alone = await a.reserve(user)  # counted in this process only
        assert not taken_alone.shared
        redis_server.start()
        await a.heartbeat(1.0)
        assert taken_alone.shared
        assert await _members(redis_server.url, user) == {taken_alone.id.encode()}
        others = [await b.reserve(user) for _ in range(2)]  # the limit is 3
        with pytest.raises(TooManyGenerationsError):
            await b.reserve(user)
        a.release(taken_alone)  # given back in Redis too
        await _settle(a.slots)
        others.append(await b.reserve(user))
        assert await _members(redis_server.url, user) == {r.id.encode() for r in others}


@pytest.mark.redis
async def test_a_slot_released_while_a_refresh_runs_is_not_put_back(
    redis_server: RedisServer, settings_factory: Callable[..., Settings]
) -> None:
    """The slot is given back in Redis before the refresh that still names it lands there:
    the refresh re-adds it, so it is given back again once the refresh has answered."""
    user = new_user()
    async with registries(1, redis_server.url, settings_factory()) as (a,):
        slots = a.slots
        assert slots is not None
        reservation = await a.reserve(user)
        refresh = slots.refresh

        async def release_first(held: Iterable[tuple[str, str]]) -> bool:
            pairs = list(held)
            a.release(reservation)
            await _settle(slots)  # its slot is gone from Redis...
            return await refresh(pairs)  # ...and this puts it back

        slots.refresh = release_first  # type: ignore[method-assign]
        await a.heartbeat(1.0)
        await _settle(slots)
        assert await _members(redis_server.url, user) == set()


@pytest.mark.redis
async def test_a_slot_taken_again_is_still_taken_at_the_limit(redis_server: RedisServer) -> None:
    """redis-py sends a take again when its connection dropped before the answer came: the
    first one may have taken the slot, and the second must not refuse it for that."""
    slots = SharedSlots(redis_server.url, 15.0)
    try:
        assert await slots.take("someone", "s", 1) is True
        assert await slots.take("someone", "s", 1) is True
        assert await slots.take("someone", "other", 1) is False
    finally:
        await slots.aclose()


@pytest.mark.redis
async def test_a_heartbeat_during_a_take_leaves_its_slot_to_the_take(
    redis_server: RedisServer, settings_factory: Callable[..., Settings]
) -> None:
    """The user's one slot is held by process B; process A's heartbeat runs while A takes
    a slot: had it added that slot first, the take would have found it there and let the
    user run two."""
    settings = settings_factory(max_concurrent_generations_per_user=1)
    user = new_user()
    async with registries(2, redis_server.url, settings) as (a, b):
        held = await b.reserve(user)
        slots = a.slots
        assert slots is not None
        take = slots.take

        async def overtaken(user_id: str, slot_id: str, limit: int) -> bool | None:
            await a.heartbeat(1.0)
            return await take(user_id, slot_id, limit)

        slots.take = overtaken  # type: ignore[method-assign]
        with pytest.raises(TooManyGenerationsError):
            await a.reserve(user)
        await _settle(slots)
        assert await _members(redis_server.url, user) == {held.id.encode()}
