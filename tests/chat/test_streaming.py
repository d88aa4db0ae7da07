"""`POST /api/chat/stream` against the emulator, over a real loopback server."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import httpx
from fastapi import FastAPI

from ollama_web.emulator import OllamaEmulator
from ollama_web.emulator.config import DEFAULT_REPLY, DEFAULT_THINKING
from tests.chat.conftest import (
    chat_body,
    parse_events,
    stored_conversation,
    streamed_chat,
    streamed_chats,
    text_of,
)
from tests.conftest import asgi_client
from tests.fixtures.auth import TestUser


async def test_streamed_and_stored_text_equal_upstream_even_with_utf8_split_across_chunks(
    app: FastAPI,
    live_server: Callable[[FastAPI], Any],
    ollama_emulator: OllamaEmulator,
    regular_user: TestUser,
) -> None:
    ollama_emulator.config.split_utf8 = True
    ollama_emulator.config.done_text = " (fin ✓)"
    expected = DEFAULT_REPLY + " (fin ✓)"
    async with (
        live_server(app) as base_url,
        httpx.AsyncClient(base_url=base_url) as http,
        http.stream(
            "POST", "/api/chat/stream", json=chat_body(), headers=regular_user.headers
        ) as response,
    ):
        assert response.status_code == 200
        assert response.headers["content-type"] == "text/event-stream; charset=utf-8"
        assert response.headers["cache-control"] == "no-cache"
        assert response.headers["x-accel-buffering"] == "no"
        raw = b"".join([chunk async for chunk in response.aiter_raw()])
    events = parse_events(raw)
    assert [e.id for e in events] == list(range(1, len(events) + 1))
    assert events[0].event == "start"
    assert events[-1].event == "done"
    start = events[0].data
    assert start["model"] == "llama3.2:latest"
    assert text_of(events) == expected
    done = events[-1].data["message"]
    assert done["content"] == expected
    assert done["status"] == "complete"
    assert done["done_reason"] == "stop"
    assert done["eval_count"] > 0
    assert done["tokens_per_second"] > 0
    assert done["id"] == start["assistant_message_id"]
    async with asgi_client(app) as client:
        stored = await stored_conversation(client, regular_user, start["conversation_id"])
    user_message, answer = stored["messages"]
    assert user_message["id"] == start["user_message_id"]
    assert user_message["content"] == "Hello there"
    assert answer["content"].encode() == expected.encode()
    assert answer["status"] == "complete"
    assert answer["sibling_ids"] == [answer["id"]]
    sent = streamed_chats(ollama_emulator)[-1]
    assert sent["messages"] == [{"role": "user", "content": "Hello there"}]


async def test_thinking_is_streamed_and_stored_apart_from_the_answer(
    app: FastAPI,
    live_server: Callable[[FastAPI], Any],
    ollama_emulator: OllamaEmulator,
    regular_user: TestUser,
) -> None:
    async with live_server(app) as base_url, httpx.AsyncClient(base_url=base_url) as http:
        response = await http.post(
            "/api/chat/stream", json=chat_body(model="qwen3"), headers=regular_user.headers
        )
    events = parse_events(response.content)
    assert text_of(events, "thinking") == DEFAULT_THINKING
    assert text_of(events) == DEFAULT_REPLY
    message = events[-1].data["message"]
    assert message["thinking"] == DEFAULT_THINKING
    assert message["content"] == DEFAULT_REPLY


async def test_a_second_turn_sends_the_whole_branch_with_the_system_prompt(
    app: FastAPI,
    live_server: Callable[[FastAPI], Any],
    ollama_emulator: OllamaEmulator,
    regular_user: TestUser,
) -> None:
    ollama_emulator.config.reply = "First answer."
    async with live_server(app) as base_url, httpx.AsyncClient(base_url=base_url) as http:
        first = parse_events(
            (
                await http.post(
                    "/api/chat/stream",
                    json=chat_body(system_prompt="Be brief.", options={"temperature": 0.1}),
                    headers=regular_user.headers,
                )
            ).content
        )
        conversation_id = first[0].data["conversation_id"]
        ollama_emulator.config.reply = "Second answer."
        second = parse_events(
            (
                await http.post(
                    "/api/chat/stream",
                    json={"conversation_id": conversation_id, "content": "And then?"},
                    headers=regular_user.headers,
                )
            ).content
        )
    assert text_of(second) == "Second answer."
    sent = streamed_chats(ollama_emulator)[-1]
    assert sent["model"] == "llama3.2:latest"
    assert sent["options"] == {"temperature": 0.1}
    assert sent["messages"] == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hello there"},
        {"role": "assistant", "content": "First answer."},
        {"role": "user", "content": "And then?"},
    ]


async def test_keepalive_comments_flow_while_waiting_for_the_first_token(
    app_factory: Callable[..., Any],
    chat_settings: Callable[..., Any],
    live_server: Callable[[FastAPI], Any],
    ollama_emulator: OllamaEmulator,
) -> None:
    from tests.fixtures.auth import create_test_user

    app = await app_factory(chat_settings(sse_keepalive_seconds=0.05))
    user = await create_test_user(app)
    ollama_emulator.config.first_token_delay = 1.0
    async with streamed_chat(live_server, app, user) as reader:
        events = await reader.until("done")
    before_first_token = reader.raw.split(b"event: token")[0]
    assert before_first_token.count(b": keep-alive\n\n") >= 3
    assert text_of(events) == DEFAULT_REPLY


async def test_a_done_reason_ollama_sends_empty_is_stored_as_none(
    app: FastAPI,
    live_server: Callable[[FastAPI], Any],
    ollama_emulator: OllamaEmulator,
    regular_user: TestUser,
) -> None:
    """Ollama sends `done_reason: ""` for a reason it has no name for: no reason, not ""."""
    ollama_emulator.config.done_reason = ""
    async with streamed_chat(live_server, app, regular_user) as reader:
        done = (await reader.rest())[-1]
    assert done.event == "done"
    assert done.data["message"]["status"] == "complete"
    assert done.data["message"]["done_reason"] is None
    async with asgi_client(app) as client:
        conversation_id = done.data["message"]["conversation_id"]
        stored = await stored_conversation(client, regular_user, conversation_id)
    assert stored["messages"][-1]["done_reason"] is None
