"""Request id and the access log line of every request."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from fastapi import FastAPI

from ollama_web.core.config import Settings
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
