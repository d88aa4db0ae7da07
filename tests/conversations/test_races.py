"""Requests racing a deletion: the conversation, or the caller's account, deleted by another
request after this one read it. The answer is the one the same request gets a moment later
(404 for the conversation, 401 for the account), never a 500. The deletion is made, in a
transaction of its own, right after the request's own read (the function it awaits is
wrapped), so the race is hit every time."""

from __future__ import annotations

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import delete, func, select, update

from ollama_web.conversations import export as conversation_export
from ollama_web.conversations import repository
from ollama_web.conversations import service as conversation_service
from ollama_web.conversations.schemas import ConversationPatch, ConversationReplace
from ollama_web.core.db import session_scope
from ollama_web.core.errors import NotFoundError
from ollama_web.db import Conversation, User
from tests.conversations.conftest import Seeder
from tests.fixtures.auth import TestUser, execute_sql
from tests.fixtures.races import (
    delete_right_after,
    delete_right_before,
    used_once,
    without_request_id,
)


def _changes(conversation_id: str, first_message_id: str) -> list[tuple[str, str, object]]:
    url = f"/api/conversations/{conversation_id}"
    return [
        ("PATCH", url, {"title": "renamed"}),
        ("PUT", url, {"title": "replaced", "model": "llama3.2"}),
        ("POST", f"{url}/activate", {"message_id": first_message_id}),
    ]


async def _first_message_id(app: FastAPI, user_id: str, conversation_id: str) -> str:
    async with session_scope(app.state.core.sessionmaker) as session:
        messages = await repository.conversation_messages(session, user_id, conversation_id)
    return messages[0].id


@pytest.mark.parametrize("operation", ["PATCH", "PUT", "activate"])
async def test_a_change_to_a_conversation_deleted_after_it_was_loaded_is_404(
    app: FastAPI,
    client: httpx.AsyncClient,
    regular_user: TestUser,
    seed: Seeder,
    monkeypatch: pytest.MonkeyPatch,
    operation: str,
) -> None:
    """Loaded (by the route's dependency), then deleted by another request: its UPDATE
    matches no row (StaleDataError was a 500), and that is "not found"."""
    conversation_id = await seed(regular_user.id, "one", "two")
    first_id = await _first_message_id(app, regular_user.id, conversation_id)
    method, path, body = _changes(conversation_id, first_id)[
        ["PATCH", "PUT", "activate"].index(operation)
    ]
    gone = delete(Conversation).where(Conversation.id == conversation_id)
    await used_once(client, regular_user)
    with monkeypatch.context() as patched:
        delete_right_after(patched, app, repository, "get_conversation", gone)
        raced = await client.request(method, path, json=body, headers=regular_user.headers)
    later = await client.request(method, path, json=body, headers=regular_user.headers)
    assert raced.status_code == later.status_code == 404, raced.text
    assert without_request_id(raced) == without_request_id(later)
    assert later.json()["message"] == "Conversation not found."


async def test_activate_with_the_conversation_deleted_after_its_messages_were_read_is_404(
    app: FastAPI,
    client: httpx.AsyncClient,
    regular_user: TestUser,
    seed: Seeder,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The message was found, so the change is written: to a row that is gone."""
    conversation_id = await seed(regular_user.id, "one", "two")
    first_id = await _first_message_id(app, regular_user.id, conversation_id)
    # Shown up to the question: activating it shows its answer again, a change to write.
    shown = update(Conversation).where(Conversation.id == conversation_id)
    await execute_sql(app, shown.values(active_leaf_id=first_id))
    _, path, body = _changes(conversation_id, first_id)[2]
    gone = delete(Conversation).where(Conversation.id == conversation_id)
    await used_once(client, regular_user)
    with monkeypatch.context() as patched:
        delete_right_after(patched, app, repository, "conversation_messages", gone)
        raced = await client.post(path, json=body, headers=regular_user.headers)
    assert raced.status_code == 404, raced.text
    assert raced.json()["error"] == "NOT_FOUND"
    assert raced.json()["message"] == "Conversation not found."


@pytest.mark.parametrize("change", ["patch", "replace"])
async def test_changing_a_conversation_another_session_deleted_raises_not_found(
    app: FastAPI, regular_user: TestUser, seed: Seeder, change: str
) -> None:
    """The services themselves, with two sessions: one loads, the other deletes."""
    conversation_id = await seed(regular_user.id, "one")
    sessionmaker = app.state.core.sessionmaker
    async with session_scope(sessionmaker) as session:
        conversation = await repository.get_conversation(session, regular_user.id, conversation_id)
        async with session_scope(sessionmaker) as other:
            await other.execute(delete(Conversation).where(Conversation.id == conversation_id))
        if change == "patch":
            written = conversation_service.patch(
                session, conversation, ConversationPatch(title="late")
            )
        else:
            body = ConversationReplace(title="late", model="llama3.2")
            written = conversation_service.replace(session, conversation, body)
        with pytest.raises(NotFoundError) as raised:
            await written
        assert raised.value.message == "Conversation not found."
        await session.rollback()


async def test_creating_a_conversation_for_an_account_deleted_meanwhile_is_401(
    app: FastAPI,
    client: httpx.AsyncClient,
    regular_user: TestUser,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Authenticated, then the account is deleted before the row is written: the foreign
    key to it fails (an IntegrityError was a 500); the caller is no more, as its next
    request is told."""
    await used_once(client, regular_user)
    gone = delete(User).where(User.id == regular_user.id)
    with monkeypatch.context() as patched:
        delete_right_before(patched, app, conversation_service, "create", gone)
        raced = await client.post(
            "/api/conversations", json={"model": "llama3.2"}, headers=regular_user.headers
        )
    assert raced.status_code == 401, raced.text
    assert raced.json()["error"] == "UNAUTHENTICATED"
    assert raced.json()["message"] == "This account no longer exists."
    later = await client.post(
        "/api/conversations", json={"model": "llama3.2"}, headers=regular_user.headers
    )
    assert later.status_code == 401
    count = await execute_sql(app, select(func.count()).select_from(Conversation))
    assert count.scalar_one() == 0


async def test_importing_for_an_account_deleted_meanwhile_is_401(
    app: FastAPI,
    client: httpx.AsyncClient,
    regular_user: TestUser,
    seed: Seeder,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    conversation_id = await seed(regular_user.id, "one", "two")
    exported = await client.get(
        f"/api/conversations/{conversation_id}/export", headers=regular_user.headers
    )
    gone = delete(User).where(User.id == regular_user.id)
    with monkeypatch.context() as patched:
        delete_right_before(patched, app, conversation_export, "import_conversation", gone)
        raced = await client.post(
            "/api/conversations/import", json=exported.json(), headers=regular_user.headers
        )
    assert raced.status_code == 401, raced.text
    assert raced.json()["error"] == "UNAUTHENTICATED"
    count = await execute_sql(app, select(func.count()).select_from(Conversation))
    assert count.scalar_one() == 0
