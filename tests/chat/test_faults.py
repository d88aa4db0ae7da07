"""Failures before and after `start`, bad input, limits and ownership."""

from __future__ import annotations

import base64
import json
from collections.abc import Callable
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from ollama_web.chat.schemas import SYSTEM_PROMPT_CHARS
from ollama_web.emulator import OllamaEmulator
from tests.chat.conftest import EventReader, chat_body, parse_events, stored_conversation
from tests.conftest import asgi_client
from tests.fixtures.auth import TestUser, UserFactory, create_test_user


async def _conversation_count(client: httpx.AsyncClient, user: TestUser) -> int:
    response = await client.get("/api/conversations", headers=user.headers)
    return len(response.json()["items"])


async def test_unknown_model_is_404_and_nothing_is_stored(
    client: httpx.AsyncClient, ollama_emulator: OllamaEmulator, regular_user: TestUser
) -> None:
    for path in ("/api/chat/stream", "/api/chat/message"):
        response = await client.post(
            path, json=chat_body(model="no-such-model"), headers=regular_user.headers
        )
        assert response.status_code == 404
        body = response.json()
        assert body["error"] == "MODEL_NOT_FOUND"
        assert body["details"]["model_name"] == "no-such-model"
    assert await _conversation_count(client, regular_user) == 0
    created = await client.post(
        "/api/conversations", json={"model": "llama3.2"}, headers=regular_user.headers
    )
    conversation_id = created.json()["id"]
    response = await client.post(
        "/api/chat/stream",
        json={"conversation_id": conversation_id, "model": "gone:7b", "content": "hi"},
        headers=regular_user.headers,
    )
    assert response.status_code == 404
    stored = await stored_conversation(client, regular_user, conversation_id)
    assert stored["messages"] == []
    assert stored["model"] == "llama3.2:latest"
    assert not [r for r in ollama_emulator.requests if r.path == "/api/chat"]


async def test_ollama_down_is_503_and_the_user_message_is_kept(
    app_factory: Callable[..., Any], chat_settings: Callable[..., Any]
) -> None:
    app = await app_factory(chat_settings(ollama_url=["http://127.0.0.1:9"]))
    user = await create_test_user(app)
    async with asgi_client(app) as client:
        response = await client.post("/api/chat/stream", json=chat_body(), headers=user.headers)
        assert response.status_code == 503
        body = response.json()
        assert body["error"] == "OLLAMA_UNAVAILABLE"
        details = body["details"]
        stored = await stored_conversation(client, user, details["conversation_id"])
    (message,) = stored["messages"]
    assert message["id"] == details["user_message_id"]
    assert (message["role"], message["content"]) == ("user", "Hello there")
    assert stored["title"] == "Hello there"


async def test_a_node_down_since_the_health_cache_saw_it_is_503_and_no_answer_is_kept(
    app_factory: Callable[..., Any],
    chat_settings: Callable[..., Any],
    ollama_emulator: OllamaEmulator,
) -> None:
    """The node died after the health cache saw it up: the model resolves from the cache,
    but no connection can be made. Still the 503 of API-CONTRACT "Chat" (not a 200 with an
    error event), the user's message kept, no answer row left behind."""
    app = await app_factory(chat_settings(ollama_health_cache_seconds=300.0))
    user = await create_test_user(app)
    async with asgi_client(app) as client:
        first = await client.post("/api/chat/message", json=chat_body(), headers=user.headers)
        assert first.status_code == 200, first.text
        conversation_id = first.json()["conversation_id"]
        await ollama_emulator.stop()
        for path in ("/api/chat/stream", "/api/chat/message"):
            body = chat_body(conversation_id=conversation_id, content=f"to {path}")
            response = await client.post(path, json=body, headers=user.headers)
            assert response.status_code == 503, response.text
            assert response.headers["content-type"] == "application/json"
            error = response.json()
            assert error["error"] == "OLLAMA_UNAVAILABLE"
            assert error["details"]["conversation_id"] == conversation_id
            stored = await stored_conversation(client, user, conversation_id)
            last = stored["messages"][-1]  # the active branch ends at the new question
            assert last["id"] == error["details"]["user_message_id"]
            assert (last["role"], last["content"]) == ("user", f"to {path}")
        roles = [m["role"] for m in stored["messages"]]
        assert roles == ["user", "assistant", "user", "user"]  # each kept question is the leaf
        listed = await client.get(
            f"/api/conversations/{conversation_id}/export?format=json", headers=user.headers
        )
    exported = listed.json()
    answers = [m for m in exported["messages"] if m["role"] == "assistant"]
    assert [a["status"] for a in answers] == ["complete"]


