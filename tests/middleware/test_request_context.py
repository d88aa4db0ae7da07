"""Request id and the access log line of every request."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

import pytest
from fastapi import FastAPI
from starlette.types import Message, Receive, Scope, Send

from ollama_web.core.config import Settings
from ollama_web.middleware.request_context import RequestContextMiddleware
from tests.conftest import asgi_client


async def test_access_log_names_the_client_behind_a_trusted_proxy_for_cors_preflights(
    app_factory: Callable[[Settings], Awaitable[FastAPI]],
    settings_factory: Callable[..., Settings],
) -> None:
    """CORS answers a preflight before the inner layers, which resolved the address."""
    settings = settings_factory(
        cors_origins="https://chat.example.org", trusted_proxies="127.0.0.1"
    )
    app = await app_factory(settings)
    forwarded = {"X-Forwarded-For": "203.0.113.7", "X-Request-ID": "preflight-1"}
    async with asgi_client(app) as client:
        preflight = await client.options(
            "/api/conversations",
            headers={
                "Origin": "https://chat.example.org",
                "Access-Control-Request-Method": "POST",
                **forwarded,
            },
        )
        await client.get("/health/live", headers={**forwarded, "X-Request-ID": "get-1"})
    assert preflight.status_code == 200
    lines = (settings.log_dir / "access.log").read_text().splitlines()
    for request_id in ("preflight-1", "get-1"):
        line = next(line for line in lines if f"rid={request_id} " in line)
        assert line.endswith("client=203.0.113.7"), line


async def test_a_request_that_ends_without_an_answer_is_logged_499_not_500(
    caplog: pytest.LogCaptureFixture, settings_factory: Callable[..., Settings]
) -> None:
    """The client went away before the answer started (a `POST /api/chat/message` whose
    caller timed out, say): no error happened, so the access line says 499, as the
    metrics count it; an exception is still its own status."""

    async def leaves(scope: Scope, receive: Receive, send: Send) -> None:
        return None

    async def fails(scope: Scope, receive: Receive, send: Send) -> None:
        raise RuntimeError("a bug")

    scope: Scope = {"type": "http", "method": "POST", "path": "/x", "headers": [], "client": None}

    async def nothing() -> Message:
        return {"type": "http.disconnect"}

    sent: list[Message] = []

    async def send(message: Message) -> None:
        sent.append(message)

    with caplog.at_level(logging.INFO, logger="ollama_web.access"):
        await RequestContextMiddleware(leaves, settings_factory())(dict(scope), nothing, send)
        await RequestContextMiddleware(fails, settings_factory())(dict(scope), nothing, send)
    access = [record for record in caplog.records if record.name == "ollama_web.access"]
    statuses = [record.fields["status"] for record in access]  # type: ignore[attr-defined]
    assert statuses == [499, 500]
    assert [m["status"] for m in sent if m["type"] == "http.response.start"] == [500]


async def test_a_request_id_that_looks_like_an_api_key_is_replaced(
    app_factory: Callable[[Settings], Awaitable[FastAPI]],
    settings_factory: Callable[..., Settings],
) -> None:
    """access.log writes the request id as it is (no redaction pass): a key pasted into
    X-Request-ID would be kept there in plain text."""
    settings = settings_factory()
    app = await app_factory(settings)
    key = "owk_" + "A" * 43
    async with asgi_client(app) as client:
        replaced = await client.get("/health/live", headers={"X-Request-ID": key})
        kept = await client.get("/health/live", headers={"X-Request-ID": "owk-lookalike.1"})
    assert replaced.headers["x-request-id"] != key
    assert kept.headers["x-request-id"] == "owk-lookalike.1"
    assert key not in (settings.log_dir / "access.log").read_text()
