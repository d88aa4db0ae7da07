"""Core fixtures: settings per database backend, the app with its lifespan, clients.

Every database test runs on SQLite and on PostgreSQL (`db_backend` is parametrised).
PostgreSQL comes from OLLAMA_WEB_TEST_PG_URL (set by scripts/test.sh); under CI=true it is
required, elsewhere its tests are skipped with a reason when it is not configured.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import uuid
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from ollama_web.app import create_app
from ollama_web.core.config import Settings
from ollama_web.core.logging import shutdown_logging

pytest_plugins = [
    "tests.fixtures.servers",
    "tests.fixtures.auth",
    "tests.fixtures.hangwatch",
    "tests.fixtures.loops",
]

PG_ADMIN_URL = os.environ.get("OLLAMA_WEB_TEST_PG_URL")


def _worker_redis(url: str | None) -> str | None:
    """Under pytest-xdist, each worker gets a Redis database of its own (`gw1` -> 2), so that
    no worker hears another's generation relay or counts its rate limits. PostgreSQL needs
    no such care: its databases are named after the process."""
    worker = os.environ.get("PYTEST_XDIST_WORKER", "")
    if url is None or not worker.startswith("gw"):
        return url
    base, _, _ = url.rpartition("/")
    return f"{base}/{int(worker[2:]) % 15 + 1}"


REDIS_URL = _worker_redis(os.environ.get("OLLAMA_WEB_TEST_REDIS_URL"))
# The CA of the test PostgreSQL's TLS certificate (scripts/services.sh makes it).
PG_CA = os.environ.get("OLLAMA_WEB_TEST_PG_CA")
IN_CI = os.environ.get("CI", "").lower() in {"1", "true", "yes"}
TEST_SECRET = "test-secret-0123456789abcdef0123456789abcdef"


@pytest.fixture(autouse=True)
def _workers_as_found(monkeypatch: pytest.MonkeyPatch) -> None:
    """`serve` sets WORKERS in its own environment, for the workers it starts: a test that
    calls it in-process must not hand that to the tests after it (their apps would count
    rate limits in a file, as several workers do)."""
    monkeypatch.delenv("WORKERS", raising=False)


def require_postgres() -> str:
    if PG_ADMIN_URL:
        return PG_ADMIN_URL
    if IN_CI:
        pytest.fail("CI=true but OLLAMA_WEB_TEST_PG_URL is not set: PostgreSQL is required")
    pytest.skip("PostgreSQL not configured (set OLLAMA_WEB_TEST_PG_URL; scripts/test.sh does)")


def require_postgres_ca() -> str:
    """The CA file that verifies the test PostgreSQL's certificate (127.0.0.1)."""
    require_postgres()
    if PG_CA:
        return PG_CA
    if IN_CI:
        pytest.fail("CI=true but OLLAMA_WEB_TEST_PG_CA is not set: PostgreSQL TLS is required")
    pytest.skip("PostgreSQL TLS not configured (set OLLAMA_WEB_TEST_PG_CA; scripts/test.sh does)")


def require_redis() -> str:
    if REDIS_URL:
        return REDIS_URL
    if IN_CI:
        pytest.fail("CI=true but OLLAMA_WEB_TEST_REDIS_URL is not set: Redis is required")
    pytest.skip("Redis not configured (set OLLAMA_WEB_TEST_REDIS_URL; scripts/test.sh does)")


def _pg_url(database: str) -> str:
    assert PG_ADMIN_URL is not None
    base, _, _ = PG_ADMIN_URL.rpartition("/")
    return f"{base}/{database}"


def _sync(coro: Coroutine[Any, Any, Any]) -> Any:
    """Run a coroutine to completion from sync code, even inside a running event loop."""
    with ThreadPoolExecutor(max_workers=1) as executor:
        return executor.submit(asyncio.run, coro).result()


async def _pg_admin(statements: list[str]) -> None:
    import asyncpg

    assert PG_ADMIN_URL is not None
    conn = await asyncpg.connect(PG_ADMIN_URL)
    try:
        for statement in statements:
            await conn.execute(statement)
    finally:
        await conn.close()


