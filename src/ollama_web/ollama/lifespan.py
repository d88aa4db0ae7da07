"""The gateway lifespan: the ONE pooled `httpx.AsyncClient`, the gateway at
`app.state.gateway`, and the `ollama` component of `/health`."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from ollama_web.core.config import Settings
from ollama_web.health.service import register_check
from ollama_web.ollama.gateway import OllamaGateway
from ollama_web.ollama.transport import build_client


@asynccontextmanager
async def gateway_scope(settings: Settings) -> AsyncIterator[OllamaGateway]:
    """A gateway with its own pooled client, closed on exit (also used by tests, bench)."""
    async with build_client(settings) as client:
        gateway = OllamaGateway(settings, client)
        try:
            yield gateway
        finally:
            await gateway.aclose()


@asynccontextmanager
async def gateway_lifespan(app: FastAPI) -> AsyncIterator[None]:
    async with gateway_scope(app.state.settings) as gateway:
        app.state.gateway = gateway
        register_check(app, "ollama", gateway.health_check)
        yield
