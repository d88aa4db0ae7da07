"""Chat fixtures: the app talks to a real Ollama emulator on loopback; SSE parsing helpers.

`settings` is overridden here so every app, client and user fixture of these tests points at
the emulator. Streaming tests use `live_server` (real uvicorn) and read raw bytes.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from ollama_web.core.config import Settings
from ollama_web.core.db import session_scope
from ollama_web.db import Message
from ollama_web.db.base import utcnow
from ollama_web.emulator import ModelSpec, OllamaEmulator
from ollama_web.emulator.testing import running_emulator
from tests.conftest import asgi_client
from tests.fixtures.auth import TestUser


@pytest.fixture
async def ollama_emulator() -> AsyncIterator[OllamaEmulator]:
    from ollama_web.emulator import EmulatorConfig

    config = EmulatorConfig(models=[ModelSpec.preset("llama3.2"), ModelSpec.preset("qwen3")])
    async with running_emulator(config) as emulator:
        yield emulator


@pytest.fixture
def chat_settings(
    settings_factory: Callable[..., Settings],
    database_url: str | None,
    ollama_emulator: OllamaEmulator,
) -> Callable[..., Settings]:
    def make(**overrides: Any) -> Settings:
        values: dict[str, Any] = {
            "database_url": database_url,
            "ollama_url": [ollama_emulator.url],
            "ollama_health_cache_seconds": 0.0,
        }
        values.update(overrides)
        return settings_factory(**values)

    return make


@pytest.fixture
def settings(chat_settings: Callable[..., Settings]) -> Settings:
    return chat_settings()


@dataclass
class Event:
    id: int | None
    event: str
    data: dict[str, Any]


def parse_events(raw: bytes) -> list[Event]:
    """Every complete event in `raw` (comments such as keep-alives are skipped)."""
    events: list[Event] = []
    for block in raw.decode("utf-8").split("\n\n"):
        fields: dict[str, str] = {}
        for line in block.split("\n"):
            if not line or line.startswith(":"):
                continue
            name, _, value = line.partition(": ")
            fields[name] = value
        if "event" in fields:
            event_id = int(fields["id"]) if "id" in fields else None
            events.append(Event(event_id, fields["event"], json.loads(fields["data"])))
    return events


class EventReader:
    """Reads an SSE response incrementally: `await reader.next()` -> the next event."""

    def __init__(self, response: httpx.Response) -> None:
        self.response = response
        self._raw = bytearray()
        self._unparsed = b""
        self._chunks = response.aiter_raw()
        self._pending: list[Event] = []
        self.seen: list[Event] = []

    @property
    def raw(self) -> bytes:
        """Everything read so far."""
        return bytes(self._raw)

    async def next(self) -> Event:
        while not self._pending:
            chunk = await anext(self._chunks)
            self._raw += chunk
            # Only what came since the last complete event is parsed (a storm of readers
            # re-parsing whole streams at every chunk was quadratic).
            complete, separator, self._unparsed = (self._unparsed + chunk).rpartition(b"\n\n")
            if separator:
                self._pending = parse_events(complete + separator)
                self.seen.extend(self._pending)
        return self._pending.pop(0)

    async def until(self, kind: str) -> list[Event]:
        out = []
        while True:
            event = await self.next()
            out.append(event)
            if event.event == kind:
                return out

    async def rest(self) -> list[Event]:
        out: list[Event] = []
        while True:
            try:
                out.append(await self.next())
            except StopAsyncIteration:
                return out


def text_of(events: list[Event], kind: str = "token") -> str:
    return "".join(e.data["content"] for e in events if e.event == kind)


def streamed_chats(emulator: OllamaEmulator) -> list[dict[str, Any]]:
    """The streamed /api/chat bodies the emulator received (title requests are not)."""
    return [
        r.json
        for r in emulator.requests
        if r.path == "/api/chat" and isinstance(r.json, dict) and r.json.get("stream") is True
    ]


def chat_body(**values: Any) -> dict[str, Any]:
    return {"model": "llama3.2", "content": "Hello there", **values}


@asynccontextmanager
async def streamed_chat(
    live_server: Callable[[FastAPI], Any], app: FastAPI, user: TestUser, timeout: float = 10.0
) -> AsyncIterator[EventReader]:
    """`POST /api/chat/stream` (a new conversation) to `app` served on loopback: the reader
    of its events, while the response is open."""
    async with (
        live_server(app) as base_url,
        httpx.AsyncClient(base_url=base_url, timeout=timeout) as http,
        http.stream("POST", "/api/chat/stream", json=chat_body(), headers=user.headers) as response,
    ):
        yield EventReader(response)


async def stored_conversation(
    client: httpx.AsyncClient, user: TestUser, conversation_id: str
) -> dict[str, Any]:
    response = await client.get(f"/api/conversations/{conversation_id}", headers=user.headers)
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


async def conversation_with_unfinished_answers(
    app: FastAPI, user: TestUser, written_ago: dict[str, float]
) -> str:
    """A conversation holding `streaming` answers (id -> seconds since their row was written)
    as a server process would have left them."""
    async with asgi_client(app) as client:
        created = await client.post(
            "/api/conversations", json={"model": "llama3.2"}, headers=user.headers
        )
    conversation_id: str = created.json()["id"]
    async with session_scope(app.state.core.sessionmaker) as session:
        for message_id, ago in written_ago.items():
            written = utcnow() - timedelta(seconds=ago)
            session.add(
                Message(
                    id=message_id,
                    conversation_id=conversation_id,
                    role="assistant",
                    content=f"half an answer {message_id[0]}",
                    status="streaming",
                    created_at=written,
                    updated_at=written,
                )
            )
    return conversation_id