@pytest.mark.parametrize("health_cache_seconds", [0.0, 300.0])
async def test_a_regenerate_that_reaches_no_node_leaves_the_conversation_as_it_was(
    app_factory: Callable[..., Any],
    chat_settings: Callable[..., Any],
    ollama_emulator: OllamaEmulator,
    health_cache_seconds: float,
) -> None:
    """A regenerate stores no new question: when no node is reachable (seen so at once, or
    only when the request is sent, the node having died within the health cache), the
    active branch stays where it was, not cut back to the regenerated answer's question."""
    app = await app_factory(chat_settings(ollama_health_cache_seconds=health_cache_seconds))
    user = await create_test_user(app)
    async with asgi_client(app) as client:
        first = (
            await client.post("/api/chat/message", json=chat_body(), headers=user.headers)
        ).json()
        conversation_id = first["conversation_id"]
        more = chat_body(conversation_id=conversation_id, content="and then?")
        assert (await client.post("/api/chat/message", json=more, headers=user.headers)).is_success
        before = await stored_conversation(client, user, conversation_id)
        await ollama_emulator.stop()
        for path in ("/api/chat/stream", "/api/chat/message"):
            again = {"regenerate_message_id": first["assistant_message"]["id"]}
            response = await client.post(path, json=again, headers=user.headers)
            assert response.status_code == 503, response.text
            assert response.json()["details"]["user_message_id"] == first["user_message"]["id"]
            after = await stored_conversation(client, user, conversation_id)
            assert after["messages"] == before["messages"]
            assert after["active_leaf_id"] == before["active_leaf_id"]
        exported = await client.get(
            f"/api/conversations/{conversation_id}/export", headers=user.headers
        )
    assert len(exported.json()["messages"]) == 4  # no answer row left behind


async def test_upstream_busy_is_an_ollama_busy_error_event_and_a_503_when_not_streamed(
    app: FastAPI,
    live_server: Callable[[FastAPI], Any],
    ollama_emulator: OllamaEmulator,
    regular_user: TestUser,
) -> None:
    ollama_emulator.config.busy = True
    async with live_server(app) as base_url, httpx.AsyncClient(base_url=base_url) as http:
        events = parse_events(
            (
                await http.post("/api/chat/stream", json=chat_body(), headers=regular_user.headers)
            ).content
        )
        assert [e.event for e in events] == ["start", "error"]
        assert events[-1].data["error"] == "OLLAMA_BUSY"
        assert events[-1].data["details"]["assistant_message"]["status"] == "error"
        response = await http.post(
            "/api/chat/message", json=chat_body(), headers=regular_user.headers
        )
    assert response.status_code == 503
    assert response.headers["retry-after"]
    body = response.json()
    assert body["error"] == "OLLAMA_BUSY"
    assert body["details"]["assistant_message"]["status"] == "error"
    assert body["details"]["user_message_id"]


@pytest.mark.parametrize(
    ("payload", "location"),
    [
        ({"options": {"temprature": 0.5}}, ["options", "temprature"]),
        ({"options": {"num_ctx": "4096"}}, ["options", "num_ctx"]),
        ({"options": {"num_ctx": True}}, ["options", "num_ctx"]),
        ({"options": {"top_p": 1.5}}, ["options", "top_p"]),
        ({"options": {"stop": "END"}}, ["options", "stop"]),
        ({"content": ""}, []),
        ({"regenerate_message_id": "a" * 32}, []),
        ({"conversation_id": "not-an-id"}, ["conversation_id"]),
        ({"unknown_field": 1}, ["unknown_field"]),
    ],
)
async def test_invalid_payloads_are_422(
    client: httpx.AsyncClient,
    regular_user: TestUser,
    payload: dict[str, Any],
    location: list[str],
) -> None:
    response = await client.post(
        "/api/chat/stream", json=chat_body(**payload), headers=regular_user.headers
    )
    assert response.status_code == 422, response.text
    body = response.json()
    assert body["error"] == "VALIDATION_ERROR"
    if location:
        assert any(f["loc"] == location for f in body["details"]["fields"]), body


async def test_limits_from_settings_are_422(
    app_factory: Callable[..., Any], chat_settings: Callable[..., Any]
) -> None:
    app = await app_factory(
        chat_settings(max_message_chars=20, max_images_per_message=1, max_image_bytes=8)
    )
    user = await create_test_user(app)
    small = base64.b64encode(b"12345678").decode()
    big = base64.b64encode(b"123456789").decode()
    cases = [
        ({"content": "x" * 21}, ["content"]),
        ({"images": [small, small]}, ["images"]),
        ({"images": [big]}, ["images", 0]),
        ({"images": ["not base64!"]}, ["images", 0]),
    ]
    bodies = [(json.dumps(chat_body(**payload)), location) for payload, location in cases]
    # A lone surrogate, as JSON can carry it (and no database can store it).
    bodies.append(('{"model": "llama3.2", "content": "a\\ud800b"}', ["content"]))
    async with asgi_client(app) as client:
        for raw, location in bodies:
            response = await client.post(
                "/api/chat/message",
                content=raw,
                headers={**user.headers, "Content-Type": "application/json"},
            )
            assert response.status_code == 422, (raw, response.text)
            assert response.json()["details"]["fields"][0]["loc"] == location
        assert await _conversation_count(client, user) == 0


