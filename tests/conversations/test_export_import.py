"""Export as JSON and Markdown; import; export -> import -> export is identical apart from
ids and times."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from ollama_web.chat.schemas import SYSTEM_PROMPT_CHARS
from ollama_web.conversations.export import (
    MAX_IMPORT_MESSAGES,
    MAX_IMPORTED_ANSWER_CHARS,
    ConversationExport,
    ExportedMessage,
)
from ollama_web.core.db import session_scope
from ollama_web.db import Conversation
from tests.conversations.conftest import Seeder
from tests.fixtures.auth import TestUser, UserFactory

TIME_FIELDS = {"created_at", "updated_at", "completed_at", "exported_at"}
ID_FIELDS = {"id", "parent_id", "active_leaf_id"}


def _branched_document() -> dict[str, Any]:
    """Q1 with two answers (a regeneration), then an edited Q1' with its own answer."""
    t = "2026-01-02T03:04:0{}.000000+00:00"
    messages = [
        {"id": "m1", "role": "user", "content": "Q1 — ünïcödé 你好", "created_at": t.format(1)},
        {"id": "m2", "parent_id": "m1", "role": "assistant", "content": "A1",
         "model": "llama3.2:latest", "done_reason": "stop", "eval_count": 3,
         "eval_duration": 1_500_000_000, "created_at": t.format(2), "completed_at": t.format(3)},
        {"id": "m3", "parent_id": "m1", "role": "assistant", "content": "A1 again",
         "status": "stopped", "created_at": t.format(4)},
        {"id": "m4", "role": "user", "content": "Q1'", "images": ["aGVsbG8="],
         "created_at": t.format(5)},
        {"id": "m5", "parent_id": "m4", "role": "assistant", "content": "partial",
         "status": "error", "error": {"error": "OLLAMA_STREAM_ERROR", "message": "broke",
                                      "details": {}}, "created_at": t.format(6)},
    ]  # fmt: skip
    return {
        "format": "ollama-web.conversation",
        "version": 1,
        "exported_at": t.format(9),
        "conversation": {
            "id": "c1",
            "title": "Branches",
            "model": "llama3.2:latest",
            "system_prompt": "Be kind.",
            "options": {"temperature": 0.5, "stop": ["###"]},
            "pinned": True,
            "archived": False,
            "title_generated": True,
            "active_leaf_id": "m5",
            "created_at": t.format(0),
            "updated_at": t.format(8),
        },
        "messages": messages,
    }


def _nested(depth: int) -> dict[str, Any]:
    value: dict[str, Any] = {}
    for _ in range(depth):
        value = {"d": value}
    return value


def _without_ids_and_times(document: dict[str, Any]) -> dict[str, Any]:
    ids: dict[str, int] = {}

    def strip(item: dict[str, Any]) -> dict[str, Any]:
        out = {}
        for key, value in item.items():
            if key in TIME_FIELDS:
                continue
            if key in ID_FIELDS and value is not None:
                value = ids.setdefault(value, len(ids))
            out[key] = value
        return out

    return {
        **strip({k: v for k, v in document.items() if k not in ("conversation", "messages")}),
        "conversation": strip(document["conversation"]),
        "messages": [strip(m) for m in document["messages"]],
    }


async def test_export_import_export_is_identical_apart_from_ids_and_times(
    client: httpx.AsyncClient, regular_user: TestUser
) -> None:
    headers = regular_user.headers
    imported = await client.post(
        "/api/conversations/import", json=_branched_document(), headers=headers
    )
    assert imported.status_code == 201, imported.text
    detail = imported.json()
    assert [m["content"] for m in detail["messages"]] == ["Q1'", "partial"]
    assert len(detail["messages"][0]["sibling_ids"]) == 2
    first = await client.get(f"/api/conversations/{detail['id']}/export", headers=headers)
    assert first.status_code == 200
    assert "attachment" in first.headers["content-disposition"]
    first_doc = first.json()
    assert len(first_doc["messages"]) == 5
    # Serialised from the rows, as the document's model would serialise it: same fields,
    # same order, same formats (UTC times with Z).
    modelled = ConversationExport.model_validate_json(first.content).model_dump(mode="json")
    assert first_doc == modelled
    assert list(first_doc) == list(modelled)
    assert [list(m) for m in first_doc["messages"]] == [list(ExportedMessage.model_fields)] * 5
    assert first_doc["messages"][0]["created_at"].endswith("Z")
    again = await client.post("/api/conversations/import", json=first_doc, headers=headers)
    assert again.status_code == 201
    second_doc = (
        await client.get(f"/api/conversations/{again.json()['id']}/export", headers=headers)
    ).json()
    assert second_doc["conversation"]["id"] != first_doc["conversation"]["id"]
    assert _without_ids_and_times(second_doc) == _without_ids_and_times(first_doc)
    assert _without_ids_and_times(first_doc) == _without_ids_and_times(
        {**_branched_document(), "messages": [
            {**_defaults(), **m} for m in _branched_document()["messages"]
        ]}
    )  # fmt: skip


