"""deploy/nginx.conf: accepted by nginx, and in front of a real server on loopback it passes
server-sent events through one by one and forwards the headers TRUSTED_PROXIES relies on.

The relay app below stands in for any SSE endpoint that does not ask nginx itself to stop
buffering (no `X-Accel-Buffering: no`), so what is measured is the shipped configuration.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI, Request
from fastapi.responses import StreamingResponse

from ollama_web.emulator import OllamaEmulator
from tests.deploy.nginx_harness import (
    Arrival,
    nginx_command,
    render_config,
    running_nginx,
    spread,
    sse_events,
)
from tests.deploy.tools import describe, read, run

pytestmark = pytest.mark.tools

TOKENS = 6
TOKENS_PER_SECOND = 10.0
INTERVAL = 1 / TOKENS_PER_SECOND


def relay_app(emulator_url: str) -> FastAPI:
    """SSE relays of the emulator's chat and pull streams, plus a header echo."""
    app = FastAPI()

    async def relay(path: str, body: dict[str, Any], event: str) -> AsyncIterator[str]:
        async with (
            httpx.AsyncClient(base_url=emulator_url, timeout=10) as client,
            client.stream("POST", path, json=body) as response,
        ):
            async for line in response.aiter_lines():
                chunk = json.loads(line)
                if chunk.get("done") or chunk.get("status") == "success":
                    break
                yield f"event: {event}\ndata: {json.dumps(chunk)}\n\n"
        yield "event: done\ndata: {}\n\n"

    @app.post("/api/chat/stream")
    async def chat_stream() -> StreamingResponse:
        body = {"model": "llama3.2", "messages": [{"role": "user", "content": "hi"}]}
        return StreamingResponse(relay("/api/chat", body, "token"), media_type="text/event-stream")

    @app.post("/api/models/pull")
    async def pull() -> StreamingResponse:
        body = {"model": "tinyllama"}
        return StreamingResponse(
            relay("/api/pull", body, "progress"), media_type="text/event-stream"
        )

    @app.get("/echo")
    async def echo(request: Request) -> dict[str, Any]:
        return {"headers": dict(request.headers), "scheme": request.url.scheme}

    held = asyncio.Event()
    app.state.held = held
    app.state.arrived = 0

    @app.get("/hold")
    async def hold() -> dict[str, Any]:
        """A request in progress until the test lets it end (as an open stream is)."""
        app.state.arrived += 1
        await held.wait()
        return {}

    return app


@pytest.fixture
def slow_emulator(ollama_emulator: OllamaEmulator) -> OllamaEmulator:
    ollama_emulator.config.reply_tokens = TOKENS
    ollama_emulator.config.tokens_per_second = TOKENS_PER_SECOND
    ollama_emulator.config.pull_steps = 1
    ollama_emulator.config.pull_delay = INTERVAL
    return ollama_emulator


async def collect(client: httpx.AsyncClient, path: str) -> list[Arrival]:
    async with client.stream("POST", path, timeout=10) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        return await sse_events(response)


def assert_one_by_one(arrivals: list[Arrival]) -> None:
    """Each event arrives about when the emulator sends it: spread out, not a burst."""
    duration, gaps = spread(arrivals)
    assert duration >= 0.6 * INTERVAL * (len(arrivals) - 1), (duration, gaps)
    assert sum(gap >= 0.5 * INTERVAL for gap in gaps) >= len(gaps) - 1, gaps


def test_nginx_accepts_the_config(tmp_path: Path) -> None:
    rendered = render_config(tmp_path, upstream_port=8000)
    result = run(nginx_command(rendered, "-t"))
    assert result.returncode == 0, describe(result)
    assert "test is successful" in result.stderr
    assert "[warn]" not in result.stderr, result.stderr


async def test_chat_tokens_pass_nginx_one_by_one(
    tmp_path: Path, live_server: Any, slow_emulator: OllamaEmulator
) -> None:
    async with live_server(relay_app(slow_emulator.url)) as base_url:
        upstream_port = int(base_url.rsplit(":", 1)[1])
        async with running_nginx(tmp_path, upstream_port) as proxy, proxy.client() as client:
            events = await collect(client, "/api/chat/stream")
    tokens = [event for event in events if event.event == "token"]
    assert len(tokens) == TOKENS
    assert events[-1].event == "done"
    assert_one_by_one(tokens)


