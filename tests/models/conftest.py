"""Two emulator nodes behind a running app, with an admin and a regular user."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from ollama_web.core.config import Settings
from ollama_web.emulator import EmulatorConfig, ModelSpec, OllamaEmulator
from ollama_web.emulator.testing import running_emulator
from tests.conftest import asgi_client
from tests.fixtures.auth import TestUser, create_test_user


@pytest.fixture
def db_backend() -> str:
    """These routes touch the database only through authentication (proved on both
    backends by the accounts tests); SQLite keeps them fast."""
    return "sqlite"


@dataclass
class Cluster:
    app: FastAPI
    client: httpx.AsyncClient
    node_a: OllamaEmulator
    node_b: OllamaEmulator
    admin: TestUser
    user: TestUser


@pytest.fixture
async def node_a() -> AsyncIterator[OllamaEmulator]:
    models = [ModelSpec.preset("llama3.2"), ModelSpec.preset("qwen3")]
    async with running_emulator(EmulatorConfig(models=models)) as emulator:
        yield emulator


@pytest.fixture
async def node_b() -> AsyncIterator[OllamaEmulator]:
    models = [ModelSpec.preset("llama3.2"), ModelSpec.preset("mistral")]
    async with running_emulator(EmulatorConfig(models=models)) as emulator:
        yield emulator


@pytest.fixture
def cluster_settings() -> dict[str, Any]:
    """Settings overrides; a test module may override this fixture."""
    return {"ollama_health_cache_seconds": 0.0}


@pytest.fixture
async def cluster(
    app_factory: Callable[[Settings], Any],
    settings_factory: Callable[..., Settings],
    cluster_settings: dict[str, Any],
    node_a: OllamaEmulator,
    node_b: OllamaEmulator,
) -> AsyncIterator[Cluster]:
    settings = settings_factory(ollama_url=[node_a.url, node_b.url], **cluster_settings)
    app: FastAPI = await app_factory(settings)
    admin = await create_test_user(app, "admin")
    user = await create_test_user(app, "user")
    async with asgi_client(app) as client:
        yield Cluster(app, client, node_a, node_b, admin, user)