def _defaults() -> dict[str, Any]:
    return {
        "parent_id": None,
        "thinking": None,
        "images": None,
        "status": "complete",
        "model": None,
        "done_reason": None,
        "error": None,
        "prompt_eval_count": None,
        "eval_count": None,
        "total_duration": None,
        "load_duration": None,
        "prompt_eval_duration": None,
        "eval_duration": None,
        "completed_at": None,
    }


async def test_markdown_export_shows_the_active_branch(
    client: httpx.AsyncClient, regular_user: TestUser
) -> None:
    detail = (
        await client.post(
            "/api/conversations/import", json=_branched_document(), headers=regular_user.headers
        )
    ).json()
    response = await client.get(
        f"/api/conversations/{detail['id']}/export",
        params={"format": "markdown"},
        headers=regular_user.headers,
    )
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/markdown")
    text = response.text
    assert text.startswith("# Branches\n")
    assert "## System\n\nBe kind." in text
    assert "## User\n\nQ1'" in text
    assert "## Assistant — error\n\npartial" in text
    assert "A1 again" not in text


@pytest.mark.parametrize(
    "change",
    [
        lambda d: d["messages"].reverse(),
        lambda d: d["messages"].append(dict(d["messages"][0])),
        lambda d: d["conversation"].update(active_leaf_id="nope"),
        lambda d: d["conversation"].update(options={"bogus": 1}),
        lambda d: d.update(format="something-else"),
        lambda d: d["messages"][0].update(role="tool"),
        lambda d: d["messages"][0].update(created_at="2026-01-01T00:00:00"),
        # Values that pass a type check but could not be stored or read back:
        lambda d: d["messages"][4].update(error=_nested(300)),
        lambda d: d["messages"][4].update(error={"message": "x" * 20_000}),
        lambda d: d["messages"][1].update(eval_count=10**20),
        lambda d: d["messages"][1].update(eval_count=2**31),
        lambda d: d["messages"][1].update(eval_duration=2**63),
        lambda d: d["messages"][0].update(created_at="9999-12-31T23:59:59-05:00"),
        lambda d: d["messages"][1].update(completed_at="0001-01-01T00:00:00+05:00"),
        lambda d: d["conversation"].update(created_at="0001-01-01T00:00:00+05:00"),
        lambda d: d["messages"][1].update(model="x)\n\n# Forged title"),
        lambda d: d["conversation"].update(model="m" * 80 + "/" + "n" * 80 + "/" + "o" * 38),
        # Images are held to the chat's own limits:
        lambda d: d["messages"][3].update(images=["not base64!"]),
        lambda d: d["messages"][3].update(images=["aGVsbG8="] * 50),
        # So are answers (a huge one replayed as megabytes of events):
        lambda d: d["messages"][1].update(content="\U0001f600" * (MAX_IMPORTED_ANSWER_CHARS + 1)),
        lambda d: d["messages"][1].update(thinking="x" * (MAX_IMPORTED_ANSWER_CHARS + 1)),
    ],
)
async def test_an_invalid_import_is_422_and_stores_nothing(
    client: httpx.AsyncClient, regular_user: TestUser, change: Any
) -> None:
    document = _branched_document()
    change(document)
    response = await client.post(
        "/api/conversations/import", json=document, headers=regular_user.headers
    )
    assert response.status_code == 422, response.text
    listed = await client.get("/api/conversations", headers=regular_user.headers)
    assert listed.json()["items"] == []


@pytest.mark.parametrize("model", ["not a model name", "m" * 80 + "/" + "n" * 80 + "/" + "o" * 38])
async def test_an_imported_model_name_refused_is_named_where_it_sits(
    client: httpx.AsyncClient, regular_user: TestUser, model: str
) -> None:
    document = _branched_document()
    document["conversation"]["model"] = model
    response = await client.post(
        "/api/conversations/import", json=document, headers=regular_user.headers
    )
    assert response.status_code == 422, response.text
    fields = response.json()["details"]["fields"]
    assert [f["loc"] for f in fields] == [["conversation", "model"]]


async def test_an_import_of_over_10_000_messages_is_422(
    client: httpx.AsyncClient, regular_user: TestUser
) -> None:
    """Imported in one request, 100 000 messages held the server's loop for seconds (every
    other request waited) and took ~500 MB; 10 000 is far beyond any conversation."""
    document = _branched_document()
    created_at = document["messages"][0]["created_at"]
    document["messages"] += [
        {"id": f"x{n}", "role": "user", "content": "", "created_at": created_at}
        for n in range(MAX_IMPORT_MESSAGES + 1 - len(document["messages"]))
    ]
    response = await client.post(
        "/api/conversations/import", json=document, headers=regular_user.headers
    )
    assert response.status_code == 422, response.text
    assert response.json()["details"] == {"reason": "at most 10000 messages"}


