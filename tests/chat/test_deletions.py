"""Deleting a conversation or a user stops its answers being generated (see
`ollama_web.chat.deletions`): the upstream is closed, the job ends, its slot and its node's
in-flight count are given back, and every attached stream ends with the `done` event of a
stopped answer. Real uvicorn on loopback, the emulator as Ollama."""

from __future__ import annotations

import time
from collections.abc import Callable
from contextlib import AsyncExitStack
from datetime import timedelta
from typing import Any, cast

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import Executable, delete, update

from ollama_web.chat.registry import GenerationRegistry
from ollama_web.core.config import Settings
from ollama_web.db import Conversation, User, UserSession
from ollama_web.db.base import utcnow
from ollama_web.emulator import OllamaEmulator
from tests.chat.conftest import (
    Event,
    EventReader,
    chat_body,
    conversation_with_unfinished_answers,
    streamed_chat,
    text_of,
)
from tests.fixtures.auth import TestUser, create_test_user, execute_sql, login_session
from tests.fixtures.logs import app_warnings
from tests.ollama.faults import closed_port_url


def _registry(app: FastAPI) -> GenerationRegistry:
    registry: GenerationRegistry = app.state.generations
    return registry


def _in_flight(app: FastAPI) -> int:
    return sum(node.in_flight for node in app.state.gateway.registry.nodes)


def _long_replies(emulator: OllamaEmulator) -> None:
    emulator.config.reply_tokens = 500
    emulator.config.tokens_per_second = 40  # 12.5 s: never ends by itself in a test


def _short_replies(emulator: OllamaEmulator) -> None:
    emulator.config.reply_tokens = 3
    emulator.config.tokens_per_second = 0


async def _started(stack: AsyncExitStack, http: httpx.AsyncClient, user: TestUser) -> EventReader:
    """A chat in a new conversation, its response kept open on `stack`, read up to its
    first token."""
    response = await stack.enter_async_context(
        http.stream("POST", "/api/chat/stream", json=chat_body(), headers=user.headers)
    )
    reader = EventReader(response)
    assert (await reader.next()).event == "start"
    assert (await reader.next()).event == "token"
    return reader


async def _attached(
    stack: AsyncExitStack, http: httpx.AsyncClient, user: TestUser, answer_id: str
) -> EventReader:
    """Another client following the answer."""
    response = await stack.enter_async_context(
        http.stream("GET", f"/api/chat/stream/{answer_id}", headers=user.headers)
    )
    reader = EventReader(response)
    assert (await reader.next()).event == "start"
    return reader


def _ended_stopped(events: list[Event]) -> dict[str, Any]:
    """The message of the `done` event ending `events`, which must be a stopped answer."""
    assert events[-1].event == "done", events[-1]
    message: dict[str, Any] = events[-1].data["message"]
    assert message["status"] == "stopped"
    return message


async def test_deleting_a_conversation_stops_its_answer_and_gives_back_the_slot(
    app_factory: Callable[..., Any],
    chat_settings: Callable[..., Settings],
    live_server: Callable[[FastAPI], Any],
    ollama_emulator: OllamaEmulator,
) -> None:
    app = await app_factory(chat_settings(max_concurrent_generations_per_user=1))
    user = await create_test_user(app)
    _long_replies(ollama_emulator)
    with app_warnings() as warnings:
        async with (
            live_server(app) as base_url,
            httpx.AsyncClient(base_url=base_url, timeout=10) as http,
            AsyncExitStack() as stack,
        ):
            reader = await _started(stack, http, user)
            start = reader.seen[0].data
            other = await _attached(stack, http, user, start["assistant_message_id"])
            deleted = await http.delete(
                f"/api/conversations/{start['conversation_id']}", headers=user.headers
            )
            assert deleted.status_code == 204, deleted.text
            # Ended before the 204: the node is free, and so is the user's only slot.
            assert _registry(app).running_ids == frozenset()
            assert _in_flight(app) == 0
            _short_replies(ollama_emulator)
            again = await http.post("/api/chat/message", json=chat_body(), headers=user.headers)
            assert again.status_code == 200, again.text
            await ollama_emulator.wait_until(lambda: ollama_emulator.generations_cancelled == 1)
            events, other_events = await reader.rest(), await other.rest()
            gone = await http.get(
                f"/api/conversations/{start['conversation_id']}", headers=user.headers
            )
    message = _ended_stopped(reader.seen)
    assert _ended_stopped(other.seen) == message
    assert message["id"] == start["assistant_message_id"]
    assert message["content"] == text_of(reader.seen)
    assert len(events) < 100  # stopped, not run to its 500 tokens
    assert other_events[-1] == events[-1]
    assert gone.status_code == 404
    assert warnings == []


