"""An app with metrics on, probe routes, and helpers to read the Prometheus exposition."""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from fastapi import APIRouter, FastAPI
from prometheus_client.parser import text_string_to_metric_families

from ollama_web.core.config import Settings

MetricsApp = Callable[..., Awaitable[FastAPI]]
METRICS_TOKEN = "metrics-token-0123456789abcdef0123456789"

probe_router = APIRouter()


@probe_router.get("/probe/items/{item_id}")
async def probe_item(item_id: str) -> dict[str, str]:
    return {"item_id": item_id}


@probe_router.get("/probe/slow")
async def probe_slow() -> dict[str, bool]:
    await asyncio.sleep(0.03)
    return {"slow": True}


@pytest.fixture
def metrics_app(
    app_factory: Callable[[Settings], Awaitable[FastAPI]],
    settings_factory: Callable[..., Settings],
    sqlite_template: Path,
    tmp_path: Path,
) -> MetricsApp:
    async def make(**overrides: Any) -> FastAPI:
        data_dir = tmp_path / "data"
        data_dir.mkdir(exist_ok=True)
        shutil.copyfile(sqlite_template, data_dir / "ollama_web.db")
        app = await app_factory(settings_factory(metrics_token=METRICS_TOKEN, **overrides))
        app.include_router(probe_router)
        return app

    return make


def sample_value(exposition: str, name: str, **labels: str) -> float:
    """The value of one sample (0.0 when it does not exist yet)."""
    for family in text_string_to_metric_families(exposition):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return float(sample.value)
    return 0.0
