"""Health, readiness, info, and offline docs."""

from __future__ import annotations

import asyncio
import os
import shutil
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import make_url

from ollama_web.core.config import Settings
from ollama_web.health import service
from tests.conftest import _pg_admin, asgi_client, require_postgres
from tests.fixtures.forwarder import Forwarder
from tests.fixtures.ports import free_port
from tests.fixtures.privileges import unprivileged


async def test_health_reports_components(client: httpx.AsyncClient, settings: Settings) -> None:
    response = await client.get("/health")
    assert response.status_code == 200
    body = response.json()
    assert body["status"] in {"healthy", "degraded"}
    assert body["components"]["database"]["status"] == "healthy"
    assert body["components"]["database"]["latency_ms"] >= 0
    filesystem = body["components"]["filesystem"]
    assert filesystem["status"] == "healthy"
    assert filesystem["free_bytes"] > 0
    assert filesystem["directories"] == {
        "data": {"writable": True, "low_on_space": False},
        "logs": {"writable": True, "low_on_space": False},
        "backups": {"writable": True, "low_on_space": False},
    }
    assert str(settings.data_dir.parent) not in response.text, "a public page shows no paths"
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


@pytest.mark.slow
def test_a_read_only_database_file_is_refused_at_start(
    tmp_path: Path, sqlite_template: Path
) -> None:
    """A 0444 database: the server used to start and answer every write 503 "try again
    shortly" (and SQLite made its -wal and -shm 0444 too, which kept it read-only after the
    file was fixed). Now the start refuses it in one line, exit 78."""
    (tmp_path / "data").mkdir()
    database = tmp_path / "data" / "ollama_web.db"
    shutil.copyfile(sqlite_template, database)
    database.chmod(0o444)
    env = {
        **{k: v for k, v in os.environ.items() if k not in {"SECRET_KEY", "DATABASE_URL"}},
        "DATA_DIR": str(tmp_path / "data"),
        "LOG_DIR": str(tmp_path / "logs"),
        "BACKUP_DIR": str(tmp_path / "backups"),
        "BACKUP_ENABLED": "false",
        "OLLAMA_URL": f"http://127.0.0.1:{free_port()}",
    }
    command = [sys.executable, "-m", "ollama_web", "serve", "--host", "127.0.0.1"]
    result = subprocess.run(
        [*unprivileged(), *command, "--port", str(free_port())],
        env=env, cwd=tmp_path, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert result.returncode == 78, result.stderr
    assert result.stderr.startswith(f"error: cannot use {database}: "), result.stderr
    assert "mode 0444" in result.stderr
    assert not (tmp_path / "data" / "ollama_web.db-wal").exists()


@pytest.mark.parametrize("db_backend", ["sqlite"])
async def test_a_database_that_turned_read_only_is_unhealthy_and_not_ready(
    client: httpx.AsyncClient, app: FastAPI
) -> None:
    """Reads work on a SQLite database that can no longer be written (a filesystem
    remounted read-only after an I/O error: SELECT 1 said healthy), writes do not. Here the
    server's own connection is made read-only by SQLite's `query_only`."""
    inline = app.state.core.inline
    inline._connection.execute("PRAGMA query_only = ON")
    try:
        health = await client.get("/health")
        ready = await client.get("/health/ready")
    finally:
        inline._connection.execute("PRAGMA query_only = OFF")
    assert health.status_code == 503
    body = health.json()
    assert body["status"] == "unhealthy"
    assert body["components"]["database"]["status"] == "unhealthy"
    assert "readonly" in body["components"]["database"]["error"]
    assert ready.status_code == 503
    assert ready.json()["status"] == "not_ready"


def _pretend_free_bytes(monkeypatch: pytest.MonkeyPatch, free: int) -> None:
    monkeypatch.setattr(shutil, "disk_usage", lambda _path: SimpleNamespace(free=free))


@pytest.mark.parametrize("db_backend", ["sqlite"])
async def test_almost_no_free_space_is_unhealthy_and_not_ready(
    client: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A full disk: reads (and SELECT 1) still work, every write fails."""
    _pretend_free_bytes(monkeypatch, service.CRITICAL_FREE_BYTES - 1)
    health = await client.get("/health")
    assert health.status_code == 503
    components = health.json()["components"]
    assert components["filesystem"]["status"] == "unhealthy"
    assert components["database"]["status"] == "unhealthy"
    assert "no space left" in components["database"]["error"]
    ready = await client.get("/health/ready")
    assert (ready.status_code, ready.json()["status"]) == (503, "not_ready")


@pytest.mark.parametrize("db_backend", ["postgres"])
async def test_almost_no_space_in_data_dir_only_degrades_a_postgresql_server(
    client: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    """DATA_DIR holds only the key and locks then: the database answers, writes work."""
    _pretend_free_bytes(monkeypatch, service.CRITICAL_FREE_BYTES - 1)
    health = await client.get("/health")
    assert health.status_code == 200
    components = health.json()["components"]
    assert components["filesystem"]["status"] == "degraded"
    assert components["database"]["status"] == "healthy"
    assert (await client.get("/health/ready")).status_code == 200


async def test_low_free_space_is_only_degraded(
    client: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    _pretend_free_bytes(monkeypatch, service.CRITICAL_FREE_BYTES + 1)
    health = await client.get("/health")
    assert health.status_code == 200
    components = health.json()["components"]
    assert components["filesystem"]["status"] == "degraded"
    assert components["database"]["status"] == "healthy"


async def test_a_full_log_or_backup_directory_degrades_the_filesystem(
    client: httpx.AsyncClient, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """LOG_DIR or BACKUP_DIR on a disk of their own that fills up: log lines or backups are
    being lost while DATA_DIR has room; /health said healthy."""
    real = shutil.disk_usage
    for full in (settings.log_dir, settings.backup_dir):
        monkeypatch.setattr(
            shutil,
            "disk_usage",
            lambda path, full=full: SimpleNamespace(free=0) if path == full else real(path),
        )
        answer = (await client.get("/health")).json()
        assert "components" in answer, answer
        filesystem = answer["components"]["filesystem"]
        assert filesystem["status"] == "degraded", full
        low = {name for name, entry in filesystem["directories"].items() if entry["low_on_space"]}
        assert low == ({"logs"} if full == settings.log_dir else {"backups"})


@pytest.mark.parametrize("db_backend", ["sqlite"])
async def test_database_locked_by_a_writer_is_healthy_without_waiting(
    client: httpx.AsyncClient, settings: Settings
) -> None:
    """The write probe never waits for the lock, and a held lock is no failure."""
    writer = sqlite3.connect(settings.data_dir / "ollama_web.db", isolation_level=None)
    try:
        writer.execute("BEGIN IMMEDIATE")
        started = time.monotonic()
        ready = await client.get("/health/ready")
        health = await client.get("/health")
        elapsed = time.monotonic() - started
        writer.execute("ROLLBACK")
    finally:
        writer.close()
    assert elapsed < 3.0  # not the 5 s busy timeout
    assert (ready.status_code, ready.json()["status"]) == (200, "ready")
    assert health.json()["components"]["database"]["status"] == "healthy"


@pytest.mark.postgres
@pytest.mark.parametrize("db_backend", ["postgres"])
async def test_read_only_postgres_is_unhealthy_and_not_ready(
    app: FastAPI, client: httpx.AsyncClient, settings: Settings
) -> None:
    """A standby, or default_transaction_read_only: connections work, writes fail."""
    require_postgres()
    assert settings.database_url is not None
    name = settings.database_url.rpartition("/")[2]
    engine = app.state.core.engine
    await _pg_admin([f'ALTER DATABASE "{name}" SET default_transaction_read_only = on'])
    try:
        await engine.dispose()  # pooled connections keep the default they started with
        ready = await client.get("/health/ready")
        health = await client.get("/health")
    finally:
        await _pg_admin([f'ALTER DATABASE "{name}" RESET default_transaction_read_only'])
        await engine.dispose()
    assert (ready.status_code, ready.json()["status"]) == (503, "not_ready")
    assert ready.json()["database"]["error"] == "the database is read-only"
    assert health.status_code == 503


@pytest.mark.postgres
@pytest.mark.parametrize("db_backend", ["postgres"])
async def test_database_that_never_answers_is_unhealthy_within_the_bound(
    app_factory: Callable[[Settings], Any],
    settings_factory: Callable[..., Settings],
    database_url: str | None,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    require_postgres()
    assert database_url is not None
    monkeypatch.setattr(service, "CHECK_TIMEOUT_SECONDS", 0.5)
    real = make_url(database_url)
    forwarder = Forwarder(real.port or 5432)
    try:
        through = real.set(host="127.0.0.1", port=await forwarder.start())
        settings = settings_factory(database_url=through.render_as_string(hide_password=False))
        app = await app_factory(settings)
        async with asgi_client(app) as client:
            assert (await client.get("/health/ready")).status_code == 200
            forwarder.cut("dark")
            started = time.monotonic()
            ready = await asyncio.wait_for(client.get("/health/ready"), 10)
            health = await asyncio.wait_for(client.get("/health"), 10)
            elapsed = time.monotonic() - started
    finally:
        await forwarder.close()
    assert elapsed < 3
    assert (ready.status_code, ready.json()["status"]) == (503, "not_ready")
    assert ready.json()["database"]["error"] == "the database did not answer within 0.5 s"
    assert health.status_code == 503
    database = health.json()["components"]["database"]
    assert database["status"] == "unhealthy"
    assert "did not answer" in database["error"]