@pytest.mark.parametrize(
    ("method", "path", "status"),
    [
        ("DELETE", "/api/conversations/{conversation_id}", 204),
        ("POST", "/api/chat/{assistant_message_id}/stop", 200),
    ],
)
async def test_a_stop_whose_session_records_activity_lets_the_answer_be_stored(
    app_factory: Callable[..., Any],
    chat_settings: Callable[..., Settings],
    live_server: Callable[[FastAPI], Any],
    ollama_emulator: OllamaEmulator,
    method: str,
    path: str,
    status: int,
) -> None:
    """A browser session's activity is written in the request's transaction (at most once a
    minute). On SQLite that write holds the database lock until the request ends: were it
    held while the stopped answer stores its text, that final write would wait out the busy
    timeout twice (10 s) and fail. Deleting the conversation and the stop button alike: the
    answer ends stopped and stored, at once."""
    app = await app_factory(chat_settings())
    user = await create_test_user(app)
    _long_replies(ollama_emulator)
    with app_warnings() as warnings:
        async with (
            live_server(app) as base_url,
            httpx.AsyncClient(base_url=base_url, timeout=30) as http,
        ):
            csrf = {"X-CSRF-Token": await login_session(http, user)}
            async with http.stream(
                "POST", "/api/chat/stream", json=chat_body(), headers=csrf
            ) as response:
                reader = EventReader(response)
                start = (await reader.next()).data
                assert (await reader.next()).event == "token"
                a_while_ago = utcnow() - timedelta(minutes=5)
                await execute_sql(app, update(UserSession).values(last_seen_at=a_while_ago))
                sent = time.monotonic()
                answered = await http.request(method, path.format(**start), headers=csrf)
                elapsed = time.monotonic() - sent
                await reader.rest()
    assert answered.status_code == status, answered.text
    assert elapsed < 2.0
    assert _ended_stopped(reader.seen)["content"] == text_of(reader.seen)
    assert warnings == []


@pytest.mark.parametrize(
    ("method", "body", "status"),
    [("DELETE", None, 204), ("PATCH", {"is_active": False}, 200)],
    ids=["deleted", "disabled"],
)
async def test_deleting_or_disabling_a_user_stops_every_answer_of_theirs_and_no_other(
    app_factory: Callable[..., Any],
    chat_settings: Callable[..., Settings],
    live_server: Callable[[FastAPI], Any],
    ollama_emulator: OllamaEmulator,
    method: str,
    body: dict[str, Any] | None,
    status: int,
) -> None:
    app = await app_factory(chat_settings(max_concurrent_generations_per_user=2))
    admin = await create_test_user(app, "admin")
    user, bystander = await create_test_user(app), await create_test_user(app)
    _long_replies(ollama_emulator)
    registry = _registry(app)
    with app_warnings() as warnings:
        async with (
            live_server(app) as base_url,
            httpx.AsyncClient(base_url=base_url, timeout=10) as http,
            AsyncExitStack() as stack,
        ):
            readers = [await _started(stack, http, user) for _ in range(2)]
            theirs = await _started(stack, http, bystander)
            path = f"/api/admin/users/{user.id}"
            ended = await http.request(method, path, json=body, headers=admin.headers)
            assert ended.status_code == status, ended.text
            kept = theirs.seen[0].data["assistant_message_id"]
            assert registry.running_ids == {kept}
            assert user.id not in registry._reservations  # both slots given back
            assert _in_flight(app) == 1
            await ollama_emulator.wait_until(lambda: ollama_emulator.generations_cancelled == 2)
            for reader in readers:
                await reader.rest()
            assert (await theirs.next()).event == "token"  # the bystander's goes on
            assert (await http.post(f"/api/chat/{kept}/stop", headers=bystander.headers)).is_success
    for reader in readers:
        assert _ended_stopped(reader.seen)["content"] == text_of(reader.seen)
    assert warnings == []


