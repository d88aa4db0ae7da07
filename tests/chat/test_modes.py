"""Append, edit and regenerate: every earlier version is kept; titles after the first turn."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import event

from ollama_web.conversations import repository
from ollama_web.conversations.titles import TITLE_CONCURRENCY
from ollama_web.emulator import OllamaEmulator
from tests.chat.conftest import EventReader, chat_body, stored_conversation, streamed_chats
from tests.conftest import asgi_client
from tests.fixtures.auth import TestUser, create_test_user


async def _send(
    client: httpx.AsyncClient, user: TestUser, emulator: OllamaEmulator, reply: str, **body: Any
) -> dict[str, Any]:
    emulator.config.reply = reply
    response = await client.post("/api/chat/message", json=body, headers=user.headers)
    assert response.status_code == 200, response.text
    result: dict[str, Any] = response.json()
    return result


def _contents(conversation: dict[str, Any]) -> list[str]:
    return [m["content"] for m in conversation["messages"]]


async def test_edit_and_regenerate_branch_and_keep_every_earlier_version(
    client: httpx.AsyncClient, ollama_emulator: OllamaEmulator, regular_user: TestUser
) -> None:
    user, emu = regular_user, ollama_emulator
    first = await _send(client, user, emu, "A1", model="llama3.2", content="Q1")
    conversation_id = first["conversation_id"]
    assert first["user_message"]["content"] == "Q1"
    assert first["assistant_message"]["content"] == "A1"
    assert first["assistant_message"]["status"] == "complete"
    second = await _send(client, user, emu, "A2", conversation_id=conversation_id, content="Q2")
    regenerated = await _send(
        client, user, emu, "A2-bis", regenerate_message_id=second["assistant_message"]["id"]
    )
    assert regenerated["user_message"]["id"] == second["user_message"]["id"]
    assert streamed_chats(emu)[-1]["messages"] == [
        {"role": "user", "content": "Q1"},
        {"role": "assistant", "content": "A1"},
        {"role": "user", "content": "Q2"},
    ]
    conversation = await stored_conversation(client, user, conversation_id)
    assert _contents(conversation) == ["Q1", "A1", "Q2", "A2-bis"]
    answers = conversation["messages"][3]["sibling_ids"]
    assert answers == [second["assistant_message"]["id"], regenerated["assistant_message"]["id"]]

    edited = await _send(
        client, user, emu, "A1'", edit_message_id=first["user_message"]["id"], content="Q1'"
    )
    assert streamed_chats(emu)[-1]["messages"] == [{"role": "user", "content": "Q1'"}]
    conversation = await stored_conversation(client, user, conversation_id)
    assert _contents(conversation) == ["Q1'", "A1'"]
    assert conversation["messages"][0]["sibling_ids"] == [
        first["user_message"]["id"],
        edited["user_message"]["id"],
    ]
    assert conversation["messages"][0]["parent_id"] is None

    # Going back to the first version shows its whole branch, newest answers included.
    response = await client.post(
        f"/api/conversations/{conversation_id}/activate",
        json={"message_id": first["user_message"]["id"]},
        headers=user.headers,
    )
    assert response.status_code == 200
    assert _contents(response.json()) == ["Q1", "A1", "Q2", "A2-bis"]
    response = await client.post(
        f"/api/conversations/{conversation_id}/activate",
        json={"message_id": second["assistant_message"]["id"]},
        headers=user.headers,
    )
    assert _contents(response.json()) == ["Q1", "A1", "Q2", "A2"]
    # Appending continues the branch on show.
    await _send(client, user, emu, "A3", conversation_id=conversation_id, content="Q3")
    conversation = await stored_conversation(client, user, conversation_id)
    assert _contents(conversation) == ["Q1", "A1", "Q2", "A2", "Q3", "A3"]


async def test_edit_and_regenerate_refuse_the_wrong_kind_of_message(
    client: httpx.AsyncClient, ollama_emulator: OllamaEmulator, regular_user: TestUser
) -> None:
    first = await _send(client, regular_user, ollama_emulator, "A", model="llama3.2", content="Q")
    cases = [
        {"edit_message_id": first["assistant_message"]["id"], "content": "x"},
        {"regenerate_message_id": first["user_message"]["id"]},
    ]
    for body in cases:
        response = await client.post("/api/chat/message", json=body, headers=regular_user.headers)
        assert response.status_code == 422, response.text


async def test_a_title_is_generated_after_the_first_exchange(
    client: httpx.AsyncClient, ollama_emulator: OllamaEmulator, regular_user: TestUser
) -> None:
    result = await _send(
        client,
        regular_user,
        ollama_emulator,
        '"Title: Greetings From Space."\nand more',
        model="llama3.2",
        content="Tell me about the view of the Earth from orbit please",
    )
    conversation_id = result["conversation_id"]
    deadline = time.monotonic() + 5
    while True:
        conversation = await stored_conversation(client, regular_user, conversation_id)
        if conversation["title_generated"] or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.02)
    assert conversation["title"] == "Greetings From Space"
    title_request = [
        r.json for r in ollama_emulator.requests if r.json and r.json.get("stream") is False
    ][-1]
    assert title_request["think"] is False
    assert "Earth from orbit" in title_request["messages"][-1]["content"]


async def test_without_a_model_title_the_first_words_stay(
    client: httpx.AsyncClient, ollama_emulator: OllamaEmulator, regular_user: TestUser
) -> None:
    ollama_emulator.config.reply = "   "
    response = await client.post(
        "/api/chat/message",
        json=chat_body(content="Why is the sky blue during the day and red at sunset?"),
        headers=regular_user.headers,
    )
    conversation_id = response.json()["conversation_id"]
    await asyncio.sleep(0.2)
    conversation = await stored_conversation(client, regular_user, conversation_id)
    assert conversation["title"] == "Why is the sky blue during the day and red at sunset?"
    assert conversation["title_generated"] is False


async def test_first_words_of_control_characters_are_cleaned_as_any_title(
    client: httpx.AsyncClient, ollama_emulator: OllamaEmulator, regular_user: TestUser
) -> None:
    """The title made of a message's first words gets the cleaning every title gets (it
    kept control characters, and one made of them alone broke the JSON export); the model's
    title, made of control characters too here, is not used."""
    ollama_emulator.config.reply = "\x01\x07"
    headers = regular_user.headers
    for content, title in (
        ("\x01\x07", "New conversation"),
        ("\x1b[31m\u202e hi\x07", "[31m\u202e hi"),
    ):
        response = await client.post(
            "/api/chat/message", json=chat_body(content=content), headers=headers
        )
        assert response.status_code == 200, response.text
        assert response.json()["user_message"]["content"] == content  # stored verbatim
        conversation_id = response.json()["conversation_id"]
        await asyncio.sleep(0.2)  # the title request has come and gone
        conversation = await stored_conversation(client, regular_user, conversation_id)
        assert (conversation["title"], conversation["title_generated"]) == (title, False)
        export = await client.get(f"/api/conversations/{conversation_id}/export", headers=headers)
        assert export.status_code == 200, export.text
        assert export.json()["conversation"]["title"] == title


async def test_a_mode_given_the_other_role_s_message_says_which_it_needs(
    client: httpx.AsyncClient, ollama_emulator: OllamaEmulator, regular_user: TestUser
) -> None:
    first = await _send(client, regular_user, ollama_emulator, "A1", model="llama3.2", content="Q")
    question, answer = first["user_message"]["id"], first["assistant_message"]["id"]
    for body, field, message in (
        ({"regenerate_message_id": question}, "regenerate_message_id", "an assistant message"),
        ({"edit_message_id": answer, "content": "Q'"}, "edit_message_id", "a user message"),
    ):
        response = await client.post("/api/chat/message", json=body, headers=regular_user.headers)
        assert response.status_code == 422, response.text
        (problem,) = response.json()["details"]["fields"]
        assert (problem["loc"], problem["message"]) == ([field], f"must be the id of {message}")


async def test_an_empty_system_prompt_clears_it_and_is_stored_as_given(
    client: httpx.AsyncClient, ollama_emulator: OllamaEmulator, regular_user: TestUser
) -> None:
    user, emu = regular_user, ollama_emulator
    first = await _send(client, user, emu, "A1", model="llama3.2", content="Q1", system_prompt="S")
    conversation_id = first["conversation_id"]
    assert streamed_chats(emu)[-1]["messages"][0] == {"role": "system", "content": "S"}
    await _send(
        client, user, emu, "A2", conversation_id=conversation_id, content="Q2", system_prompt=""
    )
    assert [m["role"] for m in streamed_chats(emu)[-1]["messages"]] == ["user", "assistant", "user"]
    # As the conversation endpoints keep it: "" (no system prompt), not null.
    conversation = await stored_conversation(client, user, conversation_id)
    assert conversation["system_prompt"] == ""
    fresh = await _send(client, user, emu, "B1", model="llama3.2", content="Q", system_prompt="")
    assert (await stored_conversation(client, user, fresh["conversation_id"]))[
        "system_prompt"
    ] == ""
    patched = await client.patch(
        f"/api/conversations/{conversation_id}", json={"system_prompt": ""}, headers=user.headers
    )
    assert patched.json()["system_prompt"] == ""


async def test_a_storm_of_new_conversations_gets_every_title_a_few_requests_at_a_time(
    app_factory: Callable[..., Any],
    chat_settings: Callable[..., Any],
    ollama_emulator: OllamaEmulator,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """40 first exchanges at once: every conversation gets its model-written title, and no
    more than TITLE_CONCURRENCY title requests are in flight at any moment (they compete
    with the answers for the node's slots)."""
    chats = 40
    app = await app_factory(chat_settings(max_concurrent_generations_per_user=chats))
    user = await create_test_user(app)
    gateway = app.state.gateway
    real = gateway.chat_once
    counts = {"now": 0, "peak": 0, "asked": 0}

    async def counted(*args: Any, **kwargs: Any) -> Any:
        counts["asked"] += 1
        counts["now"] += 1
        counts["peak"] = max(counts["peak"], counts["now"])
        try:
            return await real(*args, **kwargs)
        finally:
            counts["now"] -= 1

    monkeypatch.setattr(gateway, "chat_once", counted)
    ollama_emulator.config.reply = "Storm Title\nand more words"
    ollama_emulator.config.tokens_per_second = 100  # each title takes a while: they overlap
    async with asgi_client(app) as client:
        sent = [
            client.post(
                "/api/chat/message", json=chat_body(content=f"question {i}"), headers=user.headers
            )
            for i in range(chats)
        ]
        answers = await asyncio.gather(*sent)
        assert {answer.status_code for answer in answers} == {200}
        pending = {answer.json()["conversation_id"] for answer in answers}
        deadline = time.monotonic() + 30
        while pending and time.monotonic() < deadline:
            for conversation_id in list(pending):
                stored = await stored_conversation(client, user, conversation_id)
                if stored["title_generated"]:
                    assert stored["title"] == "Storm Title"
                    pending.discard(conversation_id)
            await asyncio.sleep(0.1)
    assert not pending, f"{len(pending)} conversations without their title"
    assert counts["asked"] == chats
    assert 1 < counts["peak"] <= TITLE_CONCURRENCY, counts


@contextmanager
def turn_reads(app: FastAPI) -> Iterator[list[str]]:
    """The reads of conversations and messages that go through the engine meanwhile."""
    reads: list[str] = []

    def record(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        if statement.lstrip().upper().startswith("SELECT") and (
            "FROM conversations" in statement or "FROM messages" in statement
        ):
            reads.append(statement)

    engine = app.state.core.engine.sync_engine
    event.listen(engine, "before_cursor_execute", record)
    try:
        yield reads
    finally:
        event.remove(engine, "before_cursor_execute", record)


async def test_a_turn_reads_its_conversation_inline_unless_it_is_long(
    app: FastAPI,
    client: httpx.AsyncClient,
    ollama_emulator: OllamaEmulator,
    regular_user: TestUser,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Continuing a conversation reads it and its messages on the loop's thread (SQLite);
    one longer than the bound is read through the session. The model gets the same
    context either way, and another user's conversation is not found either way."""
    user, emu = regular_user, ollama_emulator
    first = await _send(client, user, emu, "A1", model="llama3.2", content="Q1")
    conversation_id = first["conversation_id"]
    with turn_reads(app) as reads:
        await _send(client, user, emu, "A2", conversation_id=conversation_id, content="Q2")
        inline = app.state.core.inline is not None
        assert len(reads) == (0 if inline else 2)
        assert streamed_chats(emu)[-1]["messages"] == [
            {"role": "user", "content": "Q1"},
            {"role": "assistant", "content": "A1"},
            {"role": "user", "content": "Q2"},
        ]

        reads.clear()
        monkeypatch.setattr(repository, "INLINE_READ_ROWS", 3)  # 4 messages and the row
        await _send(client, user, emu, "A3", conversation_id=conversation_id, content="Q3")
        assert len(reads) == 2
        assert [m["content"] for m in streamed_chats(emu)[-1]["messages"]] == [
            "Q1", "A1", "Q2", "A2", "Q3"
        ]  # fmt: skip
        monkeypatch.setattr(repository, "INLINE_READ_CHARS", 5)  # "Q1A1Q2A2Q3A3" is 12
        monkeypatch.setattr(repository, "INLINE_READ_ROWS", 500)
        reads.clear()
        await _send(client, user, emu, "A4", conversation_id=conversation_id, content="Q4")
        assert len(reads) == 2
        assert len(streamed_chats(emu)[-1]["messages"]) == 7

    other = await create_test_user(app, username="other-reader")
    for inline_connection in (app.state.core.inline, None):  # inline (SQLite), the session
        monkeypatch.setattr(app.state.core, "inline", inline_connection)
        body = {"conversation_id": conversation_id, "content": "Mine now?"}
        response = await client.post("/api/chat/message", json=body, headers=other.headers)
        assert response.status_code == 404, response.text
        assert response.json()["error"] == "NOT_FOUND"


async def test_edits_and_regenerates_read_the_same_inline_and_through_the_session(
    app: FastAPI,
    client: httpx.AsyncClient,
    ollama_emulator: OllamaEmulator,
    regular_user: TestUser,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """An edit or a regenerate reads the message it names, its conversation and messages
    (a regenerate: its question, whole) inline on SQLite, and through the session when
    there is no inline connection: the same context, answer and refusals either way."""
    user, emu = regular_user, ollama_emulator
    first = await _send(client, user, emu, "A1", model="llama3.2", content="Q1")
    conversation_id = first["conversation_id"]
    second = await _send(client, user, emu, "A2", conversation_id=conversation_id, content="Q2")
    question, answer = second["user_message"], second["assistant_message"]
    other = await create_test_user(app, username="other-editor")
    with turn_reads(app) as reads:
        for inline_connection in (app.state.core.inline, None):
            monkeypatch.setattr(app.state.core, "inline", inline_connection)
            reads.clear()
            again = await _send(client, user, emu, "A2'", regenerate_message_id=answer["id"])
            kept = again["user_message"]
            assert kept == {**question, "sibling_ids": kept["sibling_ids"]}
            assert kept["sibling_ids"][0] == question["id"]
            assert streamed_chats(emu)[-1]["messages"][-1] == {"role": "user", "content": "Q2"}
            assert len(streamed_chats(emu)[-1]["messages"]) == 3
            edited = await _send(
                client, user, emu, "A2''", edit_message_id=question["id"], content="Q2'"
            )
            assert edited["user_message"]["parent_id"] == first["assistant_message"]["id"]
            assert [m["content"] for m in streamed_chats(emu)[-1]["messages"]] == [
                "Q1", "A1", "Q2'"
            ]  # fmt: skip
            assert len(reads) == (0 if inline_connection is not None else 5)

            for body in (
                {"regenerate_message_id": answer["id"]},
                {"edit_message_id": question["id"], "content": "Mine?"},
                {"regenerate_message_id": answer["id"], "conversation_id": "0" * 32},
            ):
                intruder = other if "conversation_id" not in body else user
                response = await client.post(
                    "/api/chat/message", json=body, headers=intruder.headers
                )
                assert response.status_code == 404, response.text


async def test_a_question_after_an_answer_still_being_generated_is_409(
    live_server: Callable[[FastAPI], Any],
    app: FastAPI,
    ollama_emulator: OllamaEmulator,
    regular_user: TestUser,
) -> None:
    """Appending under an answer being generated gave the model half an answer as context,
    and the answer then grew above the question. It is refused until the answer ends (here,
    by a stop); an edit or a regenerate (new versions beside it) is not."""
    ollama_emulator.config.reply_tokens = 500
    ollama_emulator.config.tokens_per_second = 40
    headers = regular_user.headers
    async with (
        live_server(app) as base_url,
        httpx.AsyncClient(base_url=base_url) as http,
        http.stream("POST", "/api/chat/stream", json=chat_body(), headers=headers) as first,
    ):
        reader = EventReader(first)
        start = (await reader.next()).data
        await reader.next()
        conversation_id, answer_id = start["conversation_id"], start["assistant_message_id"]
        follow_up = chat_body(conversation_id=conversation_id, content="and then?")
        refused = await http.post("/api/chat/message", json=follow_up, headers=headers)
        assert refused.status_code == 409, refused.text
        assert refused.json()["error"] == "ANSWER_IN_PROGRESS"
        assert refused.json()["details"] == {
            "conversation_id": conversation_id,
            "assistant_message_id": answer_id,
        }
        streamed = await http.post("/api/chat/stream", json=follow_up, headers=headers)
        assert streamed.status_code == 409
        stored = await stored_conversation(http, regular_user, conversation_id)
        assert [m["role"] for m in stored["messages"]] == ["user", "assistant"]
        ollama_emulator.config.reply_tokens = 3  # the answers from here on
        ollama_emulator.config.tokens_per_second = 0
        edit = {"edit_message_id": start["user_message_id"], "content": "edited"}
        edited = await http.post("/api/chat/message", json=edit, headers=headers)
        assert edited.status_code == 200, edited.text
        again = await http.post(
            "/api/chat/message", json={"regenerate_message_id": answer_id}, headers=headers
        )
        assert again.status_code == 200, again.text
        assert again.json()["assistant_message"]["parent_id"] == start["user_message_id"]
        assert (await http.post("/api/chat/message", json=follow_up, headers=headers)).is_success
        stopped = await http.post(f"/api/chat/{answer_id}/stop", headers=headers)
        assert stopped.status_code == 200
        await reader.rest()
        activated = await http.post(
            f"/api/conversations/{conversation_id}/activate",
            json={"message_id": answer_id},
            headers=headers,
        )
        assert activated.status_code == 200
        after = await http.post("/api/chat/message", json=follow_up, headers=headers)
    assert after.status_code == 200, after.text
    assert after.json()["user_message"]["parent_id"] == answer_id
