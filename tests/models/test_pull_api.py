"""`POST /api/models/pull` over real HTTP on loopback: SSE progress, errors, shared pulls."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from ollama_web.core.config import Settings
from ollama_web.emulator import OllamaEmulator
from ollama_web.ollama.pull_cancels import HostPullCancels
from tests.conftest import asgi_client, require_redis
from tests.fixtures.auth import create_test_user
from tests.models.conftest import Cluster
from tests.ollama.faults import closed_port_url, hanging_server

Event = tuple[str, dict[str, Any]]


async def pull(
    base_url: str, headers: dict[str, str], name: str
) -> tuple[httpx.Response, list[Event]]:
    """POST the pull and parse the SSE stream as it arrives."""
    events: list[Event] = []
    async with (
        httpx.AsyncClient(base_url=base_url, timeout=10) as client,
        client.stream("POST", "/api/models/pull", json={"name": name}, headers=headers) as response,
    ):
        kind = ""
        async for line in response.aiter_lines():
            if line.startswith("event: "):
                kind = line[7:]
            elif line.startswith("data: "):
                events.append((kind, json.loads(line[6:])))
    return response, events


def pulls(cluster: Cluster) -> int:
    return sum(
        1 for r in [*cluster.node_a.requests, *cluster.node_b.requests] if r.path == "/api/pull"
    )


async def test_pull_streams_progress_then_done(
    cluster: Cluster, live_server: Callable[..., Any]
) -> None:
    async with live_server(cluster.app) as base_url:
        response, events = await pull(base_url, cluster.admin.headers, "tinyllama")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/event-stream")
    assert response.headers["cache-control"] == "no-cache"
    kinds = [kind for kind, _ in events]
    assert kinds[-1] == "done"
    assert set(kinds[:-1]) == {"progress"}
    assert events[-1][1] == {"status": "success"}
    assert events[0][1]["status"] == "pulling manifest"
    layer = next(data for kind, data in events if data.get("digest"))
    assert set(layer) == {"status", "digest", "total", "completed", "percent"}
    assert layer["digest"].startswith("sha256:")
    assert layer["total"] > 0
    assert cluster.node_a.find_model("tinyllama") is not None  # the first reachable node
    listed = await cluster.client.get("/api/models", headers=cluster.user.headers)
    assert "tinyllama:latest" in [m["name"] for m in listed.json()["models"]]


async def test_unknown_model_pull_fails_after_the_200_with_an_error_event(
    cluster: Cluster, live_server: Callable[..., Any]
) -> None:
    async with live_server(cluster.app) as base_url:
        response, events = await pull(base_url, cluster.admin.headers, "no-such-model")
    assert response.status_code == 200
    assert [kind for kind, _ in events] == ["progress", "error"]
    assert events[-1][1] == {
        "error": "MODEL_NOT_FOUND",
        "message": "Model no-such-model not found in the registry",
        "details": {
            "model_name": "no-such-model",
            "suggestion": "Check available models using /api/models endpoint",
        },
    }


async def test_two_admins_pulling_the_same_model_share_one_upstream_pull(
    cluster: Cluster, live_server: Callable[..., Any]
) -> None:
    cluster.node_a.config.pull_delay = 0.01
    other_admin = await create_test_user(cluster.app, "admin")
    async with live_server(cluster.app) as base_url:
        first = asyncio.create_task(pull(base_url, cluster.admin.headers, "mistral"))
        await cluster.node_a.wait_until(lambda: pulls(cluster) == 1)
        second = asyncio.create_task(pull(base_url, other_admin.headers, "mistral:latest"))
        (_, one), (_, two) = await asyncio.gather(first, second)
    assert pulls(cluster) == 1
    assert one[-1] == two[-1] == ("done", {"status": "success"})
    assert len(two) < len(one)  # the later admin joined a pull already under way


async def test_pull_refusals_come_before_the_stream(cluster: Cluster) -> None:
    user = await cluster.client.post(
        "/api/models/pull", json={"name": "mistral"}, headers=cluster.user.headers
    )
    invalid = await cluster.client.post(
        "/api/models/pull", json={"name": "bad name"}, headers=cluster.admin.headers
    )
    missing = await cluster.client.post("/api/models/pull", json={}, headers=cluster.admin.headers)
    anonymous = await cluster.client.post("/api/models/pull", json={"name": "bad name"})
    assert (user.status_code, user.json()["error"]) == (403, "FORBIDDEN")
    assert (invalid.status_code, invalid.json()["error"]) == (422, "VALIDATION_ERROR")
    assert missing.status_code == 422
    assert anonymous.status_code == 401
    assert pulls(cluster) == 0


async def test_a_pull_on_a_node_that_never_answers_fails_within_the_list_timeout(
    app_factory: Callable[..., Any],
    settings_factory: Callable[..., Settings],
    node_a: OllamaEmulator,
) -> None:
    """Ollama writes a pull's head at once (its first line), so a node that sends none is
    not answering: 504 after the list timeout, not OLLAMA_TIMEOUT_SECONDS (a chat's head
    comes with its first token, which may take minutes)."""
    async with hanging_server() as hanging:
        settings = settings_factory(
            ollama_url=[node_a.url, hanging.url],
            ollama_list_timeout_seconds=0.3,
            ollama_timeout_seconds=60.0,
        )
        app = await app_factory(settings)
        admin = await create_test_user(app, "admin")
        async with asgi_client(app) as client:
            started = time.monotonic()
            response = await asyncio.wait_for(
                client.post(
                    "/api/models/pull",
                    json={"name": "mistral", "node": hanging.url},
                    headers=admin.headers,
                ),
                10,
            )
            elapsed = time.monotonic() - started
    assert (response.status_code, response.json()["error"]) == (504, "OLLAMA_TIMEOUT")
    assert 0.3 <= elapsed < 10


async def test_pull_with_every_node_down_is_503(cluster: Cluster) -> None:
    await cluster.node_a.stop()
    await cluster.node_b.stop()
    response = await cluster.client.post(
        "/api/models/pull", json={"name": "mistral"}, headers=cluster.admin.headers
    )
    assert (response.status_code, response.json()["error"]) == (503, "OLLAMA_UNAVAILABLE")


async def _pull_under_way(cluster: Cluster, base_url: str, name: str) -> asyncio.Task[Any]:
    """A slow pull of `name` on node A, followed by the admin, once its stream has begun
    (a cancel before Ollama's answer came would make the pull request itself a 409)."""
    cluster.node_a.config.pull_delay = 0.1
    cluster.node_a.config.pull_steps = 100  # many seconds: the cancel comes first
    task = asyncio.create_task(pull(base_url, cluster.admin.headers, name))
    jobs = cluster.app.state.gateway.pulls.jobs
    await cluster.node_a.wait_until(lambda: any(job.events for job in jobs.values()), timeout=5)
    return task


async def test_an_admin_cancels_a_pull_and_its_stream_ends_with_pull_cancelled(
    cluster: Cluster, live_server: Callable[..., Any]
) -> None:
    """The pull's upstream closes (Ollama's cancel: it installs nothing), its followers get
    an `error` event PULL_CANCELLED, and pulling again starts afresh."""
    async with live_server(cluster.app) as base_url:
        following = await _pull_under_way(cluster, base_url, "mistral")
        response = await cluster.client.post(
            "/api/models/pull/cancel",
            json={"name": "mistral:latest"},
            headers=cluster.admin.headers,
        )
        assert response.status_code == 200, response.text
        assert response.json() == {
            "model": "mistral:latest", "node": None, "cancelled": 1, "processes_told": 0,
        }  # fmt: skip
        _, events = await asyncio.wait_for(following, 5)
        again = await cluster.client.post(
            "/api/models/pull/cancel", json={"name": "mistral"}, headers=cluster.admin.headers
        )
    kind, data = events[-1]
    assert (kind, data["error"]) == ("error", "PULL_CANCELLED")
    assert data["details"] == {"model_name": "mistral", "node": cluster.node_a.url}
    assert cluster.node_a.find_model("mistral") is None
    assert (again.status_code, again.json()["error"]) == (404, "PULL_NOT_RUNNING")


async def test_a_cancel_names_the_node_as_ollama_url_may_spell_it(
    cluster: Cluster, live_server: Callable[..., Any]
) -> None:
    """`host:port/` (no scheme, a trailing slash) names the pull's node, as in OLLAMA_URL."""
    spelled = cluster.node_a.url.removeprefix("http://") + "/"
    async with live_server(cluster.app) as base_url:
        following = await _pull_under_way(cluster, base_url, "mistral")
        response = await cluster.client.post(
            "/api/models/pull/cancel",
            json={"name": "mistral", "node": spelled},
            headers=cluster.admin.headers,
        )
        _, events = await asyncio.wait_for(following, 5)
    assert response.status_code == 200, response.text
    assert response.json() == {
        "model": "mistral", "node": cluster.node_a.url, "cancelled": 1, "processes_told": 0,
    }  # fmt: skip
    assert events[-1][1]["error"] == "PULL_CANCELLED"


async def test_pull_cancel_refusals(cluster: Cluster) -> None:
    cancel = "/api/models/pull/cancel"
    user = await cluster.client.post(cancel, json={"name": "mistral"}, headers=cluster.user.headers)
    anonymous = await cluster.client.post(cancel, json={"name": "mistral"})
    invalid = await cluster.client.post(
        cancel, json={"name": "bad name"}, headers=cluster.admin.headers
    )
    node = await cluster.client.post(
        cancel,
        json={"name": "mistral", "node": "http://elsewhere:1"},
        headers=cluster.admin.headers,
    )
    assert (user.status_code, user.json()["error"]) == (403, "FORBIDDEN")
    assert anonymous.status_code == 401
    assert (invalid.status_code, invalid.json()["error"]) == (422, "VALIDATION_ERROR")
    assert (node.status_code, node.json()["error"]) == (422, "VALIDATION_ERROR")


@pytest.mark.redis
@pytest.mark.parametrize("carrier", ["redis", "host", "redis down"])
async def test_a_pull_is_cancelled_through_another_server_process(
    app_factory: Callable[..., Any],
    settings_factory: Callable[..., Settings],
    node_a: OllamaEmulator,
    node_b: OllamaEmulator,
    live_server: Callable[..., Any],
    carrier: str,
) -> None:
    """The cancel reaches the process running the pull: through Redis with REDIS_URL, else
    through the Unix sockets of the host's processes in DATA_DIR (the workers of `serve
    --workers N`), where before it answered 404 PULL_NOT_RUNNING and the pull ran on; and
    through those sockets while Redis is configured but unreachable (before: not at all)."""
    redis_url = None
    if carrier == "redis":
        redis_url = require_redis()
    elif carrier == "redis down":
        redis_url = closed_port_url().replace("http://", "redis://")
    settings = settings_factory(
        ollama_url=[node_a.url, node_b.url],
        ollama_health_cache_seconds=0.0,
        redis_url=redis_url,
    )
    running, other = await app_factory(settings), await app_factory(settings)
    admin = await create_test_user(running, "admin")
    for app in (running, other):
        cancels = app.state.gateway.pull_cancels
        if carrier == "redis":
            await asyncio.wait_for(cancels.listening.wait(), 5)
            await cancels.fallback.aclose()  # through Redis alone, not the host's sockets
            cancels.fallback = None
        elif carrier == "host":
            assert isinstance(cancels, HostPullCancels)
    async with asgi_client(running) as client, asgi_client(other) as elsewhere:
        cluster = Cluster(running, client, node_a, node_b, admin, admin)
        async with live_server(running) as base_url:
            following = await _pull_under_way(cluster, base_url, "mistral")
            response = await elsewhere.post(
                "/api/models/pull/cancel", json={"name": "mistral"}, headers=admin.headers
            )
            _, events = await asyncio.wait_for(following, 5)
    assert response.status_code == 200, response.text
    assert response.json()["cancelled"] == 0
    assert response.json()["processes_told"] >= 1
    if carrier != "redis":
        assert response.json()["processes_told"] == 1  # the other process, not this one
    assert (events[-1][0], events[-1][1]["error"]) == ("error", "PULL_CANCELLED")
