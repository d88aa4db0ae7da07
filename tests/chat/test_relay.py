"""Stop and re-attach across server processes, over a real Redis and (without REDIS_URL)
over the Unix sockets of one host's processes in DATA_DIR: two apps (two processes' worth of
state) on one database and DATA_DIR, each served by uvicorn on loopback, the emulator as
Ollama. What both carriers must do runs on each; what only Redis meets (its restarts,
stalls, gone subscriptions) on Redis."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager, AsyncExitStack, asynccontextmanager
from datetime import timedelta
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import select, update

from ollama_web.app import create_app
from ollama_web.chat import host_relay as host_relay_module
from ollama_web.chat import relay as relay_module
from ollama_web.chat.host_relay import HostRelay
from ollama_web.chat.registry import GenerationRegistry
from ollama_web.chat.relay import GenerationRelay
from ollama_web.chat.relay_base import RelayBase
from ollama_web.chat.relay_wire import (
    BEAT_SECONDS,
    GONE_WAIT_SECONDS,
    LISTENERS_WAIT_SECONDS,
    alive_key,
)
from ollama_web.core.host_sockets import HOST_TAG
from ollama_web.core.tasks import cancel_until_ended
from ollama_web.db import Conversation, Message
from ollama_web.db.base import utcnow
from ollama_web.emulator import OllamaEmulator
from tests.chat.conftest import (
    EventReader,
    chat_body,
    conversation_with_unfinished_answers,
    parse_events,
    stored_conversation,
)
from tests.conftest import asgi_client, require_redis
from tests.fixtures.auth import TestUser, create_test_user, execute_sql
from tests.fixtures.servers import RedisServer
from tests.ollama.faults import closed_port_url

pytestmark = pytest.mark.redis

T = TypeVar("T")


def _registry(app: FastAPI) -> GenerationRegistry:
    registry: GenerationRegistry = app.state.generations
    return registry


@asynccontextmanager
async def two_processes(
    app_factory: Callable[..., Any],
    chat_settings: Callable[..., Any],
    live_server: Callable[[FastAPI], Any],
    carrier: str = "redis",
    **overrides: Any,
) -> AsyncIterator[tuple[TestUser, tuple[FastAPI, FastAPI], tuple[httpx.AsyncClient, ...]]]:
    if carrier == "redis down":  # unreachable from the start, unless the test kills it
        overrides.setdefault("redis_url", closed_port_url().replace("http://", "redis://"))
    elif carrier in {"redis", "redis and host"} and "redis_url" not in overrides:
        overrides["redis_url"] = require_redis()
    settings = chat_settings(sse_keepalive_seconds=0.3, **overrides)
    apps = (await app_factory(settings), await app_factory(settings))
    user = await create_test_user(apps[0])
    for app in apps:
        registry = _registry(app)
        relay = registry.relay
        if carrier == "host":
            assert isinstance(relay, HostRelay)
        else:
            assert isinstance(relay, GenerationRelay)
            assert relay.fallback is not None
            if carrier == "redis":
                await _redis_only(registry)
            elif carrier == "redis down":  # the host's sockets serve
                relay = relay.fallback
        await asyncio.wait_for(relay.listening.wait(), 5)
    async with AsyncExitStack() as stack:
        clients = []
        for app in apps:
            base_url = await stack.enter_async_context(live_server(app))
            client = httpx.AsyncClient(base_url=base_url, timeout=10)
            clients.append(await stack.enter_async_context(client))
        yield user, apps, tuple(clients)


async def _redis_only(registry: GenerationRegistry) -> None:
    """Close the host's carriers every process also runs with REDIS_URL: a test of Redis's
    must not pass by the host's sockets and slot files (its processes share DATA_DIR)."""
    relay = registry.relay
    assert isinstance(relay, GenerationRelay)
    assert relay.fallback is not None
    await relay.fallback.aclose()
    relay.fallback = None
    assert registry.host_slots is not None
    registry.host_slots.close()
    registry.host_slots = None


Processes = Callable[..., AbstractAsyncContextManager[Any]]


@pytest.fixture(params=["redis", "host"])
def processes(
    request: pytest.FixtureRequest,
    app_factory: Callable[..., Any],
    chat_settings: Callable[..., Any],
    live_server: Callable[[FastAPI], Any],
) -> Processes:
    """`two_processes` on this test's fixtures, over each carrier: `async with
    processes(**settings) as ...`."""
    return functools.partial(
        two_processes, app_factory, chat_settings, live_server, carrier=request.param
    )


@pytest.fixture
def redis_processes(
    app_factory: Callable[..., Any],
    chat_settings: Callable[..., Any],
    live_server: Callable[[FastAPI], Any],
) -> Processes:
    """`processes` over Redis only."""
    return functools.partial(two_processes, app_factory, chat_settings, live_server)


@pytest.fixture
def host_processes(
    app_factory: Callable[..., Any],
    chat_settings: Callable[..., Any],
    live_server: Callable[[FastAPI], Any],
) -> Processes:
    """`processes` over the host's sockets only."""
    return functools.partial(two_processes, app_factory, chat_settings, live_server, carrier="host")


@pytest.fixture
def redis_down_processes(
    app_factory: Callable[..., Any],
    chat_settings: Callable[..., Any],
    live_server: Callable[[FastAPI], Any],
) -> Processes:
    """`processes` with REDIS_URL set and Redis unreachable (from the start, or once the
    test kills the server of the `redis_url` it gives): the host's carriers serve."""
    return functools.partial(
        two_processes, app_factory, chat_settings, live_server, carrier="redis down"
    )


def new_chat(client: httpx.AsyncClient, user: TestUser) -> AbstractAsyncContextManager[Any]:
    """A chat in a new conversation, streamed from `client`'s process."""
    return client.stream("POST", "/api/chat/stream", json=chat_body(), headers=user.headers)


async def test_a_stop_sent_to_another_process_stops_the_generation_at_once(
    processes: Processes,
    ollama_emulator: OllamaEmulator,
) -> None:
    ollama_emulator.config.reply_tokens = 500
    ollama_emulator.config.tokens_per_second = 50
    async with (
        processes() as (user, _, (a, b)),
        new_chat(a, user) as response,
    ):
        reader = EventReader(response)
        start = await reader.next()
        assert (await reader.next()).event == "token"
        answer_id = start.data["assistant_message_id"]
        started = time.perf_counter()
        stopped = await b.post(f"/api/chat/{answer_id}/stop", headers=user.headers)
        await ollama_emulator.wait_until(lambda: ollama_emulator.generations_cancelled == 1)
        elapsed = time.perf_counter() - started
        events = await reader.rest()
    assert stopped.status_code == 200, stopped.text
    message = stopped.json()["message"]
    assert (message["id"], message["status"]) == (answer_id, "stopped")
    assert message["content"].startswith("tok0")
    assert elapsed < 2.0  # Redis round trips on loopback: milliseconds
    assert events[-1].event == "done"
    assert events[-1].data["message"]["content"] == message["content"]


