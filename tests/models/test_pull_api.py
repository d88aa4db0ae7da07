"""`POST /api/models/pull` over real HTTP on loopback: SSE progress, errors, shared pulls."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from typing import Any

import httpx

from tests.fixtures.auth import create_test_user
from tests.models.conftest import Cluster

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


async def test_pull_with_every_node_down_is_503(cluster: Cluster) -> None:
    await cluster.node_a.stop()
    await cluster.node_b.stop()
    response = await cluster.client.post(
        "/api/models/pull", json={"name": "mistral"}, headers=cluster.admin.headers
    )
    assert (response.status_code, response.json()["error"]) == (503, "OLLAMA_UNAVAILABLE")
