"""Durable generations: disconnects, re-attach with Last-Event-ID, stop, checkpoints,
startup and shutdown. Real uvicorn on loopback, the emulator as Ollama."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import event, select
from sqlalchemy.ext.asyncio import async_sessionmaker, create_async_engine

from ollama_web.app import create_app
from ollama_web.chat import leases
from ollama_web.chat import registry as registry_module
from ollama_web.chat.registry import GenerationRegistry
from ollama_web.core.db import session_scope
from ollama_web.db import Message
from ollama_web.emulator import OllamaEmulator
from tests.chat.conftest import (
    Event,
    EventReader,
    chat_body,
    conversation_with_unfinished_answers,
    parse_events,
    stored_conversation,
    streamed_chat,
    text_of,
)
from tests.conftest import asgi_client
from tests.fixtures.auth import TestUser, create_test_user

REPLY_TOKENS = 30
FULL_REPLY = "".join(f"tok{i}" if i == 0 else f" tok{i}" for i in range(REPLY_TOKENS))


async def _answer(app: FastAPI, user: TestUser, conversation_id: str) -> dict[str, Any]:
    async with asgi_client(app) as client:
        stored = await stored_conversation(client, user, conversation_id)
    answer: dict[str, Any] = stored["messages"][-1]
    return answer


async def _wait_for_status(
    app: FastAPI, user: TestUser, conversation_id: str, status: str, timeout: float = 5.0
) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        answer = await _answer(app, user, conversation_id)
        if answer["status"] == status or time.monotonic() > deadline:
            return answer
        await asyncio.sleep(0.05)


async def _leave_after_first_token(http: httpx.AsyncClient, user: TestUser) -> tuple[Event, Event]:
    """Start a chat, read its `start` and first token, and leave: (start, token)."""
    async with http.stream(
        "POST", "/api/chat/stream", json=chat_body(), headers=user.headers
    ) as response:
        reader = EventReader(response)
        return await reader.next(), await reader.next()


async def test_the_answer_completes_and_is_stored_after_the_client_disconnects(
    app: FastAPI,
    live_server: Callable[[FastAPI], Any],
    ollama_emulator: OllamaEmulator,
    regular_user: TestUser,
) -> None:
    ollama_emulator.config.reply_tokens = REPLY_TOKENS
    ollama_emulator.config.tokens_per_second = 100
    async with live_server(app) as base_url, httpx.AsyncClient(base_url=base_url) as http:
        start, token = await _leave_after_first_token(http, regular_user)
        assert token.event == "token"
        conversation_id = start.data["conversation_id"]
        answer = await _wait_for_status(app, regular_user, conversation_id, "complete")
    assert answer["content"] == FULL_REPLY
    # It ran to its end upstream; the title request that follows a first answer may have
    # completed by now too.
    assert ollama_emulator.generations_completed in (1, 2)
    assert ollama_emulator.generations_cancelled == 0


async def test_a_disconnect_cancels_the_answer_when_continue_on_disconnect_is_off(
    app_factory: Callable[..., Any],
    chat_settings: Callable[..., Any],
    live_server: Callable[[FastAPI], Any],
    ollama_emulator: OllamaEmulator,
) -> None:
    app = await app_factory(
        chat_settings(chat_continue_on_disconnect=False, chat_disconnect_grace_seconds=0)
    )
    user = await create_test_user(app)
    ollama_emulator.config.reply_tokens = REPLY_TOKENS
    ollama_emulator.config.tokens_per_second = 10  # 3 s: a slow stop still comes first
    async with live_server(app) as base_url, httpx.AsyncClient(base_url=base_url) as http:
        start, _ = await _leave_after_first_token(http, user)
        await ollama_emulator.wait_until(lambda: ollama_emulator.generations_cancelled == 1)
        answer = await _wait_for_status(app, user, start.data["conversation_id"], "stopped")
    assert answer["status"] == "stopped"
    assert FULL_REPLY.startswith(answer["content"])
    assert len(answer["content"]) < len(FULL_REPLY)


async def test_a_hundred_clients_leaving_at_once_stop_their_hundred_answers(
    app_factory: Callable[..., Any],
    chat_settings: Callable[..., Any],
    live_server: Callable[[FastAPI], Any],
    ollama_emulator: OllamaEmulator,
) -> None:
    """CHAT_CONTINUE_ON_DISCONNECT=false under load: 100 clients leave after their first
    token, together. Every upstream is closed, every answer is stored `stopped` with the
    text it had, and nothing is left running or attached."""
    streams = 100
    settings = chat_settings(
        chat_continue_on_disconnect=False,
        chat_disconnect_grace_seconds=0,
        max_concurrent_generations_per_user=streams,
    )
    app = await app_factory(settings)
    user = await create_test_user(app)
    ollama_emulator.config.reply_tokens = REPLY_TOKENS
    ollama_emulator.config.tokens_per_second = 10  # 3 s each: every stop comes first
    registry: GenerationRegistry = app.state.generations
    limits = httpx.Limits(max_connections=streams)
    async with (
        live_server(app) as base_url,
        httpx.AsyncClient(base_url=base_url, limits=limits, timeout=30) as http,
    ):
        left = await asyncio.gather(*(_leave_after_first_token(http, user) for _ in range(streams)))
        await ollama_emulator.wait_until(
            lambda: ollama_emulator.generations_cancelled == streams, timeout=10
        )
        await ollama_emulator.wait_until(lambda: not registry.running_ids, timeout=10)
        answers = [
            await _wait_for_status(app, user, start.data["conversation_id"], "stopped")
            for start, _ in left
        ]
    assert {answer["status"] for answer in answers} == {"stopped"}
    for answer in answers:
        assert answer["content"].startswith("tok0")
        assert FULL_REPLY.startswith(answer["content"])
    assert ollama_emulator.generations_completed <= streams  # titles only, never an answer


async def test_without_continue_on_disconnect_a_reload_within_the_grace_keeps_the_answer(
    app_factory: Callable[..., Any],
    chat_settings: Callable[..., Any],
    live_server: Callable[[FastAPI], Any],
    ollama_emulator: OllamaEmulator,
) -> None:
    """CHAT_CONTINUE_ON_DISCONNECT=false with a grace: the client leaves (a page reload)
    and re-attaches before the grace ends; the answer runs on to its end, whole."""
    app = await app_factory(
        chat_settings(chat_continue_on_disconnect=False, chat_disconnect_grace_seconds=30)
    )
    user = await create_test_user(app)
    ollama_emulator.config.reply_tokens = REPLY_TOKENS
    ollama_emulator.config.tokens_per_second = 20
    registry = app.state.generations
    async with live_server(app) as base_url, httpx.AsyncClient(base_url=base_url) as http:
        start, token = await _leave_after_first_token(http, user)
        seen = token.id
        answer_id = start.data["assistant_message_id"]
        generation = registry.get(answer_id)
        await ollama_emulator.wait_until(lambda: generation.log.followers == 0)
        headers = {**user.headers, "Last-Event-ID": str(seen)}
        async with http.stream("GET", f"/api/chat/stream/{answer_id}", headers=headers) as again:
            events = await EventReader(again).rest()
    assert events[-1].event == "done"
    assert events[-1].data["message"]["status"] == "complete"
    assert events[-1].data["message"]["content"] == FULL_REPLY
    assert ollama_emulator.generations_cancelled == 0


async def test_without_continue_on_disconnect_the_answer_stops_when_the_grace_ends(
    app_factory: Callable[..., Any],
    chat_settings: Callable[..., Any],
    live_server: Callable[[FastAPI], Any],
    ollama_emulator: OllamaEmulator,
) -> None:
    """Nobody comes back: the answer runs through the grace, then is stopped (upstream
    closed) with the text it had."""
    grace = 1.5
    app = await app_factory(
        chat_settings(chat_continue_on_disconnect=False, chat_disconnect_grace_seconds=grace)
    )
    user = await create_test_user(app)
    ollama_emulator.config.reply_tokens = REPLY_TOKENS * 10
    ollama_emulator.config.tokens_per_second = 20  # 15 s: far longer than the grace
    async with live_server(app) as base_url, httpx.AsyncClient(base_url=base_url) as http:
        start, _ = await _leave_after_first_token(http, user)
        generation = app.state.generations.get(start.data["assistant_message_id"])
        await ollama_emulator.wait_until(lambda: generation.log.followers == 0)
        left = time.monotonic()
        assert generation.running
        await ollama_emulator.wait_until(
            lambda: ollama_emulator.generations_cancelled == 1, timeout=grace + 10
        )
        assert time.monotonic() - left >= grace * 0.9  # not before the grace (timer slack)
        answer = await _wait_for_status(app, user, start.data["conversation_id"], "stopped")
    whole = "".join(f"tok{i}" if i == 0 else f" tok{i}" for i in range(REPLY_TOKENS * 10))
    assert answer["content"]
    assert whole.startswith(answer["content"])
    assert len(answer["content"]) < len(whole)


async def test_reattach_replays_after_last_event_id_then_follows_live(
    app: FastAPI,
    live_server: Callable[[FastAPI], Any],
    ollama_emulator: OllamaEmulator,
    regular_user: TestUser,
) -> None:
    ollama_emulator.config.reply_tokens = REPLY_TOKENS
    ollama_emulator.config.tokens_per_second = 60
    async with live_server(app) as base_url, httpx.AsyncClient(base_url=base_url) as http:
        async with http.stream(
            "POST", "/api/chat/stream", json=chat_body(), headers=regular_user.headers
        ) as response:
            reader = EventReader(response)
            first_part = [await reader.next() for _ in range(4)]
        seen = first_part[-1].id
        assert seen == 4
        message_id = first_part[0].data["assistant_message_id"]
        headers = {**regular_user.headers, "Last-Event-ID": str(seen)}
        async with http.stream(
            "GET", f"/api/chat/stream/{message_id}", headers=headers
        ) as response:
            assert response.status_code == 200
            rest = await EventReader(response).rest()
        assert [e.id for e in rest] == list(range(seen + 1, seen + 1 + len(rest)))
        assert text_of(first_part) + text_of(rest) == FULL_REPLY
        assert rest[-1].event == "done"
        # Finished and still in memory: the same events, ids and all.
        replay = parse_events(
            (await http.get(f"/api/chat/stream/{message_id}", headers=headers)).content
        )
        assert [(e.id, e.event, e.data) for e in replay] == [(e.id, e.event, e.data) for e in rest]


async def test_a_last_event_id_ahead_of_a_running_answer_gets_only_later_events(
    app: FastAPI,
    live_server: Callable[[FastAPI], Any],
    ollama_emulator: OllamaEmulator,
    regular_user: TestUser,
) -> None:
    """`Last-Event-ID: N` replays the events after N, also when N is an event the running
    answer has not sent yet (it sent ids 7, 8... before); beyond its last event, a finished
    answer then has nothing to send (204)."""
    ollama_emulator.config.reply_tokens = REPLY_TOKENS
    ollama_emulator.config.tokens_per_second = 30  # 1 s: re-attached well before its end
    ahead = 10
    async with live_server(app) as base_url, httpx.AsyncClient(base_url=base_url) as http:
        async with http.stream(
            "POST", "/api/chat/stream", json=chat_body(), headers=regular_user.headers
        ) as response:
            reader = EventReader(response)
            start = await reader.next()
            assert (await reader.next()).id == 2
            message_id = start.data["assistant_message_id"]
            path = f"/api/chat/stream/{message_id}"
            headers = {**regular_user.headers, "Last-Event-ID": str(ahead)}
            async with http.stream("GET", path, headers=headers) as resumed:
                assert resumed.status_code == 200
                rest = await EventReader(resumed).rest()
            await reader.rest()
            everything = reader.seen
        assert [e.id for e in rest] == [e.id for e in everything if e.id > ahead]
        assert rest[-1].event == "done"
        beyond = {**regular_user.headers, "Last-Event-ID": str(everything[-1].id + 5)}
        assert (await http.get(path, headers=beyond)).status_code == 204


async def test_a_last_event_id_past_a_running_answer_s_end_still_ends_with_its_final_event(
    app: FastAPI,
    live_server: Callable[[FastAPI], Any],
    ollama_emulator: OllamaEmulator,
    regular_user: TestUser,
) -> None:
    """Re-attached while the answer runs, with an id it never reaches: a 200 (what the
    answer will still send is not known yet) that, when the answer ends, is sent its final
    event under that event's own id, as every attached stream ends (it used to close with
    no event at all). Once the answer has ended, the same request is a 204."""
    ollama_emulator.config.reply_tokens = 500
    ollama_emulator.config.tokens_per_second = 40  # never ends by itself here: stopped
    async with live_server(app) as base_url, httpx.AsyncClient(base_url=base_url) as http:
        async with http.stream(
            "POST", "/api/chat/stream", json=chat_body(), headers=regular_user.headers
        ) as response:
            reader = EventReader(response)
            start = await reader.next()
            assert (await reader.next()).event == "token"
            message_id = start.data["assistant_message_id"]
            path = f"/api/chat/stream/{message_id}"
            past = {**regular_user.headers, "Last-Event-ID": "100000"}
            async with http.stream("GET", path, headers=past) as resumed:
                assert resumed.status_code == 200
                stop = f"/api/chat/{message_id}/stop"
                assert (await http.post(stop, headers=regular_user.headers)).status_code == 200
                rest = await EventReader(resumed).rest()
            final = (await reader.rest())[-1]
        assert final.event == "done"
        assert final.data["message"]["status"] == "stopped"
        assert [(e.id, e.event, e.data) for e in rest] == [(final.id, final.event, final.data)]
        assert (await http.get(path, headers=past)).status_code == 204


async def test_a_finished_answer_leaves_memory_after_its_time_with_no_other_chat(
    app: FastAPI,
    ollama_emulator: OllamaEmulator,
    regular_user: TestUser,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Kept for late re-attaches for RETAIN_SECONDS, then dropped by the registry's own
    heartbeat: an idle server does not hold the last answers' events for ever."""
    async with asgi_client(app) as http:
        sent = await http.post("/api/chat/message", json=chat_body(), headers=regular_user.headers)
    assert sent.status_code == 200, sent.text
    message_id = sent.json()["assistant_message"]["id"]
    registry: GenerationRegistry = app.state.generations
    await registry.heartbeat(1.0)
    assert message_id in registry._retained

    monkeypatch.setattr(registry_module, "RETAIN_SECONDS", 0.0)
    await registry.heartbeat(1.0)

    assert message_id not in registry._retained