async def test_re_attaching_through_another_process_replays_and_follows(
    processes: Processes,
    ollama_emulator: OllamaEmulator,
) -> None:
    ollama_emulator.config.reply_tokens = 40
    ollama_emulator.config.tokens_per_second = 40
    async with processes() as (user, apps, (a, b)):
        async with new_chat(a, user) as response:
            reader = EventReader(response)
            seen = [await reader.next() for _ in range(4)]  # start + 3 tokens, then leave
        answer_id = seen[0].data["assistant_message_id"]
        last_seen = seen[-1].id
        assert last_seen is not None
        headers = {**user.headers, "Last-Event-ID": str(last_seen)}
        async with b.stream("GET", f"/api/chat/stream/{answer_id}", headers=headers) as resumed:
            assert resumed.status_code == 200
            rest = await EventReader(resumed).rest()
        async with asgi_client(apps[1]) as client:
            stored = await stored_conversation(client, user, seen[0].data["conversation_id"])
    ids = [event.id for event in rest]
    assert ids == list(range(last_seen + 1, last_seen + 1 + len(rest)))
    assert rest[-1].event == "done"
    tokens = [e.data["content"] for e in [*seen, *rest] if e.event == "token"]
    assert len(tokens) == 40
    assert "".join(tokens) == stored["messages"][-1]["content"]


async def drop_subscribers(redis: Any) -> int:
    """Close the pub/sub connections on `redis`'s database, as a Redis restart would. Only
    this database's: the server is shared with the other pytest-xdist workers (a database
    each), and `CLIENT KILL TYPE pubsub` would cut their relays mid-test too."""
    database = str(redis.connection_pool.connection_kwargs.get("db", 0))
    clients = await redis.client_list(_type="pubsub")
    ours = [client["id"] for client in clients if client["db"] == database]
    for client_id in ours:
        await redis.client_kill_filter(_id=client_id)
    return len(ours)


async def test_a_redis_blip_under_a_remote_follower_loses_no_event(
    redis_processes: Processes,
    ollama_emulator: OllamaEmulator,
) -> None:
    """Redis drops every subscriber mid-answer (a restart, a failover): the follower
    through process B asks again from the last event it has, and its client gets every
    token once, in order, with no error."""
    import redis.asyncio as aioredis

    ollama_emulator.config.reply_tokens = 60
    ollama_emulator.config.tokens_per_second = 20
    async with redis_processes() as (user, apps, (a, b)):
        async with new_chat(a, user) as response:
            reader = EventReader(response)
            start = await reader.next()
        answer_id = start.data["assistant_message_id"]
        async with b.stream("GET", f"/api/chat/stream/{answer_id}", headers=user.headers) as r:
            followed = EventReader(r)
            head = [await followed.next() for _ in range(5)]
            async with aioredis.Redis.from_url(require_redis()) as redis:
                assert await drop_subscribers(redis) >= 1
            rest = await followed.rest()
        async with asgi_client(apps[1]) as client:
            stored = await stored_conversation(client, user, start.data["conversation_id"])
    events = [*head, *rest]
    assert [e.id for e in events] == list(range(1, len(events) + 1))
    assert events[-1].event == "done"
    assert (
        "".join(e.data["content"] for e in events if e.event == "token")
        == (stored["messages"][-1]["content"])
    )


async def test_a_process_told_to_stop_ends_its_remote_follows_at_once_for_a_resume_elsewhere(
    processes: Processes,
    ollama_emulator: OllamaEmulator,
) -> None:
    """The answer runs on in process A; B, following it for a client, gets the stop signal:
    B's stream ends at once (not after B's grace) with an error under the last id it sent,
    and the client resumes from that id through A with nothing missing."""
    ollama_emulator.config.reply_tokens = 40
    ollama_emulator.config.tokens_per_second = 20
    async with processes(shutdown_grace_seconds=60) as (user, apps, (a, b)):
        async with new_chat(a, user) as response:
            start = await EventReader(response).next()
        answer_id = start.data["assistant_message_id"]
        async with b.stream("GET", f"/api/chat/stream/{answer_id}", headers=user.headers) as r:
            followed = EventReader(r)
            head = [await followed.next() for _ in range(4)]
            _registry(apps[1]).stop_signal(1)
            tail = await asyncio.wait_for(followed.rest(), 2)
        assert _registry(apps[0]).get(answer_id) is not None  # still generated by A
        last = tail[-1]
        assert (last.event, last.data["error"]) == ("error", "GENERATION_INTERRUPTED")
        assert "stopping" in last.data["message"]
        assert last.id is not None
        resume = {**user.headers, "Last-Event-ID": str(last.id)}
        async with a.stream("GET", f"/api/chat/stream/{answer_id}", headers=resume) as r:
            rest = await EventReader(r).rest()
    events = [*head, *tail[:-1], *rest]
    assert [e.id for e in events] == list(range(1, len(events) + 1))
    assert events[-1].event == "done"
    assert len([e for e in events if e.event == "token"]) == 40


async def _restart_redis(redis_server: RedisServer, apps: tuple[FastAPI, ...]) -> None:
    """kill -9 Redis and start it again (empty); return once every process listens again.
    The connections each process pooled before are dead, and nothing has told it yet."""
    relays = [_registry(app).relay for app in apps]
    redis_server.kill()
    deadline = time.monotonic() + 5
    while any(relay is not None and relay.listening.is_set() for relay in relays):
        assert time.monotonic() < deadline, "a relay did not notice Redis was gone"
        await asyncio.sleep(0.01)
    redis_server.start()
    for relay in relays:
        assert relay is not None
        await asyncio.wait_for(relay.listening.wait(), 5)


async def _follow_a_while(
    client: httpx.AsyncClient, user: TestUser, answer_id: str, events: int
) -> list[Any]:
    """Re-attach through `client`'s process, read `events` events and leave."""
    path = f"/api/chat/stream/{answer_id}"
    async with client.stream("GET", path, headers=user.headers) as response:
        assert response.status_code == 200, await response.aread()
        reader = EventReader(response)
        return [await reader.next() for _ in range(events)]


