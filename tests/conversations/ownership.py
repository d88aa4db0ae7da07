"""Conversation and message ids for the ownership walk (tests/security/registry.py)."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI

from tests.conftest import asgi_client
from tests.fixtures.auth import TestUser
from tests.security.registry import OwnedResource

_T = "2026-01-01T00:00:0{}+00:00"


def _document() -> dict[str, Any]:
    return {
        "format": "ollama-web.conversation",
        "version": 1,
        "exported_at": _T.format(9),
        "conversation": {
            "id": "c",
            "title": "Owned",
            "model": "llama3.2:latest",
            "active_leaf_id": "a",
            "created_at": _T.format(0),
            "updated_at": _T.format(0),
        },
        "messages": [
            {"id": "q", "role": "user", "content": "question", "created_at": _T.format(1)},
            {"id": "a", "parent_id": "q", "role": "assistant", "content": "answer",
             "created_at": _T.format(2)},
        ],
    }  # fmt: skip


async def _imported(app: FastAPI, owner: TestUser) -> dict[str, Any]:
    async with asgi_client(app) as http:
        response = await http.post(
            "/api/conversations/import", json=_document(), headers=owner.headers
        )
    assert response.status_code == 201, response.text
    detail: dict[str, Any] = response.json()
    return detail


async def _conversation(app: FastAPI, owner: TestUser) -> dict[str, str]:
    return {"conversation_id": (await _imported(app, owner))["id"]}


async def _answer(app: FastAPI, owner: TestUser) -> dict[str, str]:
    messages = (await _imported(app, owner))["messages"]
    return {"assistant_message_id": messages[-1]["id"]}


OWNED_RESOURCES = {
    "/api/conversations/{conversation_id}": OwnedResource(
        _conversation,
        bodies={
            "PUT": {"title": "Mine", "model": "llama3.2"},
            "PATCH": {"pinned": True},
            "POST": {"message_id": "0" * 32},
        },
        # The owner's probe would name a message id that exists only after creation; the
        # owner's activate is proved in tests/chat/test_modes.py.
        no_owner_probe=frozenset({"POST /api/conversations/{conversation_id}/activate"}),
    ),
    "/api/chat/stream/{assistant_message_id}": OwnedResource(_answer),
    "/api/chat/{assistant_message_id}": OwnedResource(_answer),
}
