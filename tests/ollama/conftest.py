"""Gateway fixtures: gateways over emulator nodes, and a second emulator node."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from ollama_web.core.config import Settings
from ollama_web.emulator import EmulatorConfig, ModelSpec, OllamaEmulator
from ollama_web.emulator.testing import running_emulator
from ollama_web.ollama.gateway import OllamaGateway
from ollama_web.ollama.lifespan import gateway_scope
from tests.conftest import asgi_client

GatewayFactory = Callable[..., AbstractAsyncContextManager[OllamaGateway]]


@pytest.fixture
def db_backend() -> str:
    """The gateway touches the database only through authentication, which the accounts
    tests prove on both backends; here SQLite keeps the suite fast."""
    return "sqlite"


@pytest.fixture
def gateway_factory(settings_factory: Callable[..., Settings]) -> GatewayFactory:
    """`async with gateway_factory([url, ...], **settings) as gateway:` (no caching unless
    `ollama_health_cache_seconds` is given)."""

    @asynccontextmanager
    async def make(urls: list[str], **overrides: Any) -> AsyncIterator[OllamaGateway]:
        values: dict[str, Any] = {"ollama_health_cache_seconds": 0.0, **overrides}
        async with gateway_scope(settings_factory(ollama_url=urls, **values)) as gateway:
            yield gateway

    return make


@pytest.fixture
async def second_emulator() -> AsyncIterator[OllamaEmulator]:
    config = EmulatorConfig(models=[ModelSpec.preset("llama3.2"), ModelSpec.preset("mistral")])
    async with running_emulator(config) as emulator:
        yield emulator


AppFactory = Callable[..., AbstractAsyncContextManager[tuple[FastAPI, httpx.AsyncClient]]]


@pytest.fixture
def gateway_app(
    app_factory: Callable[[Settings], Any], settings_factory: Callable[..., Settings]
) -> AppFactory:
    """`async with gateway_app([url, ...], **settings) as (app, client):` — the whole app
    (lifespan running) on SQLite, with an ASGI client."""

    @asynccontextmanager
    async def make(
        urls: list[str], **overrides: Any
    ) -> AsyncIterator[tuple[FastAPI, httpx.AsyncClient]]:
        app: FastAPI = await app_factory(settings_factory(ollama_url=urls, **overrides))
        async with asgi_client(app) as client:
            yield app, client

    return make
