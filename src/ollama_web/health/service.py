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
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncConnection

from ollama_web import __version__
from ollama_web.core.sqlite_inline import InlineUnavailable
from ollama_web.core.state import CoreState

HEALTHY, DEGRADED, UNHEALTHY = "healthy", "degraded", "unhealthy"
CHECK_TIMEOUT_SECONDS = 3.0
MIN_FREE_BYTES = 100 * 1024 * 1024  # below it, degraded
CRITICAL_FREE_BYTES = 16 * 1024 * 1024  # below it, unhealthy: writes are about to fail

HealthCheck = Callable[[], Awaitable[dict[str, Any]]]


def register_check(app: FastAPI, name: str, check: HealthCheck) -> None:
    checks: dict[str, HealthCheck] = getattr(app.state, "health_checks", None) or {}
    checks[name] = check
    app.state.health_checks = checks


async def check_database(core: CoreState) -> dict[str, Any]:
    """Bounded like the other checks: a server that accepts connections and never answers
    would otherwise hold /health and /health/ready for the driver's connect timeout (60 s)."""
    try:
        return await asyncio.wait_for(_database_state(core), CHECK_TIMEOUT_SECONDS)
    except TimeoutError:
        error = f"the database did not answer within {CHECK_TIMEOUT_SECONDS:g} s"
        return {"status": UNHEALTHY, "latency_ms": None, "error": error}


async def _database_state(core: CoreState) -> dict[str, Any]:
    started = time.perf_counter()
    try:
        async with core.engine.connect() as conn:
            read_only = await _read_only(conn)
        problem = "the database is read-only" if read_only else _write_problem(core)
    except Exception as exc:  # any driver failure means the database is unusable
        return {"status": UNHEALTHY, "latency_ms": None, "error": type(exc).__name__}
    latency = round((time.perf_counter() - started) * 1000, 2)
    report = {"status": HEALTHY, "latency_ms": latency, "backend": core.engine.dialect.name}
    if problem is not None:
        report.update(status=UNHEALTHY, error=problem)
    return report


async def _read_only(conn: AsyncConnection) -> bool:
    """On PostgreSQL, a standby or a read-only default: one statement, as cheap as SELECT 1."""
    if conn.dialect.name == "postgresql":
        return (await conn.execute(text("SHOW transaction_read_only"))).scalar() == "on"
    await conn.execute(text("SELECT 1"))
    return False


def _write_problem(core: CoreState) -> str | None:
    """Why the SQLite file cannot be written, or None. Reads succeed on a file SQLite opened
    read-only (permissions, a read-only mount) and on a full disk, and every write fails."""
    inline, database = core.inline, core.settings.sqlite_file
    if inline is None or database is None:
        return None
    free = _free_bytes(database.parent)
    if free < CRITICAL_FREE_BYTES:
        return f"no space left for the database ({free} bytes free)"
    try:
        inline.probe_write()
    except InlineUnavailable:
        return None  # another writer holds the lock (or we are shutting down): no news
    except DBAPIError as exc:
        return f"cannot write: {exc.orig}"
    return None


def _free_bytes(path: Path) -> int:
    try:
        return shutil.disk_usage(path).free
    except OSError:
        return 0


def _directory_state(path: Path, free: int | None = None) -> dict[str, Any]:
    """Writable, and low on space (under MIN_FREE_BYTES free: logs or backups about to be
    lost). No path: /health is public, and the server's layout is nobody else's business."""
    return {
        "writable": path.is_dir() and os.access(path, os.W_OK | os.X_OK),
        "low_on_space": (_free_bytes(path) if free is None else free) < MIN_FREE_BYTES,
    }


def check_filesystem(core: CoreState) -> dict[str, Any]:
    settings = core.settings
    free = _free_bytes(settings.data_dir)
    directories = {
        "data": _directory_state(settings.data_dir, free),
        "logs": _directory_state(settings.log_dir),
        "backups": _directory_state(settings.backup_dir),
    }
    all_usable = all(
        entry["writable"] and not entry["low_on_space"] for entry in directories.values()
    )
    status = HEALTHY
    # Almost no space is fatal where the database lives (SQLite); with PostgreSQL, DATA_DIR
    # holds only the key and locks: logs and backups suffer, requests do not.
    database_here = settings.is_sqlite
    if not directories["data"]["writable"] or (database_here and free < CRITICAL_FREE_BYTES):
        status = UNHEALTHY
    elif not all_usable:  # DATA_DIR's free space included (its low_on_space)
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
