"""What a conversation's options may ask of the node: MAX_NUM_CTX and runner options
(chat/options.py), checked where options are written and applied where they are sent."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import func, select, update

from ollama_web.core.db import session_scope
from ollama_web.db import Conversation
from ollama_web.emulator import OllamaEmulator
from tests.chat.conftest import chat_body, streamed_chats
from tests.conftest import asgi_client
from tests.fixtures.auth import TestUser, create_test_user

RUNNER = {
    "num_gpu": 0,
    "main_gpu": 0,
    "num_thread": 2,
    "num_batch": 64,
    "use_mmap": False,
    "use_mlock": True,
    "numa": False,
    "low_vram": True,
}


async def _conversation(client: httpx.AsyncClient, user: TestUser, **body: Any) -> str:
    response = await client.post(
        "/api/conversations", json={"model": "llama3.2", **body}, headers=user.headers
    )
    assert response.status_code == 201, response.text
    conversation_id: str = response.json()["id"]
    return conversation_id


def _export(options: dict[str, Any]) -> dict[str, Any]:
    at = "2026-11-28T10:00:00Z"
    return {
        "exported_at": at,
        "conversation": {
            "id": "c1",
            "title": "Imported",
            "model": "llama3.2",
            "options": options,
            "created_at": at,
            "updated_at": at,
        },
        "messages": [{"id": "m1", "role": "user", "content": "Hi", "created_at": at}],
    }


async def _write(
    client: httpx.AsyncClient, user: TestUser, route: str, options: dict[str, Any]
) -> httpx.Response:
    """One request of `route` (each way a request writes options) giving `options`."""
    if route == "create":
        body = {"model": "llama3.2", "options": options}
        return await client.post("/api/conversations", json=body, headers=user.headers)
    if route == "import":
        return await client.post(
            "/api/conversations/import", json=_export(options), headers=user.headers
        )
    if route == "chat (new)":
        body = chat_body(options=options)
        return await client.post("/api/chat/message", json=body, headers=user.headers)
    conversation_id = await _conversation(client, user)
    if route == "chat":
        body = {"conversation_id": conversation_id, "content": "Hi", "options": options}
        return await client.post("/api/chat/message", json=body, headers=user.headers)
    path = f"/api/conversations/{conversation_id}"
    if route == "put":
        body = {"title": "T", "model": "llama3.2", "options": options}
        return await client.put(path, json=body, headers=user.headers)
    assert route == "patch"
    return await client.patch(path, json={"options": options}, headers=user.headers)


ROUTES = ["create", "import", "put", "patch", "chat (new)", "chat"]


async def _conversations(app: FastAPI, user: TestUser) -> list[dict[str, Any]]:
    async with session_scope(app.state.core.sessionmaker) as session:
        rows = await session.execute(
            select(Conversation.options).where(Conversation.user_id == user.id)
        )
        return [row.options for row in rows]


@pytest.mark.parametrize("route", ROUTES)
async def test_a_user_may_not_set_runner_options(
    app: FastAPI,
    client: httpx.AsyncClient,
    ollama_emulator: OllamaEmulator,
    regular_user: TestUser,
    route: str,
) -> None:
    response = await _write(
        client, regular_user, route, {"temperature": 0.5, "num_gpu": 0, "use_mlock": True}
    )
    assert response.status_code == 403, response.text
    body = response.json()
    assert body["error"] == "FORBIDDEN"
    assert body["details"] == {"options": ["num_gpu", "use_mlock"]}
    assert "RUNNER_OPTIONS_ADMIN_ONLY" in body["message"]
    assert streamed_chats(ollama_emulator) == []  # nothing asked of the node
    # Nothing written: no conversation holds them (put/patch/chat found theirs empty).
    assert all(options == {} for options in await _conversations(app, regular_user))
    async with session_scope(app.state.core.sessionmaker) as session:
        counted = await session.scalar(select(func.count()).select_from(Conversation))
    assert counted == (0 if route in {"create", "import", "chat (new)"} else 1)


@pytest.mark.parametrize("route", ROUTES)
async def test_num_ctx_above_max_num_ctx_is_refused_for_everyone(
    app_factory: Callable[..., Any],
    chat_settings: Callable[..., Any],
    ollama_emulator: OllamaEmulator,
    route: str,
) -> None:
    app = await app_factory(chat_settings(max_num_ctx=8192))
    admin = await create_test_user(app, "admin")
    async with asgi_client(app) as client:
        response = await _write(client, admin, route, {"num_ctx": 8193})
        assert response.status_code == 422, response.text
        body = response.json()
        assert body["error"] == "VALIDATION_ERROR"
        (field,) = body["details"]["fields"]
        where = ["conversation", "options"] if route == "import" else ["options"]
        assert field["loc"] == [*where, "num_ctx"]
        assert field["message"] == "must be at most 8192 (MAX_NUM_CTX)"
        assert all(options == {} for options in await _conversations(app, admin))

        at_the_limit = await _write(client, admin, route, {"num_ctx": 8192})
        assert at_the_limit.status_code in {200, 201}, at_the_limit.text
    assert {"num_ctx": 8192} in await _conversations(app, admin)


async def test_the_default_max_num_ctx_is_128k(
    client: httpx.AsyncClient, regular_user: TestUser
) -> None:
    too_large = await _write(client, regular_user, "create", {"num_ctx": 131_073})
    assert too_large.status_code == 422, too_large.text
    assert (await _write(client, regular_user, "create", {"num_ctx": 131_072})).status_code == 201


async def test_an_administrator_sets_runner_options_and_they_reach_the_node(
    client: httpx.AsyncClient, ollama_emulator: OllamaEmulator, admin_user: TestUser
) -> None:
    conversation_id = await _conversation(client, admin_user, options=RUNNER)
    response = await client.post(
        "/api/chat/message",
        json={"conversation_id": conversation_id, "content": "Hi", "options": {"seed": 7}},
        headers=admin_user.headers,
    )
    assert response.status_code == 200, response.text
    assert streamed_chats(ollama_emulator)[-1]["options"] == {**RUNNER, "seed": 7}


async def test_runner_options_for_everyone_when_not_admin_only(
    app_factory: Callable[..., Any],
    chat_settings: Callable[..., Any],
    ollama_emulator: OllamaEmulator,
) -> None:
    app = await app_factory(chat_settings(runner_options_admin_only=False))
    user = await create_test_user(app)
    async with asgi_client(app) as client:
        response = await client.post(
            "/api/chat/message", json=chat_body(options=RUNNER), headers=user.headers
        )
    assert response.status_code == 200, response.text
    assert streamed_chats(ollama_emulator)[-1]["options"] == RUNNER


async def test_what_was_stored_before_is_sent_within_the_limits(
    app: FastAPI,
    client: httpx.AsyncClient,
    ollama_emulator: OllamaEmulator,
    admin_user: TestUser,
) -> None:
    """An administrator's conversation with runner options, once they are made a user, and a
    num_ctx stored under a larger limit (written here as an older version left it): the
    conversation still answers, with neither sent."""
    owner = await create_test_user(app, "admin")
    conversation_id = await _conversation(
        client, owner, options={**RUNNER, "temperature": 0.2, "num_ctx": 4096}
    )
    demoted = await client.patch(
        f"/api/admin/users/{owner.id}", json={"role": "user"}, headers=admin_user.headers
    )
    assert demoted.status_code == 200, demoted.text
    async with session_scope(app.state.core.sessionmaker) as session:
        await session.execute(
            update(Conversation)
            .where(Conversation.id == conversation_id)
            .values(options={**RUNNER, "temperature": 0.2, "num_ctx": 1_000_000})
        )

    for body in (
        {"conversation_id": conversation_id, "content": "Hi"},
        {"conversation_id": conversation_id, "content": "Again", "options": {"seed": 3}},
    ):
        response = await client.post("/api/chat/message", json=body, headers=owner.headers)
        assert response.status_code == 200, response.text
    first, second = streamed_chats(ollama_emulator)[-2:]
    assert first["options"] == {"temperature": 0.2, "num_ctx": 131_072}
    assert second["options"] == {"temperature": 0.2, "num_ctx": 131_072, "seed": 3}
    regenerated = await client.post(
        "/api/chat/message",
        json={"regenerate_message_id": response.json()["assistant_message"]["id"]},
        headers=owner.headers,
    )
    assert regenerated.status_code == 200, regenerated.text
    assert streamed_chats(ollama_emulator)[-1]["options"] == second["options"]
    # Stored as they were: the limits apply to what is sent.
    stored = (await _conversations(app, owner))[0]
    assert stored == {**RUNNER, "temperature": 0.2, "num_ctx": 1_000_000, "seed": 3}
    # And the owner, now a user, may take them out (a PATCH without runner options).
    cleared = await client.patch(
        f"/api/conversations/{conversation_id}",
        json={"options": {"temperature": 0.2}},
        headers=owner.headers,
    )
    assert cleared.status_code == 200, cleared.text
