"""Apps with rate limiting switched on (SQLite, pre-migrated from the session template), and
real server processes with it."""

from __future__ import annotations

import asyncio
import os
import random
import shutil
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import APIRouter, FastAPI

from ollama_web.core.config import Settings
from ollama_web.ratelimit.limiter import EXEMPT, rate_limit_group
from tests.conftest import TEST_SECRET
from tests.fixtures.ports import free_port

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


def fresh_client_address() -> str:
    """A client address no earlier run has used (the window outlives a test run)."""
    return f"10.{random.randrange(256)}.{random.randrange(256)}.{random.randrange(1, 255)}"


def start_server(
    tmp_path: Path, name: str, *, workers: int | None = None, **settings: str
) -> tuple[subprocess.Popen[str], str]:
    """A real server on SQLite in `tmp_path/name` (DATA_DIR and the others: `settings` can
    name others), 5 requests a minute, X-Forwarded-For believed from loopback; uvicorn
    itself, or `ollama-web serve --workers N`."""
    port = free_port()
    env = {
        **{k: v for k, v in os.environ.items() if k not in {"DATABASE_URL"}},
        "SECRET_KEY": TEST_SECRET,
        "DATA_DIR": str(tmp_path / name / "data"),
        "LOG_DIR": str(tmp_path / name / "logs"),
        "BACKUP_DIR": str(tmp_path / name / "backups"),
        "OLLAMA_URL": "http://127.0.0.1:9",
        "RATE_LIMIT_ENABLED": "true",
        "RATE_LIMIT_PER_MINUTE": "5",
        "TRUSTED_PROXIES": "127.0.0.1",
        "BACKUP_ENABLED": "false",
        **settings,
    }
    if workers is None:
        command = [
            sys.executable, "-m", "uvicorn", "ollama_web.main:app", "--host", "127.0.0.1",
            "--port", str(port), "--no-proxy-headers", "--log-level", "warning",
        ]  # fmt: skip
    else:
        command = [
            sys.executable, "-m", "ollama_web", "serve", "--host", "127.0.0.1",
            "--port", str(port), "--workers", str(workers),
        ]  # fmt: skip
    process = subprocess.Popen(command, env=env, cwd=tmp_path, stderr=subprocess.PIPE, text=True)
    return process, f"http://127.0.0.1:{port}"


async def wait_live(base_url: str, process: subprocess.Popen[str]) -> None:
    deadline = time.monotonic() + 30
    async with httpx.AsyncClient() as client:
        while time.monotonic() < deadline:
            assert process.poll() is None, process.communicate()[1]
            try:
                if (await client.get(f"{base_url}/health/live")).status_code == 200:
                    return
            except httpx.TransportError:
                await asyncio.sleep(0.05)
    raise AssertionError(f"{base_url} did not start")


async def two_servers_share_one_budget(tmp_path: Path, **settings: str) -> None:
    """Two real servers (`start_server`, with `settings`), 200 requests of one client
    address at once, in turn to each: exactly 5 pass, and both refuse some of the rest."""
    servers = [start_server(tmp_path, name, **settings) for name in ("one", "two")]
    try:
        for process, base_url in servers:
            await wait_live(base_url, process)
        headers = {"X-Forwarded-For": fresh_client_address()}
        limits = httpx.Limits(max_connections=200)
        async with httpx.AsyncClient(timeout=30, limits=limits) as client:
            responses = await asyncio.gather(
                *(client.get(f"{servers[i % 2][1]}/info", headers=headers) for i in range(200))
            )
    finally:
        for process, _ in servers:
            process.terminate()
        errors = [process.communicate(timeout=30)[1] for process, _ in servers]
    statuses = [response.status_code for response in responses]
    assert statuses.count(200) == 5, errors
    assert statuses.count(429) == 195
    assert {r.url.port for r in responses if r.status_code == 429} == {
        httpx.URL(base_url).port for _, base_url in servers
    }, "both servers refused requests from the one shared budget"