async def test_import_belongs_to_the_importer_only(
    client: httpx.AsyncClient, user_factory: UserFactory, seed: Seeder
) -> None:
    owner = await user_factory()
    stranger = await user_factory()
    conversation_id = await seed(owner.id, "mine", "yes")
    exported = (
        await client.get(f"/api/conversations/{conversation_id}/export", headers=owner.headers)
    ).json()
    copy = await client.post("/api/conversations/import", json=exported, headers=stranger.headers)
    assert copy.status_code == 201
    assert copy.json()["id"] != conversation_id
    owner_list = (await client.get("/api/conversations", headers=owner.headers)).json()["items"]
    assert [c["id"] for c in owner_list] == [conversation_id]


async def test_a_reply_older_than_its_question_still_round_trips(
    client: httpx.AsyncClient, regular_user: TestUser
) -> None:
    """Import reads parents first; export lists messages by time, but never a child before
    its parent, so its own output always imports again."""
    document = _branched_document()
    document["messages"][1]["created_at"] = "2026-01-02T03:04:00.500000+00:00"  # before m1
    headers = regular_user.headers
    imported = await client.post("/api/conversations/import", json=document, headers=headers)
    assert imported.status_code == 201, imported.text
    first = (
        await client.get(f"/api/conversations/{imported.json()['id']}/export", headers=headers)
    ).json()
    assert [m["content"] for m in first["messages"]][:3] == ["Q1 — ünïcödé 你好", "A1", "A1 again"]
    again = await client.post("/api/conversations/import", json=first, headers=headers)
    assert again.status_code == 201, again.text
    second = (
        await client.get(f"/api/conversations/{again.json()['id']}/export", headers=headers)
    ).json()
    assert _without_ids_and_times(second) == _without_ids_and_times(first)


async def test_markdown_headings_stay_on_one_line(
    client: httpx.AsyncClient, regular_user: TestUser
) -> None:
    document = _branched_document()
    document["conversation"]["title"] = "Two\nlines"
    detail = (
        await client.post("/api/conversations/import", json=document, headers=regular_user.headers)
    ).json()
    text = (
        await client.get(
            f"/api/conversations/{detail['id']}/export",
            params={"format": "markdown"},
            headers=regular_user.headers,
        )
    ).text
    assert text.startswith("# Two lines\n")


async def test_a_model_name_too_long_with_its_tag_is_422(
    client: httpx.AsyncClient, regular_user: TestUser
) -> None:
    """200 characters fit the column, but the stored form adds ":latest"."""
    name = "m" * 80 + "/" + "n" * 80 + "/" + "o" * 38
    assert len(name) == 200
    response = await client.post(
        "/api/conversations", json={"model": name}, headers=regular_user.headers
    )
    assert response.status_code == 422, response.text
    assert response.json()["error"] == "VALIDATION_ERROR"


async def test_a_stored_title_of_control_characters_still_exports(
    client: httpx.AsyncClient, regular_user: TestUser, seed: Seeder
) -> None:
    """A title an older version stored from a message's first words, control characters
    included: the JSON export cleans it (it was a 500: the export's own title check failed),
    and what it writes imports again."""
    headers = regular_user.headers
    for stored, exported in (("\x01\x07", "New conversation"), ("\x1b[31m hi\x7f", "[31m hi")):
        conversation_id = await seed(regular_user.id, title=stored)
        response = await client.get(f"/api/conversations/{conversation_id}/export", headers=headers)
        assert response.status_code == 200, response.text
        assert response.json()["conversation"]["title"] == exported
        again = await client.post(
            "/api/conversations/import", json=response.json(), headers=headers
        )
        assert again.status_code == 201, again.text


async def test_options_beyond_64_bits_are_refused_and_a_stored_one_is_left_out_of_the_export(
    app: FastAPI, client: httpx.AsyncClient, regular_user: TestUser, seed: Seeder
) -> None:
    """Ollama's integer options are 64-bit: a larger one is a 422 (it was stored and sent
    with every turn). One an older version stored does not fail the export."""
    headers = regular_user.headers
    for options in ({"seed": 2**70}, {"num_predict": 10**30}, {"top_k": 2**63}):
        response = await client.post(
            "/api/conversations", json={"model": "llama3.2", "options": options}, headers=headers
        )
        assert response.status_code == 422, response.text
    largest = {"seed": 2**63 - 1, "num_keep": -1}
    response = await client.post(
        "/api/conversations", json={"model": "llama3.2", "options": largest}, headers=headers
    )
    assert response.status_code == 201, response.text
    assert response.json()["options"] == largest

    conversation_id = await seed(regular_user.id)
    async with session_scope(app.state.core.sessionmaker) as session:
        conversation = await session.get(Conversation, conversation_id)
        assert conversation is not None
        conversation.options = {"seed": 2**70, "temperature": 0.5}
    response = await client.get(f"/api/conversations/{conversation_id}/export", headers=headers)
    assert response.status_code == 200, response.text
    assert response.json()["conversation"]["options"] == {"temperature": 0.5}