async def test_a_finished_answer_keeps_its_events_not_the_conversation_sent(
    app: FastAPI,
    ollama_emulator: OllamaEmulator,
    regular_user: TestUser,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Kept for re-attaches: its events, within MAX_RETAINED_BYTES for all answers (the
    oldest go first), not the conversation sent to Ollama (images and all)."""
    registry: GenerationRegistry = app.state.generations
    ids = []
    async with asgi_client(app) as http:
        for _ in range(3):
            sent = await http.post(
                "/api/chat/message", json=chat_body(), headers=regular_user.headers
            )
            assert sent.status_code == 200, sent.text
            ids.append(sent.json()["assistant_message"]["id"])
            if len(ids) == 2:
                kept = registry._retained[ids[0]][1]
                assert kept.spec.messages == []
                assert kept.log.frames
                size = registry._retained[ids[1]][2]
                assert size == sum(map(len, registry._retained[ids[1]][1].log.frames))
                monkeypatch.setattr(registry_module, "MAX_RETAINED_BYTES", size * 3 // 2)
        events = parse_events(
            (await http.get(f"/api/chat/stream/{ids[0]}", headers=regular_user.headers)).content
        )
    assert list(registry._retained) == [ids[2]]  # the two older ones over the bound
    assert [e.event for e in events] == ["start", "token", "done"]  # from the database


async def test_reattach_to_an_answer_no_longer_in_memory_replays_it_from_the_database(
    app: FastAPI,
    live_server: Callable[[FastAPI], Any],
    ollama_emulator: OllamaEmulator,
    regular_user: TestUser,
) -> None:
    async with live_server(app) as base_url, httpx.AsyncClient(base_url=base_url) as http:
        events = parse_events(
            (
                await http.post("/api/chat/stream", json=chat_body(), headers=regular_user.headers)
            ).content
        )
        message_id = events[0].data["assistant_message_id"]
        registry: GenerationRegistry = app.state.generations
        registry._retained.clear()
        registry._retained_bytes = 0
        full = parse_events(
            (await http.get(f"/api/chat/stream/{message_id}", headers=regular_user.headers)).content
        )
        missed_end = await http.get(
            f"/api/chat/stream/{message_id}",
            headers={**regular_user.headers, "Last-Event-ID": str(events[-1].id - 1)},
        )
        saw_all = await http.get(
            f"/api/chat/stream/{message_id}",
            headers={**regular_user.headers, "Last-Event-ID": str(events[-1].id)},
        )
    assert [e.event for e in full] == ["start", "token", "done"]
    assert text_of(full) == text_of(events)
    assert full[-1].data["message"] == events[-1].data["message"]
    # The final event under the id it was first sent with; once seen, never again (and 204
    # tells an EventSource to stop reconnecting).
    late = parse_events(missed_end.content)
    assert [(e.id, e.event) for e in late] == [(events[-1].id, "done")]
    assert late[0].data["message"]["content"] == text_of(events)
    assert (saw_all.status_code, saw_all.content) == (204, b"")


async def test_stop_closes_the_upstream_and_every_stream_ends_stopped(
    app: FastAPI,
    live_server: Callable[[FastAPI], Any],
    ollama_emulator: OllamaEmulator,
    regular_user: TestUser,
) -> None:
    ollama_emulator.config.reply_tokens = 500
    ollama_emulator.config.tokens_per_second = 40
    async with (
        live_server(app) as base_url,
        httpx.AsyncClient(base_url=base_url) as http,
        http.stream(
            "POST", "/api/chat/stream", json=chat_body(), headers=regular_user.headers
        ) as first,
    ):
        reader = EventReader(first)
        start = await reader.next()
        message_id = start.data["assistant_message_id"]
        await reader.next()
        async with http.stream(
            "GET", f"/api/chat/stream/{message_id}", headers=regular_user.headers
        ) as second:
            other = EventReader(second)
            await other.next()
            stop_sent = time.monotonic()
            stopped = await http.post(f"/api/chat/{message_id}/stop", headers=regular_user.headers)
            assert stopped.status_code == 200
            await reader.rest()
            await other.rest()
            first_events, second_events = reader.seen, other.seen
    assert ollama_emulator.generations_cancelled == 1
    assert ollama_emulator.last_cancelled_at is not None
    # The 100 ms bound is measured on its own below, over several stops.
    assert ollama_emulator.last_cancelled_at - stop_sent < 1.0
    for events in (first_events, second_events):
        assert events[-1].event == "done"
        assert events[-1].data["message"]["status"] == "stopped"
    partial = text_of(first_events)
    assert partial
    assert text_of(second_events) == partial
    assert stopped.json()["message"]["content"] == partial
    answer = await _answer(app, regular_user, start.data["conversation_id"])
    assert answer["status"] == "stopped"
    assert answer["content"] == partial


async def test_stop_and_re_attach_work_for_a_user_who_spent_the_chat_budget(
    app_factory: Callable[..., Any],
    chat_settings: Callable[..., Any],
    live_server: Callable[[FastAPI], Any],
    ollama_emulator: OllamaEmulator,
) -> None:
    """The chat budget counts questions: once it is spent, a new one is 429, but the answer
    already running can still be re-attached to and stopped (they count against the
    default budget)."""
    app = await app_factory(chat_settings(rate_limit_enabled=True, rate_limit_chat_per_minute=1))
    user = await create_test_user(app)
    ollama_emulator.config.reply_tokens = 500
    ollama_emulator.config.tokens_per_second = 40
    async with (
        live_server(app) as base_url,
        httpx.AsyncClient(base_url=base_url) as http,
        http.stream("POST", "/api/chat/stream", json=chat_body(), headers=user.headers) as first,
    ):
        reader = EventReader(first)
        message_id = (await reader.next()).data["assistant_message_id"]
        await reader.next()
        refused = await http.post("/api/chat/message", json=chat_body(), headers=user.headers)
        assert refused.status_code == 429
        assert refused.json()["details"]["group"] == "chat"
        async with http.stream(
            "GET", f"/api/chat/stream/{message_id}", headers=user.headers
        ) as again:
            assert again.status_code == 200
            assert again.headers["x-ratelimit-limit"] == "100"
            await EventReader(again).next()
            stopped = await http.post(f"/api/chat/{message_id}/stop", headers=user.headers)
        await reader.rest()
    assert stopped.status_code == 200, stopped.text
    assert stopped.json()["message"]["status"] == "stopped"
    assert ollama_emulator.generations_cancelled == 1


STOP_TRIALS = 5


async def test_stop_reaches_the_upstream_within_100ms(
    app: FastAPI,
    live_server: Callable[[FastAPI], Any],
    ollama_emulator: OllamaEmulator,
    regular_user: TestUser,
) -> None:
    """From the stop request leaving the client to the emulator seeing its stream closed:
    the median of several stops is within 100 ms, and none takes a second (one shared test
    process with coverage on a busy CI machine can stall a single request)."""
    ollama_emulator.config.reply_tokens = 500
    ollama_emulator.config.tokens_per_second = 40
    delays: list[float] = []
    async with live_server(app) as base_url, httpx.AsyncClient(base_url=base_url) as http:
        for trial in range(STOP_TRIALS):
            async with http.stream(
                "POST", "/api/chat/stream", json=chat_body(), headers=regular_user.headers
            ) as response:
                reader = EventReader(response)
                message_id = (await reader.next()).data["assistant_message_id"]
                assert (await reader.next()).event == "token"
                stop_sent = time.monotonic()
                stopped = await http.post(
                    f"/api/chat/{message_id}/stop", headers=regular_user.headers
                )
                assert stopped.status_code == 200
                assert ollama_emulator.generations_cancelled == trial + 1
                assert ollama_emulator.last_cancelled_at is not None
                delays.append(ollama_emulator.last_cancelled_at - stop_sent)
                await reader.rest()
                assert reader.seen[-1].data["message"]["status"] == "stopped"
    delays.sort()
    assert delays[len(delays) // 2] < 0.1, delays
    assert delays[-1] < 1.0, delays


async def test_an_error_line_mid_stream_stores_the_partial_answer_with_status_error(
    app: FastAPI,
    live_server: Callable[[FastAPI], Any],
    ollama_emulator: OllamaEmulator,
    regular_user: TestUser,
) -> None:
    ollama_emulator.config.reply_tokens = REPLY_TOKENS
    ollama_emulator.config.error_after_tokens = 5
    async with live_server(app) as base_url, httpx.AsyncClient(base_url=base_url) as http:
        events = parse_events(
            (
                await http.post("/api/chat/stream", json=chat_body(), headers=regular_user.headers)
            ).content
        )
    assert events[-1].event == "error"
    error = events[-1].data
    assert error["error"] == "OLLAMA_STREAM_ERROR"
    assert error["details"]["kind"] == "upstream_error"
    assert "unexpectedly stopped" in error["details"]["upstream_message"]
    partial = text_of(events)
    assert partial == "tok0 tok1 tok2 tok3 tok4"
    answer = await _answer(app, regular_user, events[0].data["conversation_id"])
    assert answer["status"] == "error"
    assert answer["content"] == partial
    assert answer["error"]["error"] == "OLLAMA_STREAM_ERROR"
    assert error["details"]["assistant_message"] == answer


async def test_a_dropped_upstream_connection_stores_the_partial_answer_with_status_error(
    app: FastAPI,
    live_server: Callable[[FastAPI], Any],
    ollama_emulator: OllamaEmulator,
    regular_user: TestUser,
) -> None:
    ollama_emulator.config.reply_tokens = REPLY_TOKENS
    ollama_emulator.config.drop_after_tokens = 3
    async with live_server(app) as base_url, httpx.AsyncClient(base_url=base_url) as http:
        events = parse_events(
            (
                await http.post("/api/chat/stream", json=chat_body(), headers=regular_user.headers)
            ).content
        )
    assert events[-1].event == "error"
    assert events[-1].data["details"]["kind"] in {"disconnected", "incomplete"}
    answer = await _answer(app, regular_user, events[0].data["conversation_id"])
    assert (answer["status"], answer["content"]) == ("error", "tok0 tok1 tok2")


async def test_the_growing_answer_is_checkpointed_at_most_once_per_interval(
    app_factory: Callable[..., Any],
    chat_settings: Callable[..., Any],
    live_server: Callable[[FastAPI], Any],
    ollama_emulator: OllamaEmulator,
) -> None:
    app = await app_factory(chat_settings(generation_checkpoint_seconds=0.2))
    user = await create_test_user(app)
    updates: list[str] = []

    def count(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        if statement.lstrip().upper().startswith("UPDATE MESSAGES"):
            updates.append(statement)

    engine = app.state.core.engine.sync_engine
    event.listen(engine, "before_cursor_execute", count)
    inline = app.state.core.inline  # SQLite: the writes that found the database free
    if inline is not None:
        inline.trace(lambda statement: count(None, None, statement))
    ollama_emulator.config.reply_tokens = 60
    ollama_emulator.config.tokens_per_second = 60
    async with streamed_chat(live_server, app, user) as reader:
        start = await reader.next()
        await asyncio.sleep(0.5)
        during = await _answer(app, user, start.data["conversation_id"])
        await reader.rest()
    event.remove(engine, "before_cursor_execute", count)
    if inline is not None:
        inline.trace(None)
    assert during["status"] == "streaming"
    assert during["content"].startswith("tok0 tok1")
    # ~1 s of tokens at 0.2 s intervals: a handful of checkpoints plus the final write,
    # never one per token (60).
    assert 3 <= len(updates) <= 8


async def _statuses(app: FastAPI, ids: list[str]) -> dict[str, tuple[str, str]]:
    async with session_scope(app.state.core.sessionmaker) as session:
        rows = await session.execute(
            select(Message.id, Message.status, Message.content).where(Message.id.in_(ids))
        )
        return {row.id: (row.status, row.content) for row in rows}


async def test_startup_marks_abandoned_answers_interrupted_keeping_their_text(
    app_factory: Callable[..., Any], chat_settings: Callable[..., Any]
) -> None:
    """An answer not written for longer than the stale interval (15 s by default) belongs to
    a process that is gone; a freshly written one may be another live process's."""
    settings = chat_settings()
    first = await app_factory(settings)
    user = await create_test_user(first)
    old, fresh = "f" * 32, "e" * 32
    await conversation_with_unfinished_answers(first, user, {old: 3600.0, fresh: 0.0})
    second = await app_factory(settings)
    assert await _statuses(second, [old, fresh]) == {
        old: ("interrupted", "half an answer f"),
        fresh: ("streaming", "half an answer e"),
    }


async def test_a_server_alone_on_its_database_interrupts_every_unfinished_answer_at_start(
    app_factory: Callable[..., Any], chat_settings: Callable[..., Any], db_backend: str
) -> None:
    """A crash leaves its answers `streaming`, written a moment before. A server that finds
    itself the only one of its SQLite database (each holds the lock beside the file) marks
    them interrupted as it starts, not a stale interval later (meanwhile a client that
    re-attached was told 409 GENERATION_ELSEWHERE). With PostgreSQL, servers on other
    hosts may share the database: the stale interval stands."""
    settings = chat_settings()
    crashed = create_app(settings)  # its lifespan ends: its locks go, as a dead process's
    lifespan = crashed.router.lifespan_context(crashed)
    await lifespan.__aenter__()
    user = await create_test_user(crashed)
    fresh = "e" * 32
    await conversation_with_unfinished_answers(crashed, user, {fresh: 0.0})
    await lifespan.__aexit__(None, None, None)
    restarted = await app_factory(settings)
    (status, content), *_ = (await _statuses(restarted, [fresh])).values()
    assert content == "half an answer e"
    assert status == ("interrupted" if db_backend == "sqlite" else "streaming")


async def test_a_server_started_beside_another_is_still_seen_once_the_first_is_gone(
    app_factory: Callable[..., Any], chat_settings: Callable[..., Any]
) -> None:
    """Workers A and B share a SQLite database; A dies and a worker C replaces it (uvicorn's
    supervisor restarts a killed one). B asked at its start whether it was alone, which
    dropped its lock (Linux converts a flock by dropping it first): C took itself for the
    only server, and interrupted B's running answers. B is seen: they run on."""
    settings = chat_settings()
    a = create_app(settings)  # its lifespan ends: its locks go, as a dead process's
    a_lifespan = a.router.lifespan_context(a)
    await a_lifespan.__aenter__()
    b = await app_factory(settings)
    user = await create_test_user(b)
    running = "b" * 32  # B's, written a moment ago
    await conversation_with_unfinished_answers(b, user, {running: 0.0})
    await a_lifespan.__aexit__(None, None, None)
    c = await app_factory(settings)  # sweeps at startup
    assert await _statuses(c, [running]) == {running: ("streaming", "half an answer b")}


async def test_a_swept_answer_ends_once_for_a_client_that_reconnects(
    app_factory: Callable[..., Any], chat_settings: Callable[..., Any]
) -> None:
    """A client that followed an answer until its process died reconnects (an EventSource
    does, with the last id it saw): it gets the final event once, under one id whatever the
    id it sends, then 204 (nothing more; an EventSource stops). The error is the one a
    follower got live, GENERATION_INTERRUPTED."""
    settings = chat_settings()
    first = await app_factory(settings)
    user = await create_test_user(first)
    orphan = "f" * 32
    await conversation_with_unfinished_answers(first, user, {orphan: 3600.0})
    second = await app_factory(settings)  # sweeps at startup
    path = f"/api/chat/stream/{orphan}"
    async with asgi_client(second) as client:
        full = parse_events((await client.get(path, headers=user.headers)).content)
        finals = [full[-1]]  # a full replay: start, the text, the final event
        for seen in (7, 65):
            headers = {**user.headers, "Last-Event-ID": str(seen)}
            response = await client.get(path, headers=headers)
            assert response.status_code == 200
            (final,) = parse_events(response.content)
            finals.append(final)
        after_final = await client.get(
            path, headers={**user.headers, "Last-Event-ID": str(finals[0].id)}
        )
    assert [event.event for event in full] == ["start", "token", "error"]
    assert finals[0].id == finals[1].id == finals[2].id
    assert finals[0].event == "error"
    assert finals[0].data["error"] == "GENERATION_INTERRUPTED"
    answer = finals[0].data["details"]["assistant_message"]
    assert (answer["status"], answer["content"]) == ("interrupted", "half an answer f")
    assert answer["error"]["error"] == "GENERATION_INTERRUPTED"
    assert after_final.status_code == 204


async def test_answers_of_a_process_that_died_are_swept_once_stale(
    app_factory: Callable[..., Any], chat_settings: Callable[..., Any]
) -> None:
    checkpoint = 0.05  # heartbeat 0.25 s, stale after 0.75 s
    app = await app_factory(chat_settings(generation_checkpoint_seconds=checkpoint))
    user = await create_test_user(app)
    orphan = "d" * 32
    await conversation_with_unfinished_answers(app, user, {orphan: 0.0})
    assert await _statuses(app, [orphan]) == {orphan: ("streaming", "half an answer d")}
    deadline = time.monotonic() + 5.0
    while (await _statuses(app, [orphan]))[orphan][0] != "interrupted":
        assert time.monotonic() < deadline, "the stale answer was never swept"
        await asyncio.sleep(0.05)
    assert leases.stale_seconds(checkpoint) == 0.75


async def test_a_second_process_leaves_the_first_ones_generation_alone(
    app_factory: Callable[..., Any],
    chat_settings: Callable[..., Any],
    live_server: Callable[[FastAPI], Any],
    ollama_emulator: OllamaEmulator,
) -> None:
    """Two processes on one database (workers, or instances): a generation waiting for a
    model to load writes no checkpoint, but keeps its lease with heartbeats, so the other
    process's sweeps (at its start, then every 0.75 s here) never interrupt it."""
    settings = chat_settings(generation_checkpoint_seconds=0.05)
    first = await app_factory(settings)
    user = await create_test_user(first)
    ollama_emulator.config.first_token_delay = 3.5  # a start of the second may take long
    ollama_emulator.config.reply_tokens = 5
    async with streamed_chat(live_server, first, user) as reader:
        start = await reader.next()
        answer_id = start.data["assistant_message_id"]
        second = await app_factory(settings)  # sweeps at startup, then periodically
        await asyncio.sleep(1.6)  # two stale intervals, still before the first token
        (status, _), *_ = (await _statuses(second, [answer_id])).values()
        assert status in {"pending", "streaming"}
        events = await reader.rest()
    assert events[-1].event == "done"
    assert (await _statuses(first, [answer_id]))[answer_id][0] == "complete"


async def test_a_heartbeat_is_not_skipped_when_the_next_would_come_too_late(
    app_factory: Callable[..., Any],
    chat_settings: Callable[..., Any],
    live_server: Callable[[FastAPI], Any],
    ollama_emulator: OllamaEmulator,
) -> None:
    """Heartbeats come once an interval. Skipping one because the row was written a little
    under an interval ago would leave it unwritten for nearly two intervals, against a stale
    limit of three; a row written more than half an interval ago is written again."""
    app = await app_factory(chat_settings())  # heartbeat every 5 s: the keeper stays out
    user = await create_test_user(app)
    ollama_emulator.config.first_token_delay = 5.0
    interval = leases.heartbeat_seconds(1.0)
    async with streamed_chat(live_server, app, user) as reader:
        answer_id = (await reader.next()).data["assistant_message_id"]
        generation = app.state.generations.get(answer_id)
        assert generation is not None
        loop = asyncio.get_running_loop()
        generation._row.last_write = loop.time() - interval * 0.6
        await generation.heartbeat(interval)
        written = generation._row.last_write
        assert loop.time() - written < interval * 0.5  # written now
        await generation.heartbeat(interval)
        assert generation._row.last_write == written  # just written: not again
        generation.stop()
        await generation.wait()


async def test_shutdown_stores_running_answers_as_interrupted(
    app_factory: Callable[..., Any],
    chat_settings: Callable[..., Any],
    live_server: Callable[[FastAPI], Any],
    ollama_emulator: OllamaEmulator,
) -> None:
    settings = chat_settings()
    app = await app_factory(settings)
    user = await create_test_user(app)
    ollama_emulator.config.reply_tokens = 500
    ollama_emulator.config.tokens_per_second = 50
    async with streamed_chat(live_server, app, user) as reader:
        start = await reader.next()
        await reader.next()
    registry: GenerationRegistry = app.state.generations
    await registry.shutdown()
    await ollama_emulator.wait_until(lambda: ollama_emulator.generations_cancelled == 1)
    answer = await _answer(app, user, start.data["conversation_id"])
    assert answer["status"] == "interrupted"
    assert answer["content"].startswith("tok0")


async def test_a_title_request_waits_while_an_answer_waits_for_its_first_token(
    app: FastAPI,
    live_server: Callable[[FastAPI], Any],
    ollama_emulator: OllamaEmulator,
    regular_user: TestUser,
) -> None:
    """A's answer completes at ~1.5 s and its title is due; B's first token only comes at
    ~2.25 s: the title request goes to Ollama after that, not before."""
    ollama_emulator.config.first_token_delay = 1.5
    ollama_emulator.config.reply_tokens = 2

    def title_requests() -> int:
        return sum(1 for r in ollama_emulator.requests if r.json and r.json.get("stream") is False)

    async with (
        live_server(app) as base_url,
        httpx.AsyncClient(base_url=base_url, timeout=20) as http,
    ):
        first = asyncio.ensure_future(
            http.post("/api/chat/message", json=chat_body(), headers=regular_user.headers)
        )
        await asyncio.sleep(0.75)
        async with http.stream(
            "POST", "/api/chat/stream", json=chat_body(), headers=regular_user.headers
        ) as response:
            reader = EventReader(response)
            await reader.next()  # start
            answered = await first
            assert answered.status_code == 200, answered.text
            await asyncio.sleep(0.3)  # A's title is due, B still waits for its first token
            assert title_requests() == 0
            assert (await reader.next()).event == "token"
            await reader.rest()
        conversation_id = answered.json()["conversation_id"]
        deadline = time.monotonic() + 10
        while title_requests() == 0 or not (
            await _stored_title(app, regular_user, conversation_id)
        ):
            assert time.monotonic() < deadline, "the title never came"
            await asyncio.sleep(0.05)


async def _stored_title(app: FastAPI, user: TestUser, conversation_id: str) -> bool:
    async with asgi_client(app) as client:
        stored = await stored_conversation(client, user, conversation_id)
    return bool(stored["title_generated"])


async def test_the_lease_keeper_says_once_that_the_database_is_unavailable(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A database that refuses connections (a restart, a failover) failed each heartbeat's
    look for ownerless answers and each sweep with a full traceback; it is one line until
    the keeper reaches the database again."""
    engine = create_async_engine("postgresql+asyncpg://nobody:nothing@127.0.0.1:9/none")
    sessionmaker = async_sessionmaker(engine)

    async def heartbeat(_interval: float) -> None:
        return None

    keeper = asyncio.create_task(
        leases.keep_leases(sessionmaker, 0.01, heartbeat, lambda: {"a" * 32}, lambda _: None)
    )
    with caplog.at_level(logging.INFO, logger="ollama_web.chat"):
        await asyncio.sleep(0.6)  # ~12 heartbeats, ~4 sweeps
        keeper.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await keeper
    await engine.dispose()
    records = [r for r in caplog.records if r.name == "ollama_web.chat"]
    assert [(r.levelname, r.exc_info) for r in records] == [("WARNING", None)], records
    assert "the database is unavailable" in records[0].getMessage()