async def test_a_system_prompt_longer_than_a_conversation_holds_is_422_whatever_the_limit(
    app_factory: Callable[..., Any], chat_settings: Callable[..., Any]
) -> None:
    """With MAX_MESSAGE_CHARS above 100 000 a chat stored a system prompt that PUT, PATCH
    and import refuse, and the conversation's export failed (500) on it."""
    app = await app_factory(chat_settings(max_message_chars=300_000))
    user = await create_test_user(app)
    async with asgi_client(app) as client:
        response = await client.post(
            "/api/chat/message",
            json=chat_body(system_prompt="s" * (SYSTEM_PROMPT_CHARS + 1)),
            headers=user.headers,
        )
        assert response.status_code == 422, response.text
        assert response.json()["details"]["fields"][0]["loc"] == ["system_prompt"]
        assert await _conversation_count(client, user) == 0


async def test_more_concurrent_generations_than_allowed_is_429_with_retry_after(
    app_factory: Callable[..., Any],
    chat_settings: Callable[..., Any],
    live_server: Callable[[FastAPI], Any],
    ollama_emulator: OllamaEmulator,
) -> None:
    app = await app_factory(chat_settings(max_concurrent_generations_per_user=1))
    user = await create_test_user(app)
    other = await create_test_user(app)
    ollama_emulator.config.reply_tokens = 200
    ollama_emulator.config.tokens_per_second = 50
    async with live_server(app) as base_url, httpx.AsyncClient(base_url=base_url) as http:
        async with http.stream(
            "POST", "/api/chat/stream", json=chat_body(), headers=user.headers
        ) as response:
            reader = EventReader(response)
            start = await reader.next()
            refused = await http.post("/api/chat/stream", json=chat_body(), headers=user.headers)
            assert refused.status_code == 429
            assert refused.json()["error"] == "TOO_MANY_GENERATIONS"
            assert int(refused.headers["retry-after"]) > 0
            # Another user is not affected.
            ollama_emulator.config.reply_tokens = 2
            ollama_emulator.config.tokens_per_second = 0
            allowed = await http.post("/api/chat/message", json=chat_body(), headers=other.headers)
            assert allowed.status_code == 200
            stopped = await http.post(
                f"/api/chat/{start.data['assistant_message_id']}/stop", headers=user.headers
            )
            assert stopped.status_code == 200
        again = await http.post("/api/chat/message", json=chat_body(), headers=user.headers)
        assert again.status_code == 200


async def test_another_users_conversation_and_message_ids_are_404(
    client: httpx.AsyncClient, user_factory: UserFactory
) -> None:
    owner = await user_factory()
    stranger = await user_factory()
    first = await client.post("/api/chat/message", json=chat_body(), headers=owner.headers)
    assert first.status_code == 200, first.text
    body = first.json()
    conversation_id = body["conversation_id"]
    user_id = body["user_message"]["id"]
    answer_id = body["assistant_message"]["id"]
    attempts = [
        ("POST", "/api/chat/message", {"conversation_id": conversation_id, "content": "x"}),
        ("POST", "/api/chat/stream", {"conversation_id": conversation_id, "content": "x"}),
        ("POST", "/api/chat/stream", {"edit_message_id": user_id, "content": "x"}),
        ("POST", "/api/chat/stream", {"regenerate_message_id": answer_id}),
        ("GET", f"/api/chat/stream/{answer_id}", None),
        ("POST", f"/api/chat/{answer_id}/stop", None),
    ]
    for method, path, payload in attempts:
        response = await client.request(method, path, json=payload, headers=stranger.headers)
        assert response.status_code == 404, (method, path, response.text)
        assert response.json()["error"] == "NOT_FOUND"
    # A user message is not an answer: no stream or stop for it either.
    for method, path in (
        ("GET", f"/api/chat/stream/{user_id}"),
        ("POST", f"/api/chat/{user_id}/stop"),
    ):
        response = await client.request(method, path, headers=owner.headers)
        assert response.status_code == 404
    stored = await stored_conversation(client, owner, conversation_id)
    assert len(stored["messages"]) == 2


async def test_chat_requires_authentication_before_validation(client: httpx.AsyncClient) -> None:
    response = await client.post("/api/chat/stream", json={"options": {"bad": 1}})
    assert response.status_code == 401


async def test_think_on_a_model_that_does_not_think_is_422_and_stores_nothing(
    client: httpx.AsyncClient, ollama_emulator: OllamaEmulator, regular_user: TestUser
) -> None:
    """Ollama answers a truthy `think` for a model without the thinking capability with a
    400 once the stream has started (a failed answer, stored, and a 502): the capabilities
    the node lists make it the client's 422 before anything is stored."""
    headers = regular_user.headers
    for path in ("/api/chat/message", "/api/chat/stream"):
        refused = await client.post(
            path, json=chat_body(model="llama3.2", think=True), headers=headers
        )
        assert refused.status_code == 422, refused.text
        (problem,) = refused.json()["details"]["fields"]
        assert problem["loc"] == ["think"]
    listing = await client.get("/api/conversations", headers=headers)
    assert listing.json()["items"] == []
    assert not [r for r in ollama_emulator.requests if r.path == "/api/chat"]

    for model, think in (("llama3.2", False), ("qwen3", True)):
        answered = await client.post(
            "/api/chat/message", json=chat_body(model=model, think=think), headers=headers
        )
        assert answered.status_code == 200, answered.text