async def test_after_a_redis_restart_the_first_remote_stop_and_re_attach_reach_the_owner(
    redis_processes: Processes,
    ollama_emulator: OllamaEmulator,
    redis_server: RedisServer,
) -> None:
    """Both processes relayed before Redis was restarted, so each pools a connection that
    died with it: the first re-attach and the first stop through B after each restart
    still reach the owner (A), which still answers through its own dead connection."""
    ollama_emulator.config.reply_tokens = 500
    ollama_emulator.config.tokens_per_second = 50
    async with (
        redis_processes(redis_url=redis_server.url) as (user, apps, (a, b)),
        new_chat(a, user) as response,
    ):
        reader = EventReader(response)
        answer_id = (await reader.next()).data["assistant_message_id"]
        await _follow_a_while(b, user, answer_id, 3)

        await _restart_redis(redis_server, apps)
        head = await _follow_a_while(b, user, answer_id, 3)
        assert [event.event for event in head] == ["start", "token", "token"]

        await _restart_redis(redis_server, apps)
        stopped = await b.post(f"/api/chat/{answer_id}/stop", headers=user.headers)
        assert stopped.status_code == 200, stopped.text
        assert stopped.json()["message"]["status"] == "stopped"
        events = await reader.rest()
    assert events[-1].event == "done"


async def test_with_redis_down_a_host_s_processes_still_stop_and_re_attach(
    redis_down_processes: Processes,
    ollama_emulator: OllamaEmulator,
    redis_server: RedisServer,
) -> None:
    """Redis is configured but gone (a restart, an outage): the request goes to the host's
    processes through their sockets in DATA_DIR, so a stop still stops and a reload still
    follows its answer (before: 409 GENERATION_ELSEWHERE for both until Redis was back)."""
    ollama_emulator.config.reply_tokens = 500
    ollama_emulator.config.tokens_per_second = 50
    async with (
        redis_down_processes(redis_url=redis_server.url) as (user, _, (a, b)),
        new_chat(a, user) as response,
    ):
        reader = EventReader(response)
        answer_id = (await reader.next()).data["assistant_message_id"]
        redis_server.kill()
        head = await _follow_a_while(b, user, answer_id, 3)
        assert [event.event for event in head] == ["start", "token", "token"]
        assert head[0].data["assistant_message_id"] == answer_id
        stopped = await b.post(f"/api/chat/{answer_id}/stop", headers=user.headers)
        assert stopped.status_code == 200, stopped.text
        assert stopped.json()["message"]["status"] == "stopped"
        await ollama_emulator.wait_until(lambda: ollama_emulator.generations_cancelled == 1)
        events = await reader.rest()
    assert events[-1].event == "done"
    assert events[-1].data["message"]["content"] == stopped.json()["message"]["content"]


async def _vanish(relay: RelayBase | None) -> None:
    """The owner hears no request any more, nor forwards: its process vanished without a
    word (over Redis, its subscription stays; on the host, its socket file)."""
    vanished = []
    if isinstance(relay, GenerationRelay):
        assert relay._listener is not None
        vanished = [relay._listener, *relay._tasks]
        relay = relay.fallback  # the host's sockets, where the test left them
    if relay is not None:
        assert isinstance(relay, HostRelay)
        assert relay.sockets._server is not None
        relay.sockets._server.close()  # its file stays, and refuses connections, as a dead one's
        vanished += relay._tasks
    # Cancelled until they end: one cancel can be lost in redis-py's wait_for under Python
    # 3.11 (core/tasks.py), and the forward then ran to the answer's end.
    await cancel_until_ended(vanished, "the owner's relay", 5.0, logging.getLogger())
    assert all(task.done() for task in vanished)


async def test_the_follower_that_loses_the_owner_ends_under_the_last_id_it_got(
    processes: Processes,
    ollama_emulator: OllamaEmulator,
) -> None:
    """No owner answers any more (its process vanished without a word): the stream ends
    with an error event that repeats the last event id, so a reconnect resumes after it."""
    ollama_emulator.config.reply_tokens = 400
    ollama_emulator.config.tokens_per_second = 40
    async with processes() as (user, apps, (a, b)):
        async with new_chat(a, user) as response:
            start = await EventReader(response).next()
        answer_id = start.data["assistant_message_id"]
        async with b.stream("GET", f"/api/chat/stream/{answer_id}", headers=user.headers) as r:
            followed = EventReader(r)
            head = [await followed.next() for _ in range(3)]
            await _vanish(_registry(apps[0]).relay)
            rest = await followed.rest()
    assert rest[-1].event == "error"
    assert rest[-1].data["error"] == "GENERATION_INTERRUPTED"
    previous = rest[-2] if len(rest) > 1 else head[-1]
    assert rest[-1].id == previous.id


async def test_the_owner_stops_forwarding_when_the_remote_follower_leaves(
    processes: Processes,
    ollama_emulator: OllamaEmulator,
) -> None:
    ollama_emulator.config.reply_tokens = 300
    ollama_emulator.config.tokens_per_second = 30
    async with processes() as (user, apps, (a, b)):
        async with new_chat(a, user) as response:
            start = await EventReader(response).next()
        answer_id = start.data["assistant_message_id"]
        owner = _registry(apps[0]).relay
        assert owner is not None
        async with b.stream("GET", f"/api/chat/stream/{answer_id}", headers=user.headers) as r:
            reader = EventReader(r)
            assert (await reader.next()).event == "start"  # replayed from event 0
            assert (await reader.next()).event == "token"
            assert len(owner._tasks) == 1  # forwarding to b
        deadline = time.monotonic() + 3
        while owner._tasks:  # the next frame or keep-alive reaches nobody
            assert time.monotonic() < deadline, "the owner kept forwarding to nobody"
            await asyncio.sleep(0.05)
        generation = _registry(apps[0]).get(answer_id)
        assert generation is not None
        assert generation.running  # the answer goes on
        generation.stop()
        await generation.wait()


async def test_without_continue_on_disconnect_the_last_remote_client_leaving_stops_it(
    processes: Processes,
    ollama_emulator: OllamaEmulator,
) -> None:
    """CHAT_CONTINUE_ON_DISCONNECT=false: the first client leaves while another follows
    through process B (the answer goes on); when that one leaves too, the owner's next
    forward reaches nobody and the answer is stopped."""
    ollama_emulator.config.reply_tokens = 300
    ollama_emulator.config.tokens_per_second = 30
    off = {"chat_continue_on_disconnect": False, "chat_disconnect_grace_seconds": 0}
    async with processes(**off) as (user, apps, (a, b)):
        async with new_chat(a, user) as response:
            first = EventReader(response)  # kept: a dropped reader closes the stream
            start = await first.next()
            answer_id = start.data["assistant_message_id"]
            async with b.stream(
                "GET", f"/api/chat/stream/{answer_id}", headers=user.headers
            ) as resumed:
                reader = EventReader(resumed)
                assert (await reader.next()).event == "start"
                await response.aclose()  # the first client leaves
                await asyncio.sleep(0.3)
                generation = _registry(apps[0]).get(answer_id)
                assert generation is not None
                assert generation.running  # followed through B
        deadline = time.monotonic() + 3
        while generation.running:
            assert time.monotonic() < deadline, "nobody follows, yet the answer goes on"
            await asyncio.sleep(0.05)
        assert generation.status == "stopped"


