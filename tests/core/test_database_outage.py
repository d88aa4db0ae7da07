"""PostgreSQL out of reach while the server runs (through a forwarder that cuts the way to
it): requests answer 503 DATABASE_UNAVAILABLE within DATABASE_TIMEOUT_SECONDS, never a 500
nor an endless wait, and the server recovers by itself when the database is back."""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import text
from sqlalchemy.engine import make_url
from sqlalchemy.pool import NullPool

from ollama_web.core.config import Settings
from ollama_web.core.db import is_database_outage
from ollama_web.emulator import OllamaEmulator
from tests.chat.conftest import EventReader, chat_body, stored_conversation, text_of
from tests.conftest import asgi_client, require_postgres
from tests.fixtures.auth import create_test_user
from tests.fixtures.forwarder import Forwarder, Mode


@pytest.fixture
async def forwarded(database_url: str | None) -> AsyncIterator[tuple[Forwarder, str]]:
    """The test's PostgreSQL database reached through a Forwarder that can cut the way to
    it: the forwarder and the DATABASE_URL that goes through it."""
    require_postgres()
    assert database_url is not None
    real = make_url(database_url)
    forwarder = Forwarder(real.port or 5432)
    through = real.set(host="127.0.0.1", port=await forwarder.start())
    try:
        yield forwarder, through.render_as_string(hide_password=False)
    finally:
        await forwarder.close()


@pytest.mark.postgres
@pytest.mark.parametrize("db_backend", ["postgres"])
@pytest.mark.parametrize("mode", ["refusing", "dark", "stalled"])
async def test_requests_answer_503_while_postgres_is_out_of_reach_then_recover(
    app_factory: Callable[[Settings], Any],
    settings_factory: Callable[..., Settings],
    forwarded: tuple[Forwarder, str],
    mode: Mode,
) -> None:
    forwarder, url = forwarded
    settings = settings_factory(database_url=url, database_timeout_seconds=1.0)
    app = await app_factory(settings)
    user = await create_test_user(app)
    async with asgi_client(app) as client:
        assert (await client.get("/api/conversations", headers=user.headers)).is_success
        forwarder.cut(mode)
        started = time.monotonic()
        refused = await client.get("/api/conversations", headers=user.headers)
        elapsed = time.monotonic() - started
        forwarder.cut("open")
        recovered = await client.get("/api/conversations", headers=user.headers)
    assert refused.status_code == 503, refused.text
    body = refused.json()
    assert set(body) == {"error", "message", "details", "request_id"}
    assert body["error"] == "DATABASE_UNAVAILABLE"
    assert refused.headers["retry-after"] == "5"
    assert elapsed < 4.0  # the pool's ping and a new connection, each bounded by 1 s
    assert recovered.status_code == 200, recovered.text
    errors = (settings.log_dir / "error.log").read_text()
    assert (
        f"database unavailable on GET /api/conversations [request_id={body['request_id']}]"
        in errors
    )
    assert "Traceback" not in errors


@pytest.mark.postgres
@pytest.mark.parametrize("db_backend", ["postgres"])
async def test_an_answer_that_ends_while_postgres_is_away_is_stored_when_it_returns(
    app_factory: Callable[[Settings], Any],
    settings_factory: Callable[..., Settings],
    forwarded: tuple[Forwarder, str],
    live_server: Callable[[FastAPI], Any],
    ollama_emulator: OllamaEmulator,
) -> None:
    """The database goes away after the first token and comes back after the answer ended
    (a restart, a failover): the whole answer is stored, not its last checkpoint, and the
    client's `done` comes once it is."""
    forwarder, url = forwarded
    ollama_emulator.config.reply_tokens = 30
    ollama_emulator.config.tokens_per_second = 30
    settings = settings_factory(
        database_url=url, database_timeout_seconds=1.0, ollama_url=[ollama_emulator.url]
    )
    app = await app_factory(settings)
    user = await create_test_user(app)
    async with (
        live_server(app) as base_url,
        httpx.AsyncClient(base_url=base_url, timeout=30) as client,
        client.stream(
            "POST", "/api/chat/stream", json=chat_body(), headers=user.headers
        ) as response,
    ):
        reader = EventReader(response)
        start, first = await reader.next(), await reader.next()
        assert first.event == "token"
        forwarder.cut("refusing")
        loop = asyncio.get_running_loop()
        loop.call_later(2.0, forwarder.cut, "open")  # after the answer's last token
        events = [start, first, *(await reader.rest())]
        async with asgi_client(app) as api:
            stored = await stored_conversation(api, user, start.data["conversation_id"])
    assert events[-1].event == "done", events[-1]
    answer = stored["messages"][-1]
    assert answer["status"] == "complete"
    assert answer["content"] == text_of(events) == events[-1].data["message"]["content"]
    assert len(text_of(events)) > 0


def test_an_os_error_outside_the_database_is_no_outage() -> None:
    """A full disk or a missing file in our own code stays a 500 (a bug or an operator's
    problem), not a "retry shortly"."""
    with pytest.raises(FileNotFoundError) as caught:
        (Path("/nonexistent") / "file").read_text()
    assert not is_database_outage(caught.value)


def test_on_sqlite_only_a_file_it_cannot_use_now_is_an_outage(tmp_path: Path) -> None:
    """SQLite raises OperationalError for a wrong statement too: a bug stays a 500, a
    locked (or full, read-only) file is the 503."""
    from sqlalchemy import create_engine as create_sync_engine
    from sqlalchemy.exc import OperationalError

    engine = create_sync_engine(
        f"sqlite:///{tmp_path / 'x.db'}", connect_args={"timeout": 0}, poolclass=NullPool
    )
    holder = sqlite3.connect(tmp_path / "x.db", isolation_level=None)
    try:
        with engine.connect() as connection, pytest.raises(OperationalError) as wrong:
            connection.execute(text("SELECT * FROM no_such_table"))
        assert not is_database_outage(wrong.value)
        holder.execute("BEGIN EXCLUSIVE")
        with engine.connect() as connection, pytest.raises(OperationalError) as locked:
            connection.execute(text("CREATE TABLE t (x INTEGER)"))
        assert "locked" in str(locked.value)
        assert is_database_outage(locked.value)
    finally:
        holder.close()
        engine.dispose()
