"""The re-attach route's request headers: `Last-Event-ID` (an empty one is none) and HEAD
(the stream's head, without following the answer). Real uvicorn on loopback, the emulator
as Ollama."""

from __future__ import annotations

import httpx
from fastapi import FastAPI

from ollama_web.core.http_guard import GuardedHttpToolsProtocol
from ollama_web.emulator import OllamaEmulator
from tests.chat.conftest import chat_body, parse_events
from tests.fixtures.auth import TestUser
from tests.fixtures.servers import serve_app


async def test_an_empty_last_event_id_replays_from_the_start_as_without_one(
    app: FastAPI,
    ollama_emulator: OllamaEmulator,
    regular_user: TestUser,
) -> None:
    """WHATWG SSE: the last event ID string may be empty, meaning no event was seen. The
    header is taken as absent (the whole answer again, or after `after`); a value that is
    not an id is still refused."""
    ollama_emulator.config.reply_tokens = 5
    async with (
        serve_app(app, http=GuardedHttpToolsProtocol) as base_url,
        httpx.AsyncClient(base_url=base_url, timeout=10) as http,
    ):
        sent = await http.post("/api/chat/stream", json=chat_body(), headers=regular_user.headers)
        events = parse_events(sent.content)
        path = f"/api/chat/stream/{events[0].data['assistant_message_id']}"
        empty = {**regular_user.headers, "Last-Event-ID": ""}
        again = await http.get(path, headers=empty)
        after = await http.get(path, headers=empty, params={"after": 2})
        malformed = [
            await http.get(path, headers={**regular_user.headers, "Last-Event-ID": value})
            for value in ("x", "-1")
        ]
    assert again.status_code == 200
    assert [(e.id, e.event) for e in parse_events(again.content)] == [
        (e.id, e.event) for e in events
    ]
    assert [e.id for e in parse_events(after.content)] == [e.id for e in events if e.id > 2]
    for refused in malformed:
        assert (refused.status_code, refused.json()["error"]) == (422, "VALIDATION_ERROR")
