"""Apps with rate limiting switched on (SQLite, pre-migrated from the session template)."""

from __future__ import annotations

import shutil
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from fastapi import APIRouter, FastAPI

from ollama_web.core.config import Settings
from ollama_web.ratelimit.limiter import EXEMPT, rate_limit_group

LimitedApp = Callable[..., Awaitable[FastAPI]]

probe_router = APIRouter()


@probe_router.get("/api/chat/probe")
async def chat_probe() -> dict[str, str]:
    return {"group": "chat"}


@probe_router.post("/api/auth/login-probe")
@rate_limit_group("auth")
async def auth_probe() -> dict[str, str]:
    return {"group": "auth"}


@probe_router.get("/api/unlimited-probe")
@rate_limit_group(EXEMPT)
async def exempt_probe() -> dict[str, str]:
    return {"group": "exempt"}


@pytest.fixture
def limited_app(
    app_factory: Callable[[Settings], Awaitable[FastAPI]],
    settings_factory: Callable[..., Settings],
    sqlite_template: Path,
    tmp_path: Path,
) -> LimitedApp:
    """`await limited_app(**settings)`: an app with RATE_LIMIT_ENABLED and the probe routes."""

    async def make(**overrides: Any) -> FastAPI:
        data_dir = tmp_path / "data"
        data_dir.mkdir(exist_ok=True)
        shutil.copyfile(sqlite_template, data_dir / "ollama_web.db")
        values: dict[str, Any] = {"rate_limit_enabled": True, **overrides}
        app = await app_factory(settings_factory(**values))
        app.include_router(probe_router)
        return app

    return make
