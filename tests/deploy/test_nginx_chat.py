"""End to end through the shipped deploy/nginx.conf: a real nginx on loopback, TLS, in front
of the running server, whose Ollama is the emulator producing TOKENS_PER_SECOND tokens.
`POST /api/chat/stream` must deliver every token as the emulator sends it, not in a burst,
and the stored answer must be the streamed text.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from fastapi import FastAPI

from ollama_web.core.config import Settings
from ollama_web.emulator import OllamaEmulator
from tests.deploy.nginx_harness import running_nginx, spread, sse_events
from tests.fixtures.auth import TestUser

pytestmark = pytest.mark.tools

TOKENS = 6
TOKENS_PER_SECOND = 10.0
INTERVAL = 1 / TOKENS_PER_SECOND


@pytest.fixture
def slow_emulator(ollama_emulator: OllamaEmulator) -> OllamaEmulator:
    ollama_emulator.config.reply_tokens = TOKENS
    ollama_emulator.config.tokens_per_second = TOKENS_PER_SECOND
    return ollama_emulator


@pytest.fixture
def settings(
    settings_factory: Callable[..., Settings], database_url: str | None, slow_emulator: Any
) -> Settings:
    """The server behind nginx believes it (TRUSTED_PROXIES) and talks to the emulator."""
    return settings_factory(
        database_url=database_url,
        ollama_url=[slow_emulator.url],
        trusted_proxies=["127.0.0.1"],
    )


async def test_chat_stream_through_nginx_arrives_token_by_token(
    tmp_path: Path, app: FastAPI, regular_user: TestUser, live_server: Any
) -> None:
    async with live_server(app) as base_url:
        upstream_port = int(base_url.rsplit(":", 1)[1])
        async with running_nginx(tmp_path, upstream_port) as proxy, proxy.client() as client:
            async with client.stream(
                "POST",
                "/api/chat/stream",
                json={"model": "llama3.2", "content": "Say something slowly."},
                headers=regular_user.headers,
                timeout=20,
            ) as response:
                assert response.status_code == 200, await response.aread()
                assert response.headers["content-type"].startswith("text/event-stream")
                events = await sse_events(response)
            start = json.loads(events[0].data)
            conversation = await client.get(
                f"/api/conversations/{start['conversation_id']}", headers=regular_user.headers
            )

    assert events[0].event == "start"
    assert events[-1].event == "done"
    tokens = [event for event in events if event.event == "token"]
    assert len(tokens) == TOKENS
    duration, gaps = spread(tokens)
    assert duration >= 0.6 * INTERVAL * (TOKENS - 1), (duration, gaps)
    assert sum(gap >= 0.5 * INTERVAL for gap in gaps) >= len(gaps) - 1, gaps

    streamed = "".join(json.loads(token.data)["content"] for token in tokens)
    done = json.loads(events[-1].data)["message"]
    assert done["status"] == "complete"
    assert done["content"] == streamed
    assert conversation.status_code == 200, conversation.text
    stored = conversation.json()["messages"][-1]
    assert stored["id"] == start["assistant_message_id"]
    assert stored["content"] == streamed


async def test_behind_nginx_the_client_address_and_https_are_the_real_ones(
    tmp_path: Path, app: FastAPI, regular_user: TestUser, live_server: Any
) -> None:
    """nginx overwrites X-Forwarded-For and sets X-Forwarded-Proto; the server, trusting
    127.0.0.1, records the address that reached nginx (not the one a client made up) and
    marks the session cookie Secure."""
    async with live_server(app) as base_url:
        upstream_port = int(base_url.rsplit(":", 1)[1])
        async with running_nginx(tmp_path, upstream_port) as proxy, proxy.client() as client:
            login = await client.post(
                "/api/auth/login",
                json={"username": regular_user.username, "password": regular_user.password},
                headers={"X-Forwarded-For": "203.0.113.7"},
            )
            assert login.status_code == 200, login.text
            sessions = await client.get(
                "/api/auth/sessions", headers={"X-Forwarded-For": "203.0.113.7"}
            )
    cookie = login.headers["set-cookie"]
    assert "ow_session=" in cookie
    assert "secure" in cookie.lower()
    assert sessions.status_code == 200, sessions.text
    (session,) = sessions.json()["items"]
    assert session["ip_address"] == "127.0.0.1"


async def test_bodies_too_large_are_refused_in_the_apis_error_shape_through_nginx(
    tmp_path: Path, app: FastAPI, regular_user: TestUser, live_server: Any
) -> None:
    """nginx refuses a body past MAX_REQUEST_BYTES itself (the same limit: a higher one let
    the server refuse it and close while nginx was still sending, a 502): in the API's JSON
    shape with `max_bytes`, as the server would, not nginx's HTML page."""
    headers = {**regular_user.headers, "content-type": "application/json"}
    async with live_server(app) as base_url:
        upstream_port = int(base_url.rsplit(":", 1)[1])
        async with running_nginx(tmp_path, upstream_port) as proxy, proxy.client() as client:
            just_past = await client.post(
                "/api/chat/message", content=b" " * (10 * 2**20 + 1), headers=headers
            )
            far_past = await client.post(
                "/api/chat/message", content=b" " * (12 * 2**20), headers=headers
            )
            at_limit = await client.post(
                "/api/chat/message", content=b" " * (10 * 2**20), headers=headers
            )
    # The limit is the server's: a body of exactly MAX_REQUEST_BYTES reaches it (and is no JSON).
    assert (at_limit.status_code, at_limit.json()["error"]) == (400, "INVALID_JSON")
    for response in (just_past, far_past):
        assert response.status_code == 413
        assert response.headers["content-type"].startswith("application/json")
        body = response.json()
        assert body["error"] == "PAYLOAD_TOO_LARGE"
        assert set(body) == {"error", "message", "details", "request_id"}
        assert body["details"] == {"max_bytes": 10 * 2**20}
