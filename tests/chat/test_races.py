"""A chat turn racing a deletion. The turn is read in the request's transaction, which ends
before the model is resolved; its rows are written afterwards in a transaction of their own.
What another request deleted in between (the conversation, or the caller's account) is this
request's answer, before any event stream starts: 404 or 401, as a moment later, with its
slot given back, nothing stored and nothing asked of Ollama. The deletion is made while
the model is resolved (the gateway's `resolve_model` is wrapped), so the race is hit every
time."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import delete, func, select

from ollama_web.chat.registry import GenerationRegistry
from ollama_web.core.config import Settings
from ollama_web.db import Conversation, Message, User
from ollama_web.emulator import OllamaEmulator
from tests.chat.conftest import chat_body, streamed_chats
from tests.fixtures.auth import TestUser, execute_sql
from tests.fixtures.races import delete_right_before, used_once, without_request_id

ENDPOINTS = ["/api/chat/message", "/api/chat/stream"]


@pytest.fixture
def settings(chat_settings: Callable[..., Settings]) -> Settings:
    # One generation at a time: a slot the raced request kept would refuse the next chat.
    return chat_settings(max_concurrent_generations_per_user=1)


async def _messages(app: FastAPI, conversation_id: str | None = None) -> int:
    statement = select(func.count()).select_from(Message)
    if conversation_id is not None:
        statement = statement.where(Message.conversation_id == conversation_id)
    counted: int = (await execute_sql(app, statement)).scalar_one()
    return counted


async def _first_exchange(client: httpx.AsyncClient, user: TestUser) -> dict[str, Any]:
    response = await client.post("/api/chat/message", json=chat_body(), headers=user.headers)
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def _slots_held(app: FastAPI, user: TestUser) -> int:
    registry: GenerationRegistry = app.state.generations
    return len(registry._reservations.get(user.id, []))


@pytest.mark.parametrize("endpoint", ENDPOINTS)
@pytest.mark.parametrize("mode", ["append", "regenerate"])
async def test_a_turn_into_a_conversation_deleted_meanwhile_is_404_before_any_stream(
    app: FastAPI,
    client: httpx.AsyncClient,
    ollama_emulator: OllamaEmulator,
    regular_user: TestUser,
    monkeypatch: pytest.MonkeyPatch,
    endpoint: str,
    mode: str,
) -> None:
    """Its rows' foreign key to the conversation fails (an IntegrityError was a 500)."""
    first = await _first_exchange(client, regular_user)
    conversation_id = first["conversation_id"]
    if mode == "append":
        body = {"conversation_id": conversation_id, "content": "and then?"}
    else:
        body = {"regenerate_message_id": first["assistant_message"]["id"]}
    asked = len(streamed_chats(ollama_emulator))
    gone = delete(Conversation).where(Conversation.id == conversation_id)
    with monkeypatch.context() as patched:
        delete_right_before(patched, app, app.state.gateway, "resolve_model", gone)
        raced = await client.post(endpoint, json=body, headers=regular_user.headers)
    assert raced.status_code == 404, raced.text
    assert raced.headers["content-type"] == "application/json"
    later = await client.post(endpoint, json=body, headers=regular_user.headers)
    assert without_request_id(raced) == without_request_id(later)
    expected = "Conversation not found." if mode == "append" else "Message not found."
    assert raced.json()["message"] == expected
    assert await _messages(app, conversation_id) == 0
    assert len(streamed_chats(ollama_emulator)) == asked
    assert _slots_held(app, regular_user) == 0
    again = await client.post("/api/chat/message", json=chat_body(), headers=regular_user.headers)
    assert again.status_code == 200, again.text


@pytest.mark.parametrize("endpoint", ENDPOINTS)
@pytest.mark.parametrize("mode", ["new", "append"])
async def test_a_turn_of_an_account_deleted_meanwhile_is_401_before_any_stream(
    app: FastAPI,
    client: httpx.AsyncClient,
    ollama_emulator: OllamaEmulator,
    regular_user: TestUser,
    monkeypatch: pytest.MonkeyPatch,
    endpoint: str,
    mode: str,
) -> None:
    """A new conversation's foreign key to the account fails, or (the account's
    conversations gone with it) the messages' to their conversation."""
    await used_once(client, regular_user)
    body = chat_body()
    if mode == "append":
        first = await _first_exchange(client, regular_user)
        body = {"conversation_id": first["conversation_id"], "content": "and then?"}
    asked = len(streamed_chats(ollama_emulator))
    gone = delete(User).where(User.id == regular_user.id)
    with monkeypatch.context() as patched:
        delete_right_before(patched, app, app.state.gateway, "resolve_model", gone)
        raced = await client.post(endpoint, json=body, headers=regular_user.headers)
    assert raced.status_code == 401, raced.text
    assert raced.json()["error"] == "UNAUTHENTICATED"
    assert raced.json()["message"] == "This account no longer exists."
    assert (await client.post(endpoint, json=body, headers=regular_user.headers)).status_code == 401
    assert await _messages(app) == 0
    assert len(streamed_chats(ollama_emulator)) == asked
    assert _slots_held(app, regular_user) == 0
