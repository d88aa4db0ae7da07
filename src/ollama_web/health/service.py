"""Component checks and the overall status.

Domains add checks with `register_check(app, name, check)` in their lifespan; a check returns
a dict with at least `status` ("healthy" | "degraded" | "unhealthy") and must not hang (it
is also bounded here by CHECK_TIMEOUT_SECONDS).
"""

from __future__ import annotations

import asyncio
import os
import shutil
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from fastapi import FastAPI
from sqlalchemy import text

from ollama_web import __version__
from ollama_web.core.state import CoreState

HEALTHY, DEGRADED, UNHEALTHY = "healthy", "degraded", "unhealthy"
CHECK_TIMEOUT_SECONDS = 3.0
MIN_FREE_BYTES = 100 * 1024 * 1024

HealthCheck = Callable[[], Awaitable[dict[str, Any]]]


def register_check(app: FastAPI, name: str, check: HealthCheck) -> None:
    checks: dict[str, HealthCheck] = getattr(app.state, "health_checks", None) or {}
    checks[name] = check
    app.state.health_checks = checks


async def check_database(core: CoreState) -> dict[str, Any]:
    started = time.perf_counter()
    try:
        async with core.engine.connect() as conn:
            await conn.execute(text("SELECT 1"))
    except Exception as exc:  # any driver failure means the database is unusable
        return {"status": UNHEALTHY, "latency_ms": None, "error": type(exc).__name__}
    latency = round((time.perf_counter() - started) * 1000, 2)
    return {"status": HEALTHY, "latency_ms": latency, "backend": core.engine.dialect.name}


def _directory_state(path: Path) -> dict[str, Any]:
    writable = path.is_dir() and os.access(path, os.W_OK | os.X_OK)
    return {"path": str(path), "writable": writable}


def check_filesystem(core: CoreState) -> dict[str, Any]:
    settings = core.settings
    directories = {
        "data": _directory_state(settings.data_dir),
        "logs": _directory_state(settings.log_dir),
        "backups": _directory_state(settings.backup_dir),
    }
    try:
        free = shutil.disk_usage(settings.data_dir).free
    except OSError:
        free = 0
    all_writable = all(entry["writable"] for entry in directories.values())
    status = HEALTHY
    if not directories["data"]["writable"]:
        status = UNHEALTHY
    elif not all_writable or free < MIN_FREE_BYTES:
        status = DEGRADED
    return {"status": status, "free_bytes": free, "directories": directories}


async def _bounded(check: HealthCheck) -> dict[str, Any]:
    try:
        return await asyncio.wait_for(check(), CHECK_TIMEOUT_SECONDS)
    except TimeoutError:
        return {"status": UNHEALTHY, "error": "health check timed out"}


def overall_status(components: dict[str, dict[str, Any]]) -> str:
    if components["database"]["status"] == UNHEALTHY:
        return UNHEALTHY
    if components["filesystem"]["status"] == UNHEALTHY:
        return UNHEALTHY
    if any(c.get("status") != HEALTHY for c in components.values()):
        return DEGRADED
    return HEALTHY


async def health_report(app: FastAPI, core: CoreState) -> dict[str, Any]:
    extra: dict[str, HealthCheck] = getattr(app.state, "health_checks", None) or {}
    names = list(extra)
    results = await asyncio.gather(check_database(core), *(_bounded(extra[n]) for n in names))
    components: dict[str, dict[str, Any]] = {
        "database": results[0],
        "filesystem": check_filesystem(core),
    }
    components.update(zip(names, results[1:], strict=True))
    return {
        "status": overall_status(components),
        "version": __version__,
        "uptime_seconds": round(core.uptime_seconds, 3),
        "components": components,
    }