async def test_a_redis_stall_under_a_remote_follower_neither_stops_nor_freezes_it(
    redis_processes: Processes,
    ollama_emulator: OllamaEmulator,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Redis stops answering for a moment (a slow disk, a failover): the owner's publishes
    time out. Each was taken for a follower that left: the forwarding ended for good (the
    client got keep-alives only, 45 s, before its follower asked again) and, with
    CHAT_CONTINUE_ON_DISCONNECT=false, the answer followed only through B was stopped."""
    from redis.exceptions import TimeoutError as RedisTimeout

    ollama_emulator.config.reply_tokens = 60
    ollama_emulator.config.tokens_per_second = 30
    off = {"chat_continue_on_disconnect": False, "chat_disconnect_grace_seconds": 0}
    async with redis_processes(**off) as (user, apps, (a, b)):
        owner = _registry(apps[0]).relay
        assert owner is not None
        send = owner._send
        stalled_until = 0.0

        async def stalling(channel: str, payload: bytes) -> int:
            if time.monotonic() < stalled_until:
                raise RedisTimeout("Timeout reading from 127.0.0.1:6379")
            return await send(channel, payload)

        monkeypatch.setattr(owner, "_send", stalling)
        async with new_chat(a, user) as response:
            first = EventReader(response)  # kept: a dropped reader closes the stream
            start = await first.next()
            answer_id = start.data["assistant_message_id"]
            async with b.stream(
                "GET", f"/api/chat/stream/{answer_id}", headers=user.headers
            ) as resumed:
                reader = EventReader(resumed)
                head = [await reader.next() for _ in range(3)]
                await response.aclose()  # the first client leaves: B's is the only one
                stalled_until = time.monotonic() + 0.5
                rest, took = await _timed(reader.rest())
        generation = _registry(apps[0]).get(answer_id)
        assert generation is not None
        await generation.wait()
        async with asgi_client(apps[1]) as client:
            stored = await stored_conversation(client, user, start.data["conversation_id"])
    events = [*head, *rest]
    assert generation.status == "complete"
    assert events[-1].event == "done"
    assert [e.id for e in events] == list(range(1, len(events) + 1))
    text = "".join(e.data["content"] for e in events if e.event == "token")
    assert text == stored["messages"][-1]["content"]
    assert took < 5  # 60 tokens at 30 a second, not a follower's whole patience


@pytest.mark.parametrize("carrier", ["redis", "host"])
async def test_a_client_following_through_another_process_gets_the_interrupted_answer(
    app_factory: Callable[..., Any],
    chat_settings: Callable[..., Any],
    live_server: Callable[[FastAPI], Any],
    ollama_emulator: OllamaEmulator,
    carrier: str,
) -> None:
    """The owner shuts down while a client follows its answer through process B: the
    answers end first (interrupted, with their text), then the relay closes, so that last
    event still reaches B's client. The owner's publishes are slowed: closing the relay
    must let its forwards finish, not cancel them as they send the last event."""
    ollama_emulator.config.reply_tokens = 300
    ollama_emulator.config.tokens_per_second = 30
    redis_url = require_redis() if carrier == "redis" else None
    settings = chat_settings(redis_url=redis_url, sse_keepalive_seconds=0.3)
    follower_app = await app_factory(settings)
    owner_app = create_app(settings)
    owner_lifespan = owner_app.router.lifespan_context(owner_app)
    await owner_lifespan.__aenter__()
    try:
        user = await create_test_user(owner_app)
        for app in (owner_app, follower_app):
            relay = _registry(app).relay
            assert relay is not None
            await asyncio.wait_for(relay.listening.wait(), 5)
        owner_relay = _registry(owner_app).relay
        if isinstance(owner_relay, GenerationRelay):
            publish = owner_relay._publish

            async def slow_publish(channel: str, payload: bytes) -> int | None:
                await asyncio.sleep(0.05)
                return await publish(channel, payload)

            owner_relay._publish = slow_publish  # type: ignore[method-assign]
        async with (
            live_server(owner_app) as owner_url,
            live_server(follower_app) as follower_url,
            httpx.AsyncClient(base_url=owner_url, timeout=10) as a,
            httpx.AsyncClient(base_url=follower_url, timeout=10) as b,
        ):
            async with new_chat(a, user) as response:
                reader = EventReader(response)
                start = await reader.next()
                await reader.next()
            answer_id = start.data["assistant_message_id"]
            path = f"/api/chat/stream/{answer_id}"
            async with b.stream("GET", path, headers=user.headers) as followed:
                remote = EventReader(followed)
                assert (await remote.next()).event == "start"
                await owner_lifespan.__aexit__(None, None, None)
                last = (await remote.until("error"))[-1]
        assert last.data["error"] == "GENERATION_INTERRUPTED"
        answer = last.data["details"]["assistant_message"]
        assert (answer["id"], answer["status"]) == (answer_id, "interrupted")
    finally:
        with contextlib.suppress(RuntimeError):  # already exited above, unless it failed
            await owner_lifespan.__aexit__(None, None, None)


async def _timed(awaitable: Awaitable[T]) -> tuple[T, float]:
    """What `awaitable` gave, and the seconds it took."""
    started = time.perf_counter()
    result = await awaitable
    return result, time.perf_counter() - started


async def _elsewhere_both_ways(
    client: httpx.AsyncClient, user: TestUser, message_id: str
) -> tuple[float, float]:
    """A stop and a re-attach of `message_id`, both 409 GENERATION_ELSEWHERE: the seconds
    each took."""
    stop, stop_took = await _timed(
        client.post(f"/api/chat/{message_id}/stop", headers=user.headers)
    )
    follow, follow_took = await _timed(
        client.get(f"/api/chat/stream/{message_id}", headers=user.headers)
    )
    for response in (stop, follow):
        assert (response.status_code, response.json()["error"]) == (409, "GENERATION_ELSEWHERE")
    return stop_took, follow_took


async def test_without_an_owner_the_answer_is_elsewhere_at_once(
    redis_processes: Processes,
) -> None:
    """A fresh unfinished answer no live process claims (its process just died): 409, as
    soon as every process listening said it does not hold it (not after a wait)."""
    import redis.asyncio as aioredis

    async with (
        redis_processes() as (user, apps, (_, b)),
        aioredis.Redis.from_url(require_redis()) as redis,
        redis.pubsub() as elsewhere,
    ):
        # A deployment on another database of this Redis (or a process of the version
        # before): it never answers, and must not be waited for.
        db = redis.connection_pool.connection_kwargs.get("db", 0)
        await elsewhere.subscribe(relay_module.control_channel(db + 1), "ollama-web:generations")
        await conversation_with_unfinished_answers(apps[1], user, {"c" * 32: 0.0})
        took = await _elsewhere_both_ways(b, user, "c" * 32)
    assert max(took) < 0.5, took


async def test_a_gone_process_s_subscription_costs_a_second_not_the_whole_wait(
    redis_processes: Processes,
) -> None:
    """A host that vanished without closing its connections: Redis still counts its
    subscription (until TCP gives up, minutes later), but it never answers, nor beats.
    Once the live processes said they do not hold the answer, a stop or a re-attach
    waits GONE_WAIT_SECONDS for it, not LISTENERS_WAIT_SECONDS (10 s each before)."""
    import redis.asyncio as aioredis

    async with (
        redis_processes() as (user, apps, (_, b)),
        aioredis.Redis.from_url(require_redis()) as redis,
        redis.pubsub() as gone,
    ):
        await gone.subscribe(_control_channel(redis))
        await redis.delete(alive_key(_control_channel(redis)))  # only this test's processes
        await asyncio.sleep(BEAT_SECONDS + 0.5)
        alive = await redis.zrange(alive_key(_control_channel(redis)), 0, -1)
        assert len(alive) == 2  # A and B beat
        await conversation_with_unfinished_answers(apps[1], user, {"g" * 32: 0.0})
        for took in await _elsewhere_both_ways(b, user, "g" * 32):
            assert GONE_WAIT_SECONDS * 0.9 < took < LISTENERS_WAIT_SECONDS / 2, took


STORM = 150


async def test_a_storm_of_re_attaches_through_another_process_all_follow_the_owner(
    processes: Processes, ollama_emulator: OllamaEmulator
) -> None:
    """150 clients re-attach at once through process B while A generates the answer, then
    a stop goes through B. However long the owner's acknowledgements take under that load
    (over a second under coverage on a busy machine), and however many forwards compete
    with them for Redis connections, none is taken for the absence of an owner (409
    GENERATION_ELSEWHERE): every client follows the owner's live events to the stopped
    answer's `done`."""
    ollama_emulator.config.reply_tokens = 1000
    # Runs until stopped. Slow, so that what is measured is the acknowledgements under the
    # storm, not how fast one test process can parse 150 copies of a fast stream (under
    # coverage, beside another test worker, that took minutes).
    ollama_emulator.config.tokens_per_second = 10
    limits = httpx.Limits(max_connections=STORM + 10)
    async with processes() as (user, _, (a, b)), new_chat(a, user) as response:
        reader = EventReader(response)
        answer_id = (await reader.next()).data["assistant_message_id"]
        assert (await reader.next()).event == "token"
        path = f"/api/chat/stream/{answer_id}"
        attached: list[int] = []
        async with httpx.AsyncClient(base_url=b.base_url, timeout=60, limits=limits) as storm:

            async def follow(after: int) -> tuple[int, list[Any]]:
                headers = {**user.headers, "Last-Event-ID": str(after)}
                async with storm.stream("GET", path, headers=headers) as resumed:
                    if resumed.status_code != 200:
                        attached.append(resumed.status_code)
                        return resumed.status_code, [await resumed.aread()]
                    followed = EventReader(resumed)
                    head = [await followed.next()]  # replayed, or live: it is attached
                    attached.append(200)
                    return 200, [*head, *await followed.rest()]

            follows = [asyncio.ensure_future(follow(i % 3)) for i in range(STORM)]
            while len(attached) < STORM and not any(f.done() for f in follows):
                await asyncio.sleep(0.05)  # a follow that failed ends the wait: gather says why
            stopped = await storm.post(f"/api/chat/{answer_id}/stop", headers=user.headers)
            followed = await asyncio.gather(*follows)
        final = (await reader.rest())[-1]
    refused = [body for status, body in followed if status != 200]
    assert refused == [], f"{len(refused)} of {STORM} refused, first: {refused[0]!r}"
    assert stopped.status_code == 200, stopped.text
    assert stopped.json()["message"]["status"] == "stopped"
    assert (final.event, final.data["message"]["status"]) == ("done", "stopped")
    for _, events in followed:
        ids = [event.id for event in events]
        assert ids == sorted(set(ids))
        assert (events[-1].id, events[-1].event, events[-1].data) == (
            final.id,
            final.event,
            final.data,
        )


@pytest.mark.parametrize("request_kind", ["stop", "follow"])
async def test_an_answer_swept_as_interrupted_while_its_owner_generates_is_reached(
    processes: Processes, ollama_emulator: OllamaEmulator, request_kind: str
) -> None:
    """The owner lost the database longer than the lease (a partition): another process
    swept its answer as interrupted. A stop must still stop it (not answer 200 from the
    stored row while it runs on), and a re-attach follow it, through the relay."""
    ollama_emulator.config.reply_tokens = 500
    ollama_emulator.config.tokens_per_second = 50
    async with (
        processes() as (user, apps, (a, b)),
        new_chat(a, user) as response,
    ):
        reader = EventReader(response)
        answer_id = (await reader.next()).data["assistant_message_id"]
        assert (await reader.next()).event == "token"
        swept = update(Message).where(Message.id == answer_id).values(status="interrupted")
        await execute_sql(apps[1], swept)
        if request_kind == "stop":
            stopped = await b.post(f"/api/chat/{answer_id}/stop", headers=user.headers)
            await ollama_emulator.wait_until(lambda: ollama_emulator.generations_cancelled == 1)
            assert stopped.status_code == 200, stopped.text
            assert stopped.json()["message"]["status"] == "stopped"
        else:
            path = f"/api/chat/stream/{answer_id}"
            async with b.stream("GET", path, headers=user.headers) as followed:
                remote = EventReader(followed)
                assert (await remote.next()).event == "start"
                assert (await remote.next()).event == "token"  # live, not the stored row
            await a.post(f"/api/chat/{answer_id}/stop", headers=user.headers)
        assert (await reader.rest())[-1].data["message"]["status"] == "stopped"


async def test_an_interrupted_answer_no_process_claims_is_answered_from_storage(
    processes: Processes,
) -> None:
    """The usual interrupted answer (its process died): stop and re-attach answer what is
    stored, after the relay's short wait for an owner (not 409)."""
    async with processes() as (user, apps, (_, b)):
        await conversation_with_unfinished_answers(apps[1], user, {"d" * 32: 0.0})
        swept = update(Message).where(Message.id == "d" * 32).values(status="interrupted")
        await execute_sql(apps[1], swept)
        stop = await b.post(f"/api/chat/{'d' * 32}/stop", headers=user.headers)
        follow = await b.get(f"/api/chat/stream/{'d' * 32}", headers=user.headers)
    assert (stop.status_code, stop.json()["message"]["status"]) == (200, "interrupted")
    assert follow.status_code == 200
    assert "half an answer d" in follow.text


async def _stored_answer(app: FastAPI, message_id: str) -> tuple[str, str]:
    """The answer's status and text, as stored."""
    query = select(Message.status, Message.content).where(Message.id == message_id)
    status, content = (await execute_sql(app, query)).one()
    return status, content


def _host_relay(app: FastAPI) -> HostRelay | None:
    """The process's relay over the host's sockets (beside Redis's, or alone)."""
    relay = _registry(app).relay
    host = relay.fallback if isinstance(relay, GenerationRelay) else relay
    assert host is None or isinstance(host, HostRelay)
    return host


def _dead_process_socket(app: FastAPI) -> Path:
    """The socket file a process killed with kill -9 leaves in the host's relay directory:
    it refuses connections."""
    host = _host_relay(app)
    assert host is not None
    path = host.sockets.directory / f"{HOST_TAG}-99999-{'0' * 12}.sock"
    with socket.socket(socket.AF_UNIX) as dead:
        dead.bind(host.sockets.address(path.name))
    return path


@pytest.mark.parametrize("carrier", ["host", "redis and host", "redis down"])
async def test_the_answer_of_a_killed_process_is_answered_as_stored_interrupted(
    app_factory: Callable[..., Any],
    chat_settings: Callable[..., Any],
    live_server: Callable[[FastAPI], Any],
    db_backend: str,
    carrier: str,
) -> None:
    """Its process was killed (kill -9): its answer is `streaming`, written 10 s ago (over
    `unclaimed_seconds`, 6 s), and its socket refuses connections. On SQLite (one host) a
    stop and a re-attach answer the answer as stored, `interrupted`, at once; on
    PostgreSQL (a process on another host may hold it) 409 until the sweep."""
    async with two_processes(app_factory, chat_settings, live_server, carrier=carrier) as (
        user,
        apps,
        (_, b),
    ):
        dead = _dead_process_socket(apps[1])
        answer_id = "k" * 32
        await conversation_with_unfinished_answers(apps[1], user, {answer_id: 10.0})
        stop, stop_took = await _timed(b.post(f"/api/chat/{answer_id}/stop", headers=user.headers))
        follow = await b.get(f"/api/chat/stream/{answer_id}", headers=user.headers)
        stored = await _stored_answer(apps[0], answer_id)
    if db_backend == "postgres":
        for response in (stop, follow):
            assert (response.status_code, response.json()["error"]) == (
                409,
                "GENERATION_ELSEWHERE",
            )
        assert stored == ("streaming", "half an answer k")
        return
    assert not dead.exists()  # met, and removed
    assert stop.status_code == 200, stop.text
    message = stop.json()["message"]
    assert (message["status"], message["content"]) == ("interrupted", "half an answer k")
    assert stop_took < 1.0
    assert follow.status_code == 200, follow.text
    events = parse_events(follow.content)
    assert [e.event for e in events] == ["start", "token", "error"]
    assert events[1].data["content"] == "half an answer k"
    assert events[-1].data["error"] == "GENERATION_INTERRUPTED"
    assert stored == ("interrupted", "half an answer k")


async def test_a_question_after_the_answer_of_a_killed_process_is_answered(
    processes: Processes, db_backend: str
) -> None:
    """The conversation ends with the answer of a killed process, still `streaming`. A new
    question was 409 ANSWER_IN_PROGRESS until the sweep. On SQLite, with the host's
    sockets, no process holds it: it is stored `interrupted` and the question answered
    after it. On PostgreSQL (another host's process may hold it), or when only Redis
    was asked, 409 stands."""
    answer_id = "q" * 32
    async with processes() as (user, apps, (_, b)):
        conversation_id = await conversation_with_unfinished_answers(
            apps[1], user, {answer_id: 10.0}
        )
        leaf = Conversation.__table__.update().values(active_leaf_id=answer_id)
        await execute_sql(apps[1], leaf.where(Conversation.id == conversation_id))
        body = chat_body(conversation_id=conversation_id)
        response = await b.post("/api/chat/message", json=body, headers=user.headers)
        stored = await _stored_answer(apps[0], answer_id)
    if db_backend == "postgres" or _host_relay(apps[1]) is None:
        assert response.status_code == 409, response.text
        assert response.json()["error"] == "ANSWER_IN_PROGRESS"
        assert stored == ("streaming", "half an answer q")
        return
    assert response.status_code == 200, response.text
    assert response.json()["user_message"]["parent_id"] == answer_id
    assert response.json()["assistant_message"]["status"] == "complete"
    assert stored == ("interrupted", "half an answer q")


async def test_a_question_after_an_answer_another_process_generates_is_refused(
    processes: Processes, ollama_emulator: OllamaEmulator
) -> None:
    """Its process holds it, though its row reads as unwritten for a minute (written by
    another host's clock, or the database lost for a while): the question is 409
    ANSWER_IN_PROGRESS, and the answer runs on to its end."""
    ollama_emulator.config.first_token_delay = 1.0
    ollama_emulator.config.reply_tokens = 5
    async with processes() as (user, apps, (a, b)), new_chat(a, user) as response:
        reader = EventReader(response)
        start = (await reader.next()).data
        answer_id = start["assistant_message_id"]
        long_ago = utcnow() - timedelta(seconds=60)
        backdated = update(Message).where(Message.id == answer_id).values(updated_at=long_ago)
        await execute_sql(apps[1], backdated)
        body = chat_body(conversation_id=start["conversation_id"], content="and then?")
        refused = await b.post("/api/chat/message", json=body, headers=user.headers)
        events = await reader.rest()
    assert refused.status_code == 409, refused.text
    assert refused.json()["error"] == "ANSWER_IN_PROGRESS"
    assert (events[-1].event, events[-1].data["message"]["status"]) == ("done", "complete")


async def test_a_fresh_unclaimed_answer_or_a_silent_process_keeps_it_elsewhere(
    processes: Processes, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Not interrupted while it may still be generated: a row written within
    `unclaimed_seconds` (6 s; a process the host's sockets do not reach writes within it),
    or one a live process of the host may hold: it takes the connection and does not answer
    (stopped, or too busy), or ends it without an answer (a version before `has`)."""
    monkeypatch.setattr(host_relay_module, "LISTENERS_WAIT_SECONDS", 0.3)
    held: list[asyncio.StreamWriter] = []

    def silent(_: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        held.append(writer)

    async def mute(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readline()
        writer.close()

    stale = {"s" * 32: 10.0, "m" * 32: 10.0}
    async with processes() as (user, apps, (_, b)):
        await conversation_with_unfinished_answers(apps[1], user, {"f" * 32: 4.0, **stale})
        await _elsewhere_both_ways(b, user, "f" * 32)
        host = _host_relay(apps[1])
        if host is not None:  # over Redis alone, the host's sockets are closed
            for message_id, peer in zip(stale, (silent, mute), strict=True):
                name = f"{HOST_TAG}-99998-{message_id[:12]}.sock"
                server = await asyncio.start_unix_server(peer, host.sockets.address(name))
                async with server:
                    await _elsewhere_both_ways(b, user, message_id)
                    for writer in held:
                        writer.close()
        for message_id in ("f" * 32, *stale):
            assert (await _stored_answer(apps[0], message_id))[0] == "streaming"


async def test_a_silent_process_is_waited_for_once_not_twice(
    host_processes: Processes, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A live process of the host that does not answer (stopped, or busy): a stop or
    re-attach of an answer no process claims waited LISTENERS_WAIT_SECONDS for it to
    acknowledge, then as long again for it to say whether it holds the answer (`has`):
    20 s by default before the 409. It is waited for once."""
    monkeypatch.setattr(host_relay_module, "LISTENERS_WAIT_SECONDS", 1.0)
    held: list[asyncio.StreamWriter] = []

    def silent(_: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        held.append(writer)

    message_id = "q" * 32
    async with host_processes() as (user, apps, (_, b)):
        host = _host_relay(apps[1])
        assert host is not None
        await conversation_with_unfinished_answers(apps[1], user, {message_id: 10.0})
        name = f"{HOST_TAG}-99998-{message_id[:12]}.sock"
        server = await asyncio.start_unix_server(silent, host.sockets.address(name))
        async with server:
            took = await _elsewhere_both_ways(b, user, message_id)
            for writer in held:
                writer.close()
        assert (await _stored_answer(apps[0], message_id))[0] == "streaming"
    for seconds in took:
        assert 1.0 <= seconds < 1.8, took


async def test_a_remote_follower_past_a_running_answer_s_end_gets_its_final_event(
    processes: Processes, ollama_emulator: OllamaEmulator
) -> None:
    """As a local one does (tests/chat/test_durable.py): re-attached through another
    process with an id the answer never reaches, the stream ends with the final event."""
    ollama_emulator.config.reply_tokens = 500
    ollama_emulator.config.tokens_per_second = 40  # never ends by itself here: stopped
    async with processes() as (user, _, (a, b)), new_chat(a, user) as response:
        reader = EventReader(response)
        answer_id = (await reader.next()).data["assistant_message_id"]
        assert (await reader.next()).event == "token"
        past = {**user.headers, "Last-Event-ID": "100000"}
        async with b.stream("GET", f"/api/chat/stream/{answer_id}", headers=past) as resumed:
            assert resumed.status_code == 200
            stopped = await a.post(f"/api/chat/{answer_id}/stop", headers=user.headers)
            assert stopped.status_code == 200
            rest = await EventReader(resumed).rest()
        final = (await reader.rest())[-1]
    assert (final.event, final.data["message"]["status"]) == ("done", "stopped")
    assert [(e.id, e.event, e.data) for e in rest] == [(final.id, final.event, final.data)]


async def _chat_until_not_refused(client: httpx.AsyncClient, user: TestUser) -> httpx.Response:
    """A chat through `client`, asked again while 429: a slot held through Redis is given
    back in the background, just after its answer ends."""
    for _ in range(50):
        answered = await client.post("/api/chat/message", json=chat_body(), headers=user.headers)
        if answered.status_code != 429:
            break
        await asyncio.sleep(0.02)
    return answered


async def test_the_per_user_generation_limit_holds_across_processes(
    processes: Processes,
    ollama_emulator: OllamaEmulator,
) -> None:
    await _limit_holds_across(processes, ollama_emulator)


async def test_with_redis_down_the_per_user_generation_limit_holds_across_a_host_s_processes(
    redis_down_processes: Processes,
    ollama_emulator: OllamaEmulator,
) -> None:
    """Before, each process counted its own while Redis was unreachable: N workers, N times
    MAX_CONCURRENT_GENERATIONS_PER_USER."""
    await _limit_holds_across(redis_down_processes, ollama_emulator)


async def _limit_holds_across(processes: Processes, ollama_emulator: OllamaEmulator) -> None:
    ollama_emulator.config.reply_tokens = 500
    ollama_emulator.config.tokens_per_second = 50
    async with processes(max_concurrent_generations_per_user=1) as (user, _, (a, b)):
        async with new_chat(a, user) as response:
            reader = EventReader(response)
            answer_id = (await reader.next()).data["assistant_message_id"]
            refused = await b.post("/api/chat/message", json=chat_body(), headers=user.headers)
            assert refused.status_code == 429, refused.text
            assert refused.json()["error"] == "TOO_MANY_GENERATIONS"
            stopped = await a.post(f"/api/chat/{answer_id}/stop", headers=user.headers)
            assert stopped.status_code == 200
            await reader.rest()
        ollama_emulator.config.reply_tokens = 3
        ollama_emulator.config.tokens_per_second = 0
        answered = await _chat_until_not_refused(b, user)
        assert answered.status_code == 200, answered.text


async def test_deleting_a_conversation_through_another_process_stops_its_answer(
    processes: Processes,
    ollama_emulator: OllamaEmulator,
) -> None:
    ollama_emulator.config.reply_tokens = 500
    ollama_emulator.config.tokens_per_second = 50
    async with processes(max_concurrent_generations_per_user=1) as (user, apps, (a, b)):
        async with new_chat(a, user) as response:
            reader = EventReader(response)
            start = await reader.next()
            assert (await reader.next()).event == "token"
            path = f"/api/conversations/{start.data['conversation_id']}"
            deleted = await b.delete(path, headers=user.headers)
            assert deleted.status_code == 204, deleted.text
            assert _registry(apps[0]).running_ids == frozenset()  # ended before the 204
            assert apps[0].state.gateway.registry.nodes[0].in_flight == 0
            events = await reader.rest()
        await ollama_emulator.wait_until(lambda: ollama_emulator.generations_cancelled == 1)
        ollama_emulator.config.reply_tokens = 3
        ollama_emulator.config.tokens_per_second = 0
        answered = await _chat_until_not_refused(b, user)
        assert answered.status_code == 200, answered.text
        assert (await a.get(path, headers=user.headers)).status_code == 404
    assert events[-1].event == "done"
    message = events[-1].data["message"]
    assert (message["id"], message["status"]) == (start.data["assistant_message_id"], "stopped")
    assert message["content"].startswith("tok0")


async def test_deleting_a_user_through_another_process_stops_their_answers(
    processes: Processes,
    ollama_emulator: OllamaEmulator,
) -> None:
    ollama_emulator.config.reply_tokens = 500
    ollama_emulator.config.tokens_per_second = 50
    async with processes() as (user, apps, (a, b)):
        admin = await create_test_user(apps[1], "admin")
        async with new_chat(a, user) as response:
            reader = EventReader(response)
            assert (await reader.next()).event == "start"
            assert (await reader.next()).event == "token"
            deleted = await b.delete(f"/api/admin/users/{user.id}", headers=admin.headers)
            assert deleted.status_code == 204, deleted.text
            assert _registry(apps[0]).running_ids == frozenset()
            events = await reader.rest()
        await ollama_emulator.wait_until(lambda: ollama_emulator.generations_cancelled == 1)
    assert events[-1].event == "done"
    assert events[-1].data["message"]["status"] == "stopped"


class _NoAnswers:
    """A registry holding no generation: this process owns nothing."""

    def get(self, message_id: str) -> None:
        return None


def _control_channel(redis: Any) -> str:
    return relay_module.control_channel(redis.connection_pool.connection_kwargs.get("db", 0))


@asynccontextmanager
async def _fake_owner(
    redis: Any, acknowledge_again: bool, answered: list[str], first_after: float = 0.0
) -> AsyncIterator[None]:
    """An owner on the control channel: acknowledges the first follow `first_after` seconds
    late (then falls silent); later follows are acknowledged half a second late, or
    answered `N` (it no longer holds the answer)."""

    subscribed = asyncio.Event()
    alive = alive_key(_control_channel(redis))

    async def serve() -> None:
        async with redis.pubsub(ignore_subscribe_messages=True) as pubsub:
            await redis.zadd(alive, {b"fake-owner": time.time()})  # a live process
            await pubsub.subscribe(_control_channel(redis))
            subscribed.set()
            async for message in pubsub.listen():
                request = json.loads(message["data"])
                answered.append(request["reply"])
                if len(answered) == 1:
                    await asyncio.sleep(first_after)
                    await redis.publish(request["reply"], b"A")
                elif acknowledge_again:
                    await asyncio.sleep(0.5)
                    await redis.publish(request["reply"], b"A")
                else:
                    await redis.publish(request["reply"], b"Nfake-owner")

    task = asyncio.get_running_loop().create_task(serve())
    await asyncio.wait_for(subscribed.wait(), 10)
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await redis.zrem(alive, b"fake-owner")


async def test_a_client_leaving_while_its_follow_is_asked_again_unsubscribes() -> None:
    """The owner fell silent and the follower asks again; the client leaves meanwhile: the
    reply channel is unsubscribed all the same, so the owner sees nobody there."""
    import redis.asyncio as aioredis

    async with aioredis.Redis.from_url(require_redis()) as redis:
        replies: list[str] = []
        async with _fake_owner(redis, acknowledge_again=True, answered=replies):
            follower = GenerationRelay(require_redis(), _NoAnswers(), keepalive_seconds=0.1)  # type: ignore[arg-type]
            try:
                log = await follower.follow("m" * 32, 0)
                assert log is not None
                while len(replies) < 2:  # silence for 3 keep-alives: it asks again
                    await asyncio.sleep(0.02)
                await asyncio.sleep(0.1)  # inside the second ask, waiting for the owner
                assert log.on_abandoned is not None
                log.on_abandoned()
                await asyncio.sleep(0.9)
                subscribers = dict(await redis.pubsub_numsub(replies[1]))
            finally:
                await follower.aclose()
    assert subscribers[replies[1].encode()] == 0


async def test_a_follower_that_got_nothing_before_losing_the_owner_sends_no_id() -> None:
    """Ids count from 1: an error after no event at all carries no `id:` (a reconnect then
    replays from the start)."""
    import redis.asyncio as aioredis

    async with (
        aioredis.Redis.from_url(require_redis()) as redis,
        _fake_owner(redis, acknowledge_again=False, answered=[]),
    ):
        follower = GenerationRelay(require_redis(), _NoAnswers(), keepalive_seconds=0.1)  # type: ignore[arg-type]
        try:
            log = await follower.follow("m" * 32, 0)
            assert log is not None
            for _ in range(200):
                if log.finished:
                    break
                await asyncio.sleep(0.05)
        finally:
            await follower.aclose()
    assert log.finished
    (frame,) = log.frames
    assert frame.startswith(b"event: error\n")


async def test_a_relay_closed_at_any_point_of_its_subscribe_ends_its_listener() -> None:
    """A server whose port was taken stops right after its start, its relay's listener still
    subscribing. Under Python 3.11 a cancel landing as redis-py's send completes was lost
    (asyncio.wait_for): the listener listened for good and the shutdown waited for it.
    Closed after each count of loop turns through the subscribe, the relay ends its listener
    every time (never a task left to the loop's own shutdown)."""
    left: list[tuple[int, str]] = []
    listening_at_close, turns = 0, 0
    while listening_at_close < 5 and turns < 200 and not left:
        relay = GenerationRelay(require_redis(), _NoAnswers(), keepalive_seconds=1)  # type: ignore[arg-type]
        relay.start()
        (listener,) = [t for t in asyncio.all_tasks() if t.get_name() == "generation-relay"]
        for _ in range(turns):
            await asyncio.sleep(0)
        listening_at_close = listening_at_close + 1 if relay.listening.is_set() else 0
        try:
            async with asyncio.timeout(5):
                await relay.aclose()
            if not listener.done():
                left.append((turns, "left running"))
        except TimeoutError:
            left.append((turns, "the close waited for it for good"))
        finally:
            while not listener.done():  # this test never leaves it to the loop's teardown
                listener.cancel()
                await asyncio.wait([listener], timeout=0.1)
        turns += 1
    assert left == []
    assert listening_at_close == 5, turns  # the sweep went through the whole subscribe


async def test_a_redis_client_failing_to_close_does_not_fail_the_relay_s_close(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """redis-py's own TimeoutError is no builtin TimeoutError: it must not escape a shutdown."""
    from redis.exceptions import TimeoutError as RedisTimeout

    relay = GenerationRelay(require_redis(), _NoAnswers(), keepalive_seconds=1)  # type: ignore[arg-type]
    relay.start()
    await asyncio.wait_for(relay.listening.wait(), 5)
    closed = relay._replies.aclose

    async def failing_close() -> None:
        await closed()
        raise RedisTimeout("Timeout closing connection")

    relay._replies.aclose = failing_close  # type: ignore[method-assign]
    with caplog.at_level(logging.WARNING, logger="ollama_web.chat.relay"):
        await relay.aclose()
    assert "failed to close: Timeout closing connection" in caplog.text


async def test_an_owner_acknowledging_late_is_followed_not_taken_for_absent() -> None:
    """The owner's `A` comes 2.5 s late (a loaded process): the follow waits for it (the
    listener has not answered `N`), however long past the second it once waited, and
    though a gone process's subscription is there too (it is what waits GONE_WAIT_SECONDS
    only: the owner is alive)."""
    import redis.asyncio as aioredis

    async with aioredis.Redis.from_url(require_redis()) as redis, redis.pubsub() as gone:
        await gone.subscribe(_control_channel(redis))
        replies: list[str] = []
        async with _fake_owner(redis, acknowledge_again=False, answered=replies, first_after=2.5):
            follower = GenerationRelay(require_redis(), _NoAnswers(), keepalive_seconds=5)  # type: ignore[arg-type]
            try:
                log, took = await _timed(follower.follow("m" * 32, 0))
            finally:
                await follower.aclose()
    assert log is not None
    assert took >= 2.5
