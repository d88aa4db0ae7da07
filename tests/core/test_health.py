"""Health, readiness, info, and offline docs."""

from __future__ import annotations

import httpx


async def test_health_reports_components(client: httpx.AsyncClient) -> None:
    response = await client.get("/health")
    assert response.status_code == 200
    body = response.json()
    assert body["status"] in {"healthy", "degraded"}
    assert body["components"]["database"]["status"] == "healthy"
    assert body["components"]["database"]["latency_ms"] >= 0
    filesystem = body["components"]["filesystem"]
    assert filesystem["status"] == "healthy"
    assert filesystem["free_bytes"] > 0
    assert all(entry["writable"] for entry in filesystem["directories"].values())
    assert body["uptime_seconds"] >= 0


async def test_live_and_ready(client: httpx.AsyncClient) -> None:
    assert (await client.get("/health/live")).json() == {"status": "alive"}
    ready = await client.get("/health/ready")
    assert ready.status_code == 200
    assert ready.json()["status"] == "ready"


async def test_info_lists_features_without_secrets(client: httpx.AsyncClient) -> None:
    body = (await client.get("/info")).json()
    assert set(body) >= {"name", "version", "environment", "uptime_seconds", "features", "settings"}
    assert "secret" not in str(body).lower()


async def test_docs_are_served_offline(client: httpx.AsyncClient) -> None:
    for page, asset in (("/docs", "swagger-ui-bundle.js"), ("/redoc", "redoc.standalone.js")):
        html = (await client.get(page)).text
        assert f"/docs/static/{asset}" in html
        assert "cdn" not in html.lower()
        assert "<script>" not in html, "no inline script: the CSP forbids it"
        script = await client.get(f"/docs/static/{asset}")
        assert script.status_code == 200
        assert len(script.content) > 10_000
    assert (await client.get("/docs/static/../../etc/passwd")).status_code == 404
    assert (await client.get("/openapi.json")).json()["info"]["title"] == "Ollama Web"