async def test_a_deletion_succeeds_when_its_answers_cannot_be_reached(
    app_factory: Callable[..., Any],
    chat_settings: Callable[..., Settings],
    live_server: Callable[[FastAPI], Any],
    ollama_emulator: OllamaEmulator,
) -> None:
    """Redis is down: an answer another process would be generating cannot be asked to
    stop; the user's deletion goes on all the same (204, not 500), and the answer this
    process generates is stopped."""
    redis_down = closed_port_url().replace("http://", "redis://")
    app = await app_factory(chat_settings(redis_url=redis_down))
    admin = await create_test_user(app, "admin")
    user = await create_test_user(app)
    orphan = await conversation_with_unfinished_answers(app, user, {"e" * 32: 0.0})
    _long_replies(ollama_emulator)
    async with (
        live_server(app) as base_url,
        httpx.AsyncClient(base_url=base_url, timeout=10) as http,
        AsyncExitStack() as stack,
    ):
        reader = await _started(stack, http, user)
        deleted = await http.delete(f"/api/admin/users/{user.id}", headers=admin.headers)
        assert deleted.status_code == 204, deleted.text
        await ollama_emulator.wait_until(lambda: ollama_emulator.generations_cancelled == 1)
        await reader.rest()
        gone = await http.get(f"/api/conversations/{orphan}", headers=admin.headers)
    _ended_stopped(reader.seen)
    assert gone.status_code == 404


class _BrokenRelay:
    async def stop(self, message_id: str) -> None:
        raise RuntimeError("a bug in the relay")


async def test_stopping_for_a_deletion_never_raises(
    settings_factory: Callable[..., Settings],
) -> None:
    registry = GenerationRegistry(settings_factory(), cast(Any, None), cast(Any, None))
    registry.relay = cast(Any, _BrokenRelay())
    with app_warnings() as warnings:
        await registry.stop_each(["a" * 32, "b" * 32])
    assert [r.getMessage() for r in warnings] == [
        f"could not stop the answer {'a' * 32}",
        f"could not stop the answer {'b' * 32}",
    ]
    assert warnings[0].exc_info is not None


def _delete_its_conversation(start: dict[str, Any], user: TestUser) -> Executable:
    return delete(Conversation).where(Conversation.id == start["conversation_id"])


def _disable_its_user(start: dict[str, Any], user: TestUser) -> Executable:
    return update(User).where(User.id == user.id).values(is_active=False)


@pytest.mark.parametrize(
    "behind_its_back", [_delete_its_conversation, _disable_its_user], ids=["deleted", "disabled"]
)
async def test_an_answer_whose_rows_go_or_user_is_disabled_behind_its_back_is_stopped(
    app_factory: Callable[..., Any],
    chat_settings: Callable[..., Settings],
    live_server: Callable[[FastAPI], Any],
    ollama_emulator: OllamaEmulator,
    behind_its_back: Callable[[dict[str, Any], TestUser], Executable],
) -> None:
    """The conversation goes without its answer being stopped first (a chat started while
    it was deleted; a stop that could not reach this process), or its user is disabled by
    `ollama-web users disable`, which reaches no server: the lease keeper finds it at its
    next heartbeat and stops the answer. A write that meets no row is no failure: nothing
    is logged as one."""
    app = await app_factory(chat_settings(generation_checkpoint_seconds=0.05))  # beats: 0.25 s
    user = await create_test_user(app)
    _long_replies(ollama_emulator)
    with app_warnings() as warnings:
        async with streamed_chat(live_server, app, user) as reader:
            start = await reader.next()
            assert start.event == "start"
            assert (await reader.next()).event == "token"
            await execute_sql(app, behind_its_back(start.data, user))
            await ollama_emulator.wait_until(lambda: ollama_emulator.generations_cancelled == 1)
            await reader.rest()
    message = _ended_stopped(reader.seen)
    assert message["content"] == text_of(reader.seen)
    assert _registry(app).running_ids == frozenset()
    assert _in_flight(app) == 0
    assert warnings == []