async def test_values_an_older_version_stored_export_verbatim_and_import_says_what_is_refused(
    app: FastAPI, client: httpx.AsyncClient, regular_user: TestUser, seed: Seeder
) -> None:
    """A system prompt above today's bound (an older version stored it): the export keeps it
    whole (it was a 500: the export validated stored rows against the input bounds), and
    importing that file is a 422 naming the field."""
    headers = regular_user.headers
    conversation_id = await seed(regular_user.id)
    prompt = "p" * SYSTEM_PROMPT_CHARS + "é<script>"
    async with session_scope(app.state.core.sessionmaker) as session:
        conversation = await session.get(Conversation, conversation_id)
        assert conversation is not None
        conversation.system_prompt = prompt
    for path in (f"/api/conversations/{conversation_id}", "/api/conversations"):
        read = await client.get(path, headers=headers)
        assert read.status_code == 200, read.text
    assert read.json()["items"][0]["system_prompt"] == prompt
    response = await client.get(f"/api/conversations/{conversation_id}/export", headers=headers)
    assert response.status_code == 200, response.text
    assert response.json()["conversation"]["system_prompt"] == prompt
    markdown = await client.get(
        f"/api/conversations/{conversation_id}/export?format=markdown", headers=headers
    )
    assert markdown.status_code == 200
    again = await client.post("/api/conversations/import", json=response.json(), headers=headers)
    assert again.status_code == 422, again.text
    fields = again.json()["details"]["fields"]
    assert [f["loc"] for f in fields] == [["conversation", "system_prompt"]]


async def test_an_imported_active_leaf_inside_a_branch_shows_the_branch_to_its_end(
    client: httpx.AsyncClient, regular_user: TestUser
) -> None:
    """An `active_leaf_id` with messages below it is followed to its newest descendant, as
    `activate` follows a chosen version: the whole branch shows, and the next question goes
    after its last answer, not beside it."""
    document = _branched_document()
    document["conversation"]["active_leaf_id"] = "m1"
    response = await client.post(
        "/api/conversations/import", json=document, headers=regular_user.headers
    )
    assert response.status_code == 201, response.text
    assert [m["content"] for m in response.json()["messages"]] == ["Q1 — ünïcödé 你好", "A1 again"]


async def _markdown_of(
    client: httpx.AsyncClient, user: TestUser, *, question: str, system_prompt: str = "Be kind."
) -> str:
    """The Markdown export of the branched document with the active branch's question and
    the system prompt replaced."""
    document = _branched_document()
    document["messages"][3]["content"] = question
    document["conversation"]["system_prompt"] = system_prompt
    imported = await client.post("/api/conversations/import", json=document, headers=user.headers)
    url = f"/api/conversations/{imported.json()['id']}/export"
    return (await client.get(url, params={"format": "markdown"}, headers=user.headers)).text


@pytest.mark.parametrize(
    ("content", "closing"),
    [
        ("here is code:\n```\nunclosed", "```"),
        ("```python\nx = 1\n```\nthen\n~~~~\nopen", "~~~~"),
        ("````\nan inner ``` does not close it", "````"),
    ],
)
async def test_a_code_block_left_open_in_a_message_is_closed_in_the_markdown_export(
    client: httpx.AsyncClient, regular_user: TestUser, content: str, closing: str
) -> None:
    """The text is written as stored, then the block it leaves open is ended, so the next
    message's heading is a heading rather than more of that code."""
    text = await _markdown_of(client, regular_user, question=content, system_prompt=content)
    assert f"## System\n\n{content}\n{closing}\n\n## User\n\n{content}\n{closing}\n\n" in text
    assert text.endswith("## Assistant — error\n\npartial\n")


async def test_closed_code_blocks_are_written_as_they_are_in_the_markdown_export(
    client: httpx.AsyncClient, regular_user: TestUser
) -> None:
    content = "```py\nprint(1)\n```\n    ```\nindented, not a fence\n\n~~~\n```\n~~~~"
    text = await _markdown_of(client, regular_user, question=content)
    assert f"## User\n\n{content}\n\n## Assistant" in text
