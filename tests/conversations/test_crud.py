"""Create, read, replace (PUT), change (PATCH) and delete conversations."""

from __future__ import annotations

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import func, select

from ollama_web.conversations import repository
from ollama_web.conversations import service as conversation_service
from ollama_web.core.db import session_scope
from ollama_web.db import Conversation, Message
from tests.conversations.conftest import Seeder
from tests.fixtures.auth import TestUser, UserFactory


async def test_create_then_get_a_conversation(
    client: httpx.AsyncClient, regular_user: TestUser
) -> None:
    response = await client.post(
        "/api/conversations",
        json={
            "title": "  Trip\u0007 plans ",
            "model": "llama3.2",
            "system_prompt": "You are a travel agent.",
            "options": {"temperature": 0.3, "num_ctx": 8192, "stop": ["END"]},
        },
        headers=regular_user.headers,
    )
    assert response.status_code == 201, response.text
    created = response.json()
    assert created["title"] == "  Trip plans "
    assert created["model"] == "llama3.2:latest"
    assert created["options"] == {"temperature": 0.3, "num_ctx": 8192, "stop": ["END"]}
    assert (created["pinned"], created["archived"]) == (False, False)
    fetched = await client.get(f"/api/conversations/{created['id']}", headers=regular_user.headers)
    assert fetched.status_code == 200
    assert fetched.json() == {**created, "messages": []}


async def test_every_option_ollama_documents_is_accepted(
    client: httpx.AsyncClient, regular_user: TestUser
) -> None:
    """Its API's options and its Modelfile parameters (mirostat, tfs_z... which newer
    engines ignore): a client using one must not have its request refused. (Runner options
    are an administrator's: tests/chat/test_options_policy.py.)"""
    options = {
        "mirostat": 2, "mirostat_eta": 0.1, "mirostat_tau": 5.0, "tfs_z": 1.0,
        "min_p": 0.05, "typical_p": 1.0, "num_keep": 4,
    }  # fmt: skip
    response = await client.post(
        "/api/conversations",
        json={"model": "llama3.2", "options": options},
        headers=regular_user.headers,
    )
    assert response.status_code == 201, response.text
    assert response.json()["options"] == options


async def test_a_conversation_without_a_title_gets_a_placeholder(
    client: httpx.AsyncClient, regular_user: TestUser
) -> None:
    response = await client.post(
        "/api/conversations", json={"model": "mistral:7b"}, headers=regular_user.headers
    )
    assert response.json()["title"] == "New conversation"
    assert response.json()["title_generated"] is False


@pytest.mark.parametrize(
    "body",
    [
        {"model": "llama3.2", "options": {"temprature": 1}},
        {"model": "llama3.2", "options": {"seed": 1.5}},
        {"model": "no spaces allowed"},
        {"model": "llama3.2", "title": "x" * 201},
        {"model": "llama3.2", "title": ""},
        {"title": "no model"},
        {"model": "llama3.2", "pinned": True},
    ],
)
async def test_invalid_conversations_are_422(
    client: httpx.AsyncClient, regular_user: TestUser, body: dict[str, object]
) -> None:
    response = await client.post("/api/conversations", json=body, headers=regular_user.headers)
    assert response.status_code == 422, response.text
    assert response.json()["error"] == "VALIDATION_ERROR"


async def test_put_replaces_every_field_and_patch_changes_only_the_given_ones(
    client: httpx.AsyncClient, regular_user: TestUser
) -> None:
    headers = regular_user.headers
    created = (
        await client.post(
            "/api/conversations",
            json={"model": "llama3.2", "system_prompt": "Be terse.", "options": {"seed": 7}},
            headers=headers,
        )
    ).json()
    url = f"/api/conversations/{created['id']}"
    patched = await client.patch(url, json={"pinned": True, "title": "Renamed"}, headers=headers)
    assert patched.status_code == 200
    body = patched.json()
    assert (body["pinned"], body["title"], body["system_prompt"]) == (True, "Renamed", "Be terse.")
    assert body["options"] == {"seed": 7}
    assert body["title_generated"] is True
    cleared = await client.patch(url, json={"system_prompt": None}, headers=headers)
    assert cleared.json()["system_prompt"] is None
    assert cleared.json()["pinned"] is True
    # As the schema says: null clears the prompt and the options, and leaves the fields that
    # cannot be empty as they are.
    nulls = {"title": None, "model": None, "pinned": None, "archived": None, "options": None}
    kept = (await client.patch(url, json=nulls, headers=headers)).json()
    assert (kept["title"], kept["pinned"], kept["archived"]) == ("Renamed", True, False)
    assert (kept["model"], kept["options"]) == (body["model"], {})
    replaced = await client.put(url, json={"title": "Fresh", "model": "qwen3"}, headers=headers)
    assert replaced.status_code == 200
    body = replaced.json()
    assert (body["title"], body["model"], body["pinned"], body["options"]) == (
        "Fresh",
        "qwen3:latest",
        False,
        {},
    )
    missing = await client.put(url, json={"title": "No model"}, headers=headers)
    assert missing.status_code == 422
    bad = await client.patch(url, json={"options": {"nope": 1}}, headers=headers)
    assert bad.status_code == 422