async def test_pull_progress_passes_nginx_one_by_one(
    tmp_path: Path, live_server: Any, slow_emulator: OllamaEmulator
) -> None:
    async with live_server(relay_app(slow_emulator.url)) as base_url:
        upstream_port = int(base_url.rsplit(":", 1)[1])
        async with running_nginx(tmp_path, upstream_port) as proxy, proxy.client() as client:
            events = await collect(client, "/api/models/pull")
    progress = [event for event in events if event.event == "progress"]
    assert len(progress) >= 4
    assert_one_by_one(progress)


async def test_without_the_unbuffered_locations_the_same_stream_arrives_in_a_burst(
    tmp_path: Path, live_server: Any, slow_emulator: OllamaEmulator
) -> None:
    """The control: proves the measurement sees buffering, and that the config prevents it."""
    async with live_server(relay_app(slow_emulator.url)) as base_url:
        upstream_port = int(base_url.rsplit(":", 1)[1])
        async with (
            running_nginx(tmp_path, upstream_port, drop_unbuffered=True) as proxy,
            proxy.client() as client,
        ):
            events = await collect(client, "/api/chat/stream")
    tokens = [event for event in events if event.event == "token"]
    assert len(tokens) == TOKENS
    duration, _ = spread(tokens)
    assert duration < INTERVAL, duration


async def test_forwarded_headers_and_https_redirect(
    tmp_path: Path, live_server: Any, ollama_emulator: OllamaEmulator
) -> None:
    async with live_server(relay_app(ollama_emulator.url)) as base_url:
        upstream_port = int(base_url.rsplit(":", 1)[1])
        async with running_nginx(tmp_path, upstream_port) as proxy:
            async with proxy.client() as client:
                response = await client.get(
                    "/echo", headers={"X-Forwarded-For": "203.0.113.7", "X-Request-ID": "x"}
                )
            async with httpx.AsyncClient() as plain:
                redirect = await plain.get(f"{proxy.http_url}/api/models?x=1")
    headers = response.json()["headers"]
    # Overwritten, never appended to: a client cannot smuggle an address past the proxy.
    assert headers["x-forwarded-for"] == "127.0.0.1"
    assert headers["x-real-ip"] == "127.0.0.1"
    assert headers["x-forwarded-proto"] == "https"
    # The port stays in Host: the same-site check compares it with the browser's Origin.
    assert headers["host"] == proxy.https_url.removeprefix("https://")
    # nginx's own $request_id replaces the client's: one id in the proxy's and the app's logs.
    assert len(headers["x-request-id"]) == 32
    assert response.headers["server"] == "nginx"  # server_tokens off: no version
    assert redirect.status_code == 301
    assert redirect.headers["location"] == "https://127.0.0.1/api/models?x=1"


async def test_requests_in_progress_are_limited_per_client_address(
    tmp_path: Path, live_server: Any, ollama_emulator: OllamaEmulator
) -> None:
    """`limit_conn`: 128 at once from one address (open streams, say); the next is 429
    until one ends."""
    app = relay_app(ollama_emulator.url)
    async with live_server(app) as base_url:
        upstream_port = int(base_url.rsplit(":", 1)[1])
        async with running_nginx(tmp_path, upstream_port) as proxy:
            limits = httpx.Limits(max_connections=200, max_keepalive_connections=200)
            async with proxy.client(limits=limits, timeout=20) as client:
                holding = [asyncio.ensure_future(client.get("/hold")) for _ in range(128)]
                for _ in range(400):  # until all 128 are in progress at the backend
                    if app.state.arrived == 128:
                        break
                    await asyncio.sleep(0.05)
                over = await client.get("/echo")
                app.state.held.set()
                held = await asyncio.gather(*holding)
                after = await client.get("/echo")
    assert over.status_code == 429
    assert over.json()["error"] == "RATE_LIMITED"  # the API's error shape, not nginx's HTML
    assert over.headers["retry-after"] == "1"
    assert [response.status_code for response in held] == [200] * 128
    assert after.status_code == 200


def test_the_sticky_upstream_snippet_is_valid(tmp_path: Path) -> None:
    """The commented `hash` line the docs tell operators to enable for several instances."""
    rendered = render_config(tmp_path, upstream_port=8000)
    text = rendered.path.read_text(encoding="utf-8")
    sticky = "# hash $cookie_ow_session$http_authorization$http_x_api_key consistent;"
    assert sticky in text
    assert sticky.removeprefix("# ") in read("DEPLOYMENT.md")
    rendered.path.write_text(text.replace(sticky, sticky.removeprefix("# ")), encoding="utf-8")
    result = run(nginx_command(rendered, "-t"))
    assert result.returncode == 0, describe(result)
