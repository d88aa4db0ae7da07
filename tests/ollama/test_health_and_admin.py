"""The `ollama` component of /health, the lifespan's pooled client, and the admin node view."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

from ollama_web.app import create_app
from ollama_web.core.config import Settings
from ollama_web.emulator import OllamaEmulator
from ollama_web.ollama.gateway import OllamaGateway
from tests.fixtures.auth import create_test_user
from tests.ollama.conftest import AppFactory
from tests.ollama.faults import closed_port_url, hanging_server, json_node, serving
from tests.ollama.streams import collect


def versions(emulator: OllamaEmulator) -> int:
    return sum(1 for r in emulator.requests if r.path == "/api/version")


async def test_health_reports_every_node(
    gateway_app: AppFactory, ollama_emulator: OllamaEmulator
) -> None:
    async with gateway_app([ollama_emulator.url]) as (_, client):
        body = (await client.get("/health")).json()
    component = body["components"]["ollama"]
    assert component["status"] == "healthy"
    (node,) = component["nodes"]
    assert set(node) == {"url", "status", "version", "latency_ms", "error"}
    assert node["url"] == ollama_emulator.url
    assert node["status"] == "up"
    assert node["version"] == "0.33.0"
    assert node["latency_ms"] > 0
    assert node["error"] is None


async def test_one_node_down_degrades_the_component(
    gateway_app: AppFactory, ollama_emulator: OllamaEmulator
) -> None:
    down = closed_port_url()
    async with gateway_app([ollama_emulator.url, down]) as (_, client):
        body = (await client.get("/health")).json()
    component = body["components"]["ollama"]
    assert component["status"] == "degraded"
    assert body["status"] == "degraded"
    assert [n["status"] for n in component["nodes"]] == ["up", "down"]
    assert component["nodes"][1]["error"].startswith("connection failed")


async def test_all_nodes_down_is_unhealthy_but_the_server_only_degraded(
    gateway_app: AppFactory,
) -> None:
    async with gateway_app([closed_port_url(), closed_port_url()]) as (_, client):
        response = await client.get("/health")
        ready = await client.get("/health/ready")
    assert response.status_code == 200
    assert ready.status_code == 200
    body = response.json()
    assert body["components"]["ollama"]["status"] == "unhealthy"
    assert body["status"] == "degraded"


async def test_the_probe_is_cached_and_shared(
    gateway_app: AppFactory, ollama_emulator: OllamaEmulator
) -> None:
    async with gateway_app([ollama_emulator.url], ollama_health_cache_seconds=30) as (_, client):
        for _ in range(3):
            assert (await client.get("/health")).status_code == 200
    assert versions(ollama_emulator) == 1


async def test_a_hanging_node_never_hangs_health(
    gateway_app: AppFactory, ollama_emulator: OllamaEmulator
) -> None:
    async with hanging_server() as hanging:
        urls = [ollama_emulator.url, hanging.url]
        async with gateway_app(urls, ollama_list_timeout_seconds=0.3) as (_, client):
            started = time.monotonic()
            body = (await client.get("/health")).json()
            elapsed = time.monotonic() - started
    assert elapsed < 1.5  # the list timeout, not the 2 s connect or 5 s default
    nodes = body["components"]["ollama"]["nodes"]
    assert nodes[1]["status"] == "down"
    assert "read timed out" in nodes[1]["error"]


async def test_the_lifespan_owns_one_client_and_closes_it(
    settings_factory: Callable[..., Settings], ollama_emulator: OllamaEmulator
) -> None:
    app = create_app(settings_factory(ollama_url=[ollama_emulator.url]))
    async with app.router.lifespan_context(app):
        gateway = app.state.gateway
        assert isinstance(gateway, OllamaGateway)
        assert not gateway.client.is_closed
        assert "ollama" in app.state.health_checks
    assert gateway.client.is_closed


async def test_admins_see_per_node_state(
    gateway_app: AppFactory, ollama_emulator: OllamaEmulator
) -> None:
    down = closed_port_url()
    async with gateway_app([ollama_emulator.url, down]) as (app, client):
        admin = await create_test_user(app, "admin")
        user = await create_test_user(app, "user")
        async with app.state.gateway.open_chat("llama3.2", []) as stream:
            await collect(stream)
        response = await client.get("/api/admin/ollama/nodes", headers=admin.headers)
        forbidden = await client.get("/api/admin/ollama/nodes", headers=user.headers)
        anonymous = await client.get("/api/admin/ollama/nodes")
    assert (forbidden.status_code, forbidden.json()["error"]) == (403, "FORBIDDEN")
    assert (anonymous.status_code, anonymous.json()["error"]) == (401, "UNAUTHENTICATED")
    assert response.status_code == 200
    up, gone = response.json()["nodes"]
    assert up["url"] == ollama_emulator.url
    assert up["status"] == "up"
    assert up["in_flight"] == 0
    assert up["version"] == "0.33.0"
    assert up["latency_ms"] > 0
    assert up["loaded_models"] == ["llama3.2:latest"]
    assert up["models_count"] == 1
    assert gone["url"] == down
    assert gone["status"] == "down"
    assert gone["backoff_seconds"] > 0
    assert gone["consecutive_failures"] >= 1
    assert gone["last_error"].startswith("connection failed")
    assert gone["last_error_at"]


async def test_credentials_in_a_node_url_are_sent_and_never_shown(
    gateway_app: AppFactory, ollama_emulator: OllamaEmulator
) -> None:
    """A proxy in front of Ollama may want Basic credentials in OLLAMA_URL: they go in the
    requests, and nowhere a caller (anonymous, for /health) can read them."""
    host = ollama_emulator.url.removeprefix("http://")
    async with gateway_app([f"http://ollama:s3cret@{host}"]) as (app, client):
        admin = await create_test_user(app, "admin")
        shown = [
            await client.get("/health"),
            await client.get("/api/models", headers=admin.headers),
            await client.get("/api/models/test", headers=admin.headers),
            await client.get("/api/admin/ollama/nodes", headers=admin.headers),
            await client.get("/metrics/prometheus", headers=admin.headers),
        ]
        by_node = await client.delete(
            "/api/models/llama3.2",
            params={"node": f"http://ollama:s3cret@{host}"},
            headers=admin.headers,
        )
    for response in shown:
        assert response.status_code == 200, response.text
        assert "s3cret" not in response.text
    assert shown[0].json()["components"]["ollama"]["nodes"][0]["url"] == ollama_emulator.url
    assert by_node.status_code == 204  # ?node= names the node with or without them
    authorizations = {r.headers.get("authorization") for r in ollama_emulator.requests}
    assert authorizations == {"Basic b2xsYW1hOnMzY3JldA=="}  # ollama:s3cret


async def test_a_full_pool_is_not_a_node_down(
    gateway_app: AppFactory, ollama_emulator: OllamaEmulator
) -> None:
    """Generations hold every upstream connection: a listing that cannot get one is our
    pool's limit, not the node's failure. The node stays up, the list it gave last still
    holds, and /health stays healthy."""
    ollama_emulator.config.reply_tokens = 1000
    ollama_emulator.config.tokens_per_second = 5
    async with gateway_app([ollama_emulator.url], ollama_max_connections=2) as (app, client):
        gateway: OllamaGateway = app.state.gateway
        user = await create_test_user(app)
        assert (await client.get("/api/models", headers=user.headers)).status_code == 200
        held = [gateway.open_chat("llama3.2", []) for _ in range(2)]
        streams = [await opened.__aenter__() for opened in held]
        try:
            gateway.registry.invalidate()
            listed = await client.get("/api/models", headers=user.headers)
            shown = await client.get("/api/models/llama3.2", headers=user.headers)
            health = (await client.get("/health")).json()["components"]["ollama"]
            (node,) = gateway.registry.snapshot()
        finally:
            for opened, stream in zip(held, streams, strict=True):
                await opened.__aexit__(None, None, None)
                assert stream is not None
    assert listed.status_code == 200
    assert [m["name"] for m in listed.json()["models"]] == ["llama3.2:latest"]
    assert shown.status_code in (200, 503)  # show needs a connection of its own
    if shown.status_code == 503:
        assert shown.json()["error"] == "OLLAMA_BUSY"
    assert node["status"] == "up"
    assert health["status"] == "healthy"


async def test_a_node_that_trickles_its_answer_costs_no_more_than_one_that_is_silent(
    gateway_app: AppFactory, ollama_emulator: OllamaEmulator
) -> None:
    """Each byte re-arms the read timeout, so a node that sends one byte at a time never
    trips it; the whole request is bounded too (pool + connect + read timeouts)."""

    async def trickle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read(65536)
        for byte in b"HTTP/1.1 200 OK\r\nX-Slow: " + b"a" * 1000:
            writer.write(bytes([byte]))
            await writer.drain()
            await asyncio.sleep(0.1)

    async with serving(trickle) as port:
        slow = f"http://127.0.0.1:{port}"
        settings = {"ollama_list_timeout_seconds": 0.5, "ollama_connect_timeout_seconds": 0.5}
        async with gateway_app([ollama_emulator.url, slow], **settings) as (app, client):
            user = await create_test_user(app)
            started = time.monotonic()
            listed = await asyncio.wait_for(client.get("/api/models", headers=user.headers), 10)
            elapsed = time.monotonic() - started
    assert listed.status_code == 200
    assert elapsed < 5.0  # 0.5 + 0.5 + 0.5, not the 100 s the trickle would take
    assert [m["name"] for m in listed.json()["models"]] == ["llama3.2:latest"]
    trickling = listed.json()["nodes"][1]
    assert trickling["status"] == "down"
    assert "too long" in trickling["error"]


async def test_a_node_that_no_longer_has_the_model_counts_as_deleted(
    gateway_app: AppFactory, ollama_emulator: OllamaEmulator
) -> None:
    """Deleted meanwhile on one node (another admin, another instance): that node says 404,
    which is what a delete wants; the answer is 204."""
    answers: dict[bytes, tuple[int, Any]] = {
        b"GET /api/tags": (200, {"models": [{"name": "llama3.2:latest"}]}),
        b"GET /api/version": (200, {"version": "0.33.0"}),
        b"DELETE /api/delete": (404, {"error": "model 'llama3.2:latest' not found"}),
    }
    async with (
        serving(json_node(answers)) as port,
        gateway_app([ollama_emulator.url, f"http://127.0.0.1:{port}"]) as (app, client),
    ):
        admin = await create_test_user(app, "admin")
        response = await client.delete("/api/models/llama3.2", headers=admin.headers)
    assert response.status_code == 204
    assert ollama_emulator.find_model("llama3.2") is None


async def test_a_delete_that_fails_on_one_node_is_not_a_204(
    gateway_app: AppFactory, ollama_emulator: OllamaEmulator
) -> None:
    """The model went from one node and stayed on the other: the admin is told both."""
    answers = {
        b"GET /api/tags": (200, {"models": [{"name": "llama3.2:latest"}]}),
        b"GET /api/version": (200, {"version": "0.33.0"}),
        b"DELETE /api/delete": (500, {"error": "disk on fire"}),
    }

    async with serving(json_node(answers)) as port:
        failing = f"http://127.0.0.1:{port}"
        async with gateway_app([ollama_emulator.url, failing]) as (app, client):
            admin = await create_test_user(app, "admin")
            response = await client.delete("/api/models/llama3.2", headers=admin.headers)
    assert response.status_code == 502
    body = response.json()
    assert body["error"] == "OLLAMA_ERROR"
    assert body["details"]["deleted"] == [ollama_emulator.url]
    (failed,) = body["details"]["failed"]
    assert failed["node"] == failing
    assert failed["error"] == "OLLAMA_ERROR"
    assert failed["upstream_message"] == "disk on fire"
    assert ollama_emulator.find_model("llama3.2") is None


async def test_a_node_that_answers_503_to_everything_is_down(
    gateway_app: AppFactory,
) -> None:
    """A proxy in front of a dead Ollama answers 503: unlike our own full pool, that is the
    node failing, even when it listed models before."""
    answers: dict[bytes, tuple[int, Any]] = {
        b"GET /api/tags": (200, {"models": [{"name": "llama3.2:latest"}]}),
        b"GET /api/version": (200, {"version": "0.33.0"}),
    }
    async with (
        serving(json_node(answers)) as port,
        gateway_app([f"http://127.0.0.1:{port}"]) as (app, client),
    ):
        user = await create_test_user(app)
        assert (await client.get("/api/models", headers=user.headers)).status_code == 200
        for path in list(answers):
            answers[path] = (503, {"error": "no healthy upstream"})
        app.state.gateway.registry.invalidate()
        app.state.gateway.prober._cached_at = 0.0
        listed = await client.get("/api/models", headers=user.headers)
        health = (await client.get("/health")).json()["components"]["ollama"]
    assert (listed.status_code, listed.json()["error"]) == (503, "OLLAMA_UNAVAILABLE")
    assert health["status"] == "unhealthy"
    assert health["nodes"][0]["status"] == "down"


async def test_a_node_whose_answers_are_not_in_their_content_encoding_fails_alone(
    gateway_app: AppFactory, ollama_emulator: OllamaEmulator
) -> None:
    """A proxy that labels plain JSON `Content-Encoding: gzip`: httpx cannot decode it.
    That node is down, saying why (health, listing, show, chat), never a 500, and the other
    node goes on serving."""
    answers: dict[bytes, tuple[int, Any]] = {
        b"GET /api/tags": (200, {"models": [{"name": "llama3.2:latest"}]}),
        b"GET /api/version": (200, {"version": "0.33.0"}),
        b"POST /api/show": (200, {"details": {}}),
    }
    async with serving(json_node(answers, b"Content-Encoding: gzip\r\n")) as port:
        broken = f"http://127.0.0.1:{port}"
        async with gateway_app([broken]) as (app, client):
            user = await create_test_user(app)
            health = await client.get("/health")
            listed = await client.get("/api/models", headers=user.headers)
            shown = await client.get("/api/models/llama3.2", headers=user.headers)
            chat = await client.post(
                "/api/chat/message",
                json={"model": "llama3.2", "content": "hi"},
                headers=user.headers,
            )
        assert health.status_code == 200
        (node,) = health.json()["components"]["ollama"]["nodes"]
        assert node["error"].startswith("an answer that could not be decoded")
        for response in (listed, shown, chat):
            assert (response.status_code, response.json()["error"]) == (503, "OLLAMA_UNAVAILABLE")
            assert response.json()["details"]["nodes"][0]["error"] == node["error"]
        async with gateway_app([ollama_emulator.url, broken]) as (app, client):
            user = await create_test_user(app)
            health = await client.get("/health")
            listed = await client.get("/api/models", headers=user.headers)
    assert health.json()["components"]["ollama"]["status"] == "degraded"
    assert listed.status_code == 200
    assert "llama3.2:latest" in [model["name"] for model in listed.json()["models"]]


async def test_a_node_answering_404_to_its_version_says_so(gateway_app: AppFactory) -> None:
    """A wrong OLLAMA_URL path or a proxy that lacks the route: the node's error is that
    404, not an older one nor "model not found" (no model was asked for)."""
    answers: dict[bytes, tuple[int, Any]] = {
        b"GET /api/tags": (200, {"models": [{"name": "llama3.2:latest"}]}),
        b"GET /api/version": (404, {"error": "no such route"}),
    }
    async with (
        serving(json_node(answers)) as port,
        gateway_app([f"http://127.0.0.1:{port}"]) as (app, client),
    ):
        node = app.state.gateway.registry.nodes[0]
        node.last_error = "read timed out"  # an earlier failure
        health = (await client.get("/health")).json()["components"]["ollama"]
    assert health["nodes"][0]["error"] == "HTTP 404: no such route"


async def test_an_ollama_url_with_a_path_of_its_own_says_check_ollama_url(
    gateway_app: AppFactory, ollama_emulator: OllamaEmulator
) -> None:
    """Ollama answers a path it lacks with a plain "404 page not found": the node's error
    says so, and neither the listing nor a chat calls the model missing."""
    async with gateway_app([f"{ollama_emulator.url}/ollama"]) as (app, client):
        user = await create_test_user(app)
        health = (await client.get("/health")).json()["components"]["ollama"]
        chat = await client.post(
            "/api/chat/message", json={"model": "llama3.2", "content": "hi"}, headers=user.headers
        )
    said = "HTTP 404: 404 page not found: no such API path here; check OLLAMA_URL"
    assert health["nodes"][0]["error"] == said
    assert (chat.status_code, chat.json()["error"]) == (503, "OLLAMA_UNAVAILABLE")
    assert chat.json()["details"]["nodes"][0]["error"] == said


async def test_an_error_whose_body_never_ends_costs_the_list_timeout_not_the_read_timeout(
    gateway_app: AppFactory,
) -> None:
    """A node's 500 that announces a body and stalls: the chat is a 502 in about the list
    timeout (an error body is short), not after the generation's read timeout."""
    answers: dict[bytes, tuple[int, Any]] = {
        b"GET /api/tags": (200, {"models": [{"name": "llama3.2:latest"}]}),
        b"GET /api/version": (200, {"version": "0.33.0"}),
    }
    stall = b'HTTP/1.1 500 X\r\nContent-Length: 1000\r\n\r\n{"error":"bo'
    async with serving(json_node(answers, stall_on=(b"POST /api/chat", stall))) as port:
        timeouts = {"ollama_list_timeout_seconds": 0.5, "ollama_timeout_seconds": 60}
        async with gateway_app([f"http://127.0.0.1:{port}"], **timeouts) as (app, client):
            user = await create_test_user(app)
            started = time.monotonic()
            chat = await asyncio.wait_for(
                client.post(
                    "/api/chat/message",
                    json={"model": "llama3.2", "content": "hi"},
                    headers=user.headers,
                ),
                20,
            )
            elapsed = time.monotonic() - started
    assert chat.status_code == 502, chat.text
    assert chat.json()["error"] == "OLLAMA_ERROR"
    assert elapsed < 5, elapsed
