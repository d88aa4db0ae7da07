"""HEAD is answered wherever GET is, as GET would be, without a body (RFC 9110 9.3.2), on
the server and protocol `ollama-web serve` runs."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable
from typing import Any

import httpx
from fastapi import FastAPI

from ollama_web.core.config import Settings
from ollama_web.core.http_guard import GuardedHttpToolsProtocol
from ollama_web.core.logging import ACCESS_LOGGER
from ollama_web.emulator import OllamaEmulator
from tests.fixtures.auth import TestUser, create_test_user, login_session
from tests.fixtures.logs import app_warnings
from tests.fixtures.servers import serve_app

# Headers that differ from one answer to the next whatever the method.
_PER_ANSWER = frozenset({"date", "x-request-id", "x-ratelimit-remaining", "x-ratelimit-reset"})
# Routes whose GET answers the same bytes each time: the HEAD says the same length.
_FIXED_CONTENT = (
    "/health/live",
    "/openapi.json",
    "/docs",
    "/redoc",
    "/docs/static/swagger-init.js",
    "/docs/static/swagger-ui-bundle.js",
)


def _headers(response: httpx.Response) -> dict[str, str]:
    return {name: value for name, value in response.headers.items() if name not in _PER_ANSWER}


async def _same_as_get(http: httpx.AsyncClient, path: str, **kwargs: Any) -> httpx.Response:
    got = await http.get(path, **kwargs)
    head = await http.head(path, **kwargs)
    assert head.status_code == got.status_code, path
    assert head.content == b"", path
    head_headers, got_headers = _headers(head), _headers(got)
    if path not in _FIXED_CONTENT:  # a length of its own (the latency, the uptime...)
        head_headers.pop("content-length", None)
        got_headers.pop("content-length", None)
    assert head_headers == got_headers, path
    return head


async def test_head_answers_every_get_route_as_get_does_without_a_body(
    app: FastAPI, admin_user: TestUser
) -> None:
    """The public routes, the documentation (pages and files), and routes that need a
    caller: 401 without one, as for GET (not 405), 200 with an API key."""
    async with (
        serve_app(app, http=GuardedHttpToolsProtocol) as base_url,
        httpx.AsyncClient(base_url=base_url) as http,
    ):
        for path in ("/health", "/health/ready", "/info", *_FIXED_CONTENT):
            assert (await _same_as_get(http, path)).status_code == 200, path
        for path in ("/metrics", "/api/conversations", "/api/auth/me", "/api/keys"):
            refused = await _same_as_get(http, path)
            assert refused.status_code == 401, path
            served = await _same_as_get(http, path, headers=admin_user.headers)
            assert served.status_code == 200, path
        assert (await _same_as_get(http, "/api/conversations/" + "0" * 32)).status_code == 401
        missing = await _same_as_get(
            http, "/api/conversations/" + "0" * 32, headers=admin_user.headers
        )
        assert missing.status_code == 404
        # The same connection throughout: no answer left a stray body behind its head.
        assert (await http.get("/health/live")).json() == {"status": "alive"}


async def test_head_is_a_safe_method_for_a_browser_session(
    app: FastAPI, regular_user: TestUser
) -> None:
    """No CSRF token needed, as for GET; counted against the same budget as a GET."""
    async with (
        serve_app(app, http=GuardedHttpToolsProtocol) as base_url,
        httpx.AsyncClient(base_url=base_url) as http,
    ):
        await login_session(http, regular_user)
        head = await http.head("/api/conversations")
        got = await http.get("/api/conversations")
    assert (head.status_code, got.status_code) == (200, 200)


async def test_head_of_a_path_without_get_is_405_listing_what_it_serves(app: FastAPI) -> None:
    async with (
        serve_app(app, http=GuardedHttpToolsProtocol) as base_url,
        httpx.AsyncClient(base_url=base_url) as http,
    ):
        login = await http.head("/api/auth/login")
        unknown = await http.head("/no/such/route")
        health = await http.delete("/health")
    assert (login.status_code, login.headers["allow"], login.content) == (405, "POST", b"")
    assert unknown.status_code == 404
    assert health.headers["allow"] == "GET, HEAD"


async def test_head_has_no_operation_of_its_own_in_the_schema(app: FastAPI) -> None:
    paths = app.openapi()["paths"]
    assert all("head" not in operations for operations in paths.values())
    assert "get" in paths["/health"]


async def test_the_access_log_and_the_metrics_say_head(app: FastAPI, admin_user: TestUser) -> None:
    with app_warnings(ACCESS_LOGGER, logging.DEBUG) as records:
        async with (
            serve_app(app, http=GuardedHttpToolsProtocol) as base_url,
            httpx.AsyncClient(base_url=base_url) as http,
        ):
            assert (await http.head("/health/live")).status_code == 200
            assert (await http.head("/api/conversations")).status_code == 401
            metrics = (await http.get("/metrics", headers=admin_user.headers)).json()
    fields = [getattr(record, "fields", {}) for record in records]
    lines = [(field["method"], field["route"], field["status"]) for field in fields]
    assert ("HEAD", "/health/live", 200) in lines
    assert ("HEAD", "/api/conversations", 401) in lines
    assert not any(method == "GET" and route == "/health/live" for method, route, _ in lines)
    assert metrics["endpoints"]["HEAD /health/live"]["requests"] == 1
    assert "GET /health/live" not in metrics["endpoints"]


async def test_head_of_a_running_answer_s_stream_ends_at_its_head(
    app_factory: Callable[[Settings], Any],
    settings_factory: Callable[..., Settings],
    database_url: str | None,
    ollama_emulator: OllamaEmulator,
) -> None:
    """`HEAD /api/chat/stream/{id}` of an answer still being generated: the stream's head
    (200, text/event-stream) at once, without following the answer (no follower attached,
    the answer runs on; see tests/chat/test_reattach.py)."""
    app = await app_factory(
        settings_factory(
            database_url=database_url,
            ollama_url=[ollama_emulator.url],
            ollama_health_cache_seconds=0.0,
        )
    )
    user = await create_test_user(app)
    ollama_emulator.config.reply_tokens = 200
    ollama_emulator.config.tokens_per_second = 20  # 10 s: running throughout
    body = {"model": "llama3.2:latest", "content": "Hello there"}
    async with (
        serve_app(app, http=GuardedHttpToolsProtocol) as base_url,
        httpx.AsyncClient(base_url=base_url, timeout=10) as http,
        http.stream("POST", "/api/chat/stream", json=body, headers=user.headers) as streaming,
    ):
        lines = streaming.aiter_lines()
        start = await anext(line async for line in lines if line.startswith("data: "))
        answer_id = json.loads(start.removeprefix("data: "))["assistant_message_id"]
        generation = app.state.generations.get(answer_id)
        assert generation.log.followers == 1
        async with httpx.AsyncClient(base_url=base_url, timeout=5) as other:
            head = await other.head(f"/api/chat/stream/{answer_id}", headers=user.headers)
            assert (head.status_code, head.content) == (200, b"")
            assert head.headers["content-type"].startswith("text/event-stream")
            for _ in range(100):  # its follower leaves within a few steps of the loop
                if generation.log.followers == 1:
                    break
                await asyncio.sleep(0.01)
            assert generation.log.followers == 1
            # The connection is free for the next request at once.
            assert (await other.get("/health/live")).status_code == 200
        assert generation.running
