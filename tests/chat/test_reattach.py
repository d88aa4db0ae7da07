"""The re-attach route's request headers: `Last-Event-ID` (an empty one is none) and HEAD
(the stream's head, without following the answer). Real uvicorn on loopback, the emulator
as Ollama."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from ollama_web.chat.generation import Generation
from ollama_web.core.config import Settings
from ollama_web.core.http_guard import GuardedHttpToolsProtocol
from ollama_web.emulator import OllamaEmulator
from tests.chat.conftest import Event, EventReader, chat_body, parse_events
from tests.chat.test_relay import two_processes
from tests.fixtures.auth import TestUser, create_test_user
from tests.fixtures.servers import serve_app

# Headers that differ from one answer to the next whatever the method, and the framing of
# a body the server writes (chunked) or not (a HEAD's).
_PER_ANSWER = frozenset(
    {"date", "x-request-id", "x-ratelimit-remaining", "x-ratelimit-reset", "transfer-encoding"}
)


def _headers(response: httpx.Response) -> dict[str, str]:
    return {name: value for name, value in response.headers.items() if name not in _PER_ANSWER}


async def _poll_heads_until_stopped(
    http: httpx.AsyncClient, path: str, headers: dict[str, str], generation: Generation
) -> tuple[list[httpx.Response], float]:
    """HEADs of `path` every 0.1 s, from when the answer's last client left until it stops
    (for 4 s at most): what they got, and when the answer stopped."""
    await asyncio.wait_for(_followers_gone(generation), 5)
    left = time.monotonic()
    polled = []
    while generation.running and time.monotonic() - left < 4:
        polled.append(await http.head(path, headers=headers))
        assert generation.log.followers == 0
        await asyncio.sleep(0.1)
    return polled, time.monotonic() - left


async def _followers_gone(generation: Generation) -> None:
    while generation.log.followers:
        await asyncio.sleep(0.01)


@asynccontextmanager
async def _guarded_http(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    """A client of `app` served by uvicorn with our HTTP protocol, as `serve` runs it."""
    async with (
        serve_app(app, http=GuardedHttpToolsProtocol) as base_url,
        httpx.AsyncClient(base_url=base_url, timeout=10) as http,
    ):
        yield http


async def _answered(http: httpx.AsyncClient, user: TestUser) -> tuple[list[Event], str]:
    """A whole answer, streamed: its events, and its re-attach path."""
    sent = await http.post("/api/chat/stream", json=chat_body(), headers=user.headers)
    events = parse_events(sent.content)
    return events, f"/api/chat/stream/{events[0].data['assistant_message_id']}"


async def test_an_empty_last_event_id_replays_from_the_start_as_without_one(
    app: FastAPI,
    ollama_emulator: OllamaEmulator,
    regular_user: TestUser,
) -> None:
    """WHATWG SSE: the last event ID string may be empty, meaning no event was seen. The
    header is taken as absent (the whole answer again, or after `after`), and so is an
    empty `after`; a value that is not an id is still refused."""
    ollama_emulator.config.reply_tokens = 5
    async with _guarded_http(app) as http:
        events, path = await _answered(http, regular_user)
        empty = {**regular_user.headers, "Last-Event-ID": ""}
        again = await http.get(path, headers=empty)
        after = await http.get(path, headers=empty, params={"after": 2})
        empty_after = await http.get(f"{path}?after=", headers=regular_user.headers)
        malformed = [
            await http.get(path, headers={**regular_user.headers, "Last-Event-ID": value})
            for value in ("x", "-1")
        ] + [await http.get(path, headers=regular_user.headers, params={"after": "-1"})]
    assert again.status_code == 200
    assert [(e.id, e.event) for e in parse_events(again.content)] == [
        (e.id, e.event) for e in events
    ]
    assert [e.id for e in parse_events(after.content)] == [e.id for e in events if e.id > 2]
    assert empty_after.status_code == 200
    assert [e.id for e in parse_events(empty_after.content)] == [e.id for e in events]
    for refused in malformed:
        assert (refused.status_code, refused.json()["error"]) == (422, "VALIDATION_ERROR")


async def test_head_of_a_running_answer_neither_follows_it_nor_restarts_its_grace(
    app_factory: Callable[[Settings], Any],
    chat_settings: Callable[..., Settings],
    ollama_emulator: OllamaEmulator,
) -> None:
    """CHAT_CONTINUE_ON_DISCONNECT=false: the answer's client left and its grace runs. A
    HEAD of its stream, polled through the grace and past it, gets the GET's head (200,
    text/event-stream, the same headers) but is no client of the answer: nothing attaches,
    and the answer is stopped when the grace ends, as if nobody had asked (each HEAD used
    to attach for a moment, and its leaving restarted the grace)."""
    grace = 1.0
    app = await app_factory(
        chat_settings(chat_continue_on_disconnect=False, chat_disconnect_grace_seconds=grace)
    )
    user = await create_test_user(app)
    ollama_emulator.config.reply_tokens = 300
    ollama_emulator.config.tokens_per_second = 20  # 15 s: far longer than the polling
    async with _guarded_http(app) as http:
        async with http.stream(
            "POST", "/api/chat/stream", json=chat_body(), headers=user.headers
        ) as response:
            reader = EventReader(response)
            path = f"/api/chat/stream/{(await reader.next()).data['assistant_message_id']}"
            await reader.next()
            async with http.stream("GET", path, headers=user.headers) as got:
                head = await http.head(path, headers=user.headers)
        generation: Generation = app.state.generations.get(path.rsplit("/", 1)[1])
        polled, stopped_after = await _poll_heads_until_stopped(
            http, path, user.headers, generation
        )
    assert (head.status_code, head.content, _headers(head)) == (200, b"", _headers(got))
    assert head.headers["content-type"].startswith("text/event-stream")
    assert len(polled) >= 5
    assert {(answer.status_code, answer.content) for answer in polled} == {(200, b"")}
    assert stopped_after < grace + 1  # the grace, and the stop's own work
    assert ollama_emulator.generations_cancelled == 1


async def test_head_of_an_ended_answer_is_the_get_s_head_from_memory_or_the_database(
    app: FastAPI, regular_user: TestUser
) -> None:
    """200 while there are events the client has not seen, 204 once it saw the last,
    whether the answer is still in memory or replayed from the database."""
    async with _guarded_http(app) as http:
        events, path = await _answered(http, regular_user)
        seen_all = {**regular_user.headers, "Last-Event-ID": str(events[-1].id)}
        answers = []
        for forget in (False, True):
            if forget:  # out of memory: replayed from the database
                app.state.generations._retained.clear()
                app.state.generations._retained_bytes = 0
            for headers in (regular_user.headers, seen_all):
                got, head = (
                    await http.get(path, headers=headers),
                    await http.head(path, headers=headers),
                )
                assert _headers(head) == _headers(got)
                answers.append((got.status_code, head.status_code, head.content))
    assert answers == [(200, 200, b""), (204, 204, b"")] * 2


@pytest.mark.redis
async def test_head_through_another_process_asks_nothing_of_the_answer_s_own(
    app_factory: Callable[..., Any],
    chat_settings: Callable[..., Settings],
    live_server: Callable[[FastAPI], Any],
    ollama_emulator: OllamaEmulator,
) -> None:
    """The answer runs in process A, its client left, its grace (CHAT_CONTINUE_ON_DISCONNECT
    =false) runs; HEADs of its stream sent to process B get the stream's head without B
    following it through the relay (A would count each as a client, and restart the
    grace when it leaves): the answer stops when the grace ends."""
    grace = 1.0
    off = {"chat_continue_on_disconnect": False, "chat_disconnect_grace_seconds": grace}
    ollama_emulator.config.reply_tokens = 300
    ollama_emulator.config.tokens_per_second = 20  # 15 s: far longer than the polling
    async with two_processes(app_factory, chat_settings, live_server, **off) as (
        user,
        (app_a, app_b),
        (a, b),
    ):
        async with a.stream(
            "POST", "/api/chat/stream", json=chat_body(), headers=user.headers
        ) as response:
            reader = EventReader(response)
            answer_id = (await reader.next()).data["assistant_message_id"]
            await reader.next()
        generation: Generation = app_a.state.generations.get(answer_id)
        path = f"/api/chat/stream/{answer_id}"
        polled, stopped_after = await _poll_heads_until_stopped(b, path, user.headers, generation)
        assert not app_b.state.generations.relay._follows
    assert len(polled) >= 5
    assert {(answer.status_code, answer.content) for answer in polled} == {(200, b"")}
    assert polled[0].headers["content-type"].startswith("text/event-stream")
    assert stopped_after < grace + 1  # the grace, and the stop's own work