@pytest.fixture(scope="session")
def pg_template() -> Iterator[str]:
    """A migrated template database; each test clones it (fast) and drops its clone."""
    require_postgres()
    name = f"ow_template_{os.getpid()}"
    _sync(_pg_admin([f'DROP DATABASE IF EXISTS "{name}"', f'CREATE DATABASE "{name}"']))
    from ollama_web.migrations.runner import upgrade_settings

    settings = Settings(database_url=_pg_url(name), secret_key=TEST_SECRET)
    _sync(upgrade_settings(settings))
    yield name
    _sync(_pg_admin([f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)']))


@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from ollama_web.migrations.runner import upgrade_settings

    directory = tmp_path_factory.mktemp("sqlite-template")
    settings = Settings(data_dir=directory, secret_key=TEST_SECRET)
    _sync(upgrade_settings(settings))
    return directory / "ollama_web.db"


@pytest.fixture(params=["sqlite", "postgres"])
def db_backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture(scope="session")
def pg_shared_database(pg_template: str) -> Iterator[str]:
    """One migrated database per test session, emptied after each test (much faster than a
    clone per test); a test that leaves it unusable gets it re-cloned."""
    name = f"ow_shared_{os.getpid()}"
    _sync(
        _pg_admin(
            [
                f'DROP DATABASE IF EXISTS "{name}"',
                f'CREATE DATABASE "{name}" TEMPLATE "{pg_template}"',
            ]
        )
    )
    yield name
    _sync(_pg_admin([f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)']))


async def _pg_reset(name: str, template: str) -> None:
    import asyncpg

    from ollama_web.db import Base

    # DELETE, not TRUNCATE: a test leaves a few rows, which DELETE removes in ~1 ms, where
    # TRUNCATE makes new files for every table and index (~60 ms a test).
    tables = [table.name for table in reversed(Base.metadata.sorted_tables)]
    deletes = "; ".join(f'DELETE FROM "{table}"' for table in tables)  # noqa: S608 (ours)
    try:
        conn = await asyncpg.connect(_pg_url(name))
        try:
            await conn.execute("SET lock_timeout = '5s'")
            await conn.execute(deletes)
            return
        finally:
            await conn.close()
    except (asyncpg.PostgresError, OSError):
        pass
    await _pg_admin(
        [
            f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)',
            f'CREATE DATABASE "{name}" TEMPLATE "{template}"',
        ]
    )


@pytest.fixture
def database_url(
    db_backend: str, request: pytest.FixtureRequest, tmp_path: Path
) -> Iterator[str | None]:
    """None means the default SQLite file in DATA_DIR (pre-migrated from a template)."""
    if db_backend == "sqlite":
        template: Path = request.getfixturevalue("sqlite_template")
        (tmp_path / "data").mkdir(exist_ok=True)
        shutil.copyfile(template, tmp_path / "data" / "ollama_web.db")
        yield None
        return
    name: str = request.getfixturevalue("pg_shared_database")
    yield _pg_url(name)
    _sync(_pg_reset(name, request.getfixturevalue("pg_template")))


@pytest.fixture
def empty_pg_database() -> Iterator[str]:
    """A brand-new empty PostgreSQL database (for migration tests)."""
    require_postgres()
    name = f"ow_empty_{uuid.uuid4().hex[:12]}"
    _sync(_pg_admin([f'CREATE DATABASE "{name}"']))
    yield _pg_url(name)
    _sync(_pg_admin([f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)']))


@pytest.fixture
def settings_factory(tmp_path: Path) -> Callable[..., Settings]:
    """Settings isolated in tmp_path; keyword arguments override (as env vars would)."""

    def make(**overrides: Any) -> Settings:
        values: dict[str, Any] = {
            "secret_key": TEST_SECRET,
            "data_dir": tmp_path / "data",
            "log_dir": tmp_path / "logs",
            "backup_dir": tmp_path / "backups",
            "ollama_url": ["http://127.0.0.1:9"],
            "ollama_connect_timeout_seconds": 0.5,
            "ollama_list_timeout_seconds": 1.0,
            "backup_enabled": False,
            "rate_limit_enabled": False,
        }
        values.update(overrides)
        return Settings(_env_file=None, **values)  # type: ignore[call-arg]

    return make


@pytest.fixture
def settings(settings_factory: Callable[..., Settings], database_url: str | None) -> Settings:
    return settings_factory(database_url=database_url)


@pytest.fixture
async def app_factory(request: pytest.FixtureRequest) -> AsyncIterator[Callable[[Settings], Any]]:
    """Build an app and run its lifespan; everything is shut down at teardown."""
    if "database_url" in request.fixturenames:
        # Set up first, so that it ends last: the apps' lifespans end (their title writes,
        # say) before the database is emptied for the next test, not during it.
        request.getfixturevalue("database_url")
    stacks: list[Any] = []

    async def start(settings: Settings) -> FastAPI:
        app = create_app(settings)
        context = app.router.lifespan_context(app)
        await context.__aenter__()
        stacks.append(context)
        return app

    yield start
    for context in reversed(stacks):
        await context.__aexit__(None, None, None)
    shutdown_logging()


@pytest.fixture
async def app(app_factory: Callable[[Settings], Any], settings: Settings) -> FastAPI:
    application: FastAPI = await app_factory(settings)
    return application


def asgi_client(app: FastAPI, **kwargs: Any) -> httpx.AsyncClient:
    transport = httpx.ASGITransport(app=app, client=("127.0.0.1", 50000))
    return httpx.AsyncClient(transport=transport, base_url="http://testserver", **kwargs)


@pytest.fixture
async def client(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    async with asgi_client(app) as http:
        yield http