async def test_delete_removes_the_conversation_and_its_messages(
    app: FastAPI, client: httpx.AsyncClient, regular_user: TestUser, seed: Seeder
) -> None:
    conversation_id = await seed(regular_user.id, "one", "two", "three")
    response = await client.delete(
        f"/api/conversations/{conversation_id}", headers=regular_user.headers
    )
    assert response.status_code == 204
    again = await client.get(f"/api/conversations/{conversation_id}", headers=regular_user.headers)
    assert again.status_code == 404
    async with session_scope(app.state.core.sessionmaker) as session:
        count = await session.scalar(
            select(func.count())
            .select_from(Message)
            .where(Message.conversation_id == conversation_id)
        )
    assert count == 0


async def _messages_of(app: FastAPI, conversation_id: str) -> int:
    async with session_scope(app.state.core.sessionmaker) as session:
        count = await session.scalar(
            select(func.count())
            .select_from(Message)
            .where(Message.conversation_id == conversation_id)
        )
    return int(count or 0)


# SQLite ran a cascade through `parent_id` one trigger level per message, and gave up past
# 1000 levels: a 500-exchange conversation could not be deleted, nor its owner's account.
LONG_BRANCH = [f"turn {index}" for index in range(1200)]


async def test_a_conversation_with_a_branch_of_over_a_thousand_messages_is_deleted(
    app: FastAPI, client: httpx.AsyncClient, regular_user: TestUser, seed: Seeder
) -> None:
    conversation_id = await seed(regular_user.id, *LONG_BRANCH)
    response = await client.delete(
        f"/api/conversations/{conversation_id}", headers=regular_user.headers
    )
    assert response.status_code == 204, response.text
    assert await _messages_of(app, conversation_id) == 0


async def test_the_owner_of_a_branch_of_over_a_thousand_messages_can_be_deleted(
    app: FastAPI, client: httpx.AsyncClient, user_factory: UserFactory, seed: Seeder
) -> None:
    admin = await user_factory(role="admin")
    owner = await user_factory()
    conversation_id = await seed(owner.id, *LONG_BRANCH)
    response = await client.delete(f"/api/admin/users/{owner.id}", headers=admin.headers)
    assert response.status_code == 204, response.text
    assert await _messages_of(app, conversation_id) == 0


async def test_a_delete_that_finds_the_row_already_gone_succeeds_without_a_warning(
    app: FastAPI, regular_user: TestUser, seed: Seeder
) -> None:
    """Two DELETEs at once: the second loaded the row before the first removed it. It
    deletes nothing, without SQLAlchemy's "expected to delete 1 row" warning (an error in
    this suite, a log line in production)."""
    conversation_id = await seed(regular_user.id, "one", "two")
    sessionmaker = app.state.core.sessionmaker
    async with session_scope(sessionmaker) as first, session_scope(sessionmaker) as second:
        mine = await repository.get_conversation(first, regular_user.id, conversation_id)
        late = await repository.get_conversation(second, regular_user.id, conversation_id)
        await conversation_service.delete(first, mine)
        await first.commit()
        await conversation_service.delete(second, late)
    async with session_scope(sessionmaker) as session:
        assert await session.get(Conversation, conversation_id) is None


async def test_another_users_conversation_is_404_for_every_operation(
    client: httpx.AsyncClient, user_factory: UserFactory, seed: Seeder
) -> None:
    owner = await user_factory()
    stranger = await user_factory()
    conversation_id = await seed(owner.id, "secret question", "secret answer")
    url = f"/api/conversations/{conversation_id}"
    attempts: list[tuple[str, str, object]] = [
        ("GET", url, None),
        ("PUT", url, {"title": "mine now", "model": "llama3.2"}),
        ("PATCH", url, {"title": "mine now"}),
        ("DELETE", url, None),
        ("GET", f"{url}/export", None),
        ("GET", f"{url}/export?format=markdown", None),
        ("POST", f"{url}/activate", {"message_id": conversation_id}),
    ]
    for method, path, body in attempts:
        response = await client.request(method, path, json=body, headers=stranger.headers)
        assert response.status_code == 404, (method, path)
        assert response.json()["error"] == "NOT_FOUND"
    listed = await client.get("/api/conversations", headers=stranger.headers)
    assert listed.json() == {"items": [], "next_cursor": None}
    still = await client.get(url, headers=owner.headers)
    assert still.json()["title"] == "Seeded"


async def test_activate_refuses_a_message_of_another_conversation(
    client: httpx.AsyncClient, regular_user: TestUser, seed: Seeder
) -> None:
    first = await seed(regular_user.id, "a", "b")
    second = await seed(regular_user.id, "c", "d")
    other_message = (
        await client.get(f"/api/conversations/{second}", headers=regular_user.headers)
    ).json()["messages"][0]["id"]
    response = await client.post(
        f"/api/conversations/{first}/activate",
        json={"message_id": other_message},
        headers=regular_user.headers,
    )
    assert response.status_code == 404
