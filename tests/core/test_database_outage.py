"""PostgreSQL out of reach while the server runs (through a forwarder that cuts the way to
it): requests answer 503 DATABASE_UNAVAILABLE within DATABASE_TIMEOUT_SECONDS, never a 500
nor an endless wait, and the server recovers by itself when the database is back."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy.engine import make_url

from ollama_web.core.config import Settings
from ollama_web.core.db import is_database_outage
from tests.conftest import asgi_client, require_postgres
from tests.fixtures.auth import create_test_user
from tests.fixtures.forwarder import Forwarder, Mode


@pytest.mark.postgres
@pytest.mark.parametrize("db_backend", ["postgres"])
@pytest.mark.parametrize("mode", ["refusing", "dark", "stalled"])
async def test_requests_answer_503_while_postgres_is_out_of_reach_then_recover(
    app_factory: Callable[[Settings], Any],
    settings_factory: Callable[..., Settings],
    database_url: str | None,
    mode: Mode,
) -> None:
    require_postgres()
    assert database_url is not None
    real = make_url(database_url)
    forwarder = Forwarder(real.port or 5432)
    try:
        through = real.set(host="127.0.0.1", port=await forwarder.start())
        settings = settings_factory(
            database_url=through.render_as_string(hide_password=False),
            database_timeout_seconds=1.0,
        )
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
    finally:
        await forwarder.close()
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


def test_an_os_error_outside_the_database_is_no_outage() -> None:
    """A full disk or a missing file in our own code stays a 500 (a bug or an operator's
    problem), not a "retry shortly"."""
    with pytest.raises(FileNotFoundError) as caught:
        (Path("/nonexistent") / "file").read_text()
    assert not is_database_outage(caught.value)
