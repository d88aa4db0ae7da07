"""The embedded database engine: how pooled SQLite connections are reset."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from sqlalchemy import text

from ollama_web.core.config import Settings
from ollama_web.core.db import create_engine


async def test_sqlite_connections_are_rolled_back_on_return_only_when_needed(
    settings_factory: Callable[..., Settings],
) -> None:
    engine, _ = create_engine(settings_factory())
    async with engine.connect():  # the first connect initialises the dialect (and rolls back)
        pass
    rollbacks: list[object] = []
    do_rollback = engine.dialect.do_rollback

    def counting(dbapi_connection: Any) -> None:
        rollbacks.append(dbapi_connection)
        do_rollback(dbapi_connection)

    engine.dialect.do_rollback = counting  # type: ignore[method-assign]
    try:
        async with engine.begin() as connection:
            await connection.execute(text("CREATE TABLE t (x INTEGER)"))
        async with engine.begin() as connection:
            await connection.execute(text("INSERT INTO t VALUES (1)"))
        assert rollbacks == []  # committed: nothing to roll back, no extra trip

        # A transaction the Connection does not know of (raw driver use) is still undone.
        async with engine.connect() as connection:
            raw: Any = await connection.get_raw_connection()
            driver = raw.driver_connection
            await driver.execute("INSERT INTO t VALUES (2)")
            assert driver.in_transaction
        async with engine.connect() as connection:
            raw = await connection.get_raw_connection()
            assert not raw.driver_connection.in_transaction
            values = (await connection.execute(text("SELECT x FROM t ORDER BY x"))).scalars()
            assert list(values) == [1]
    finally:
        await engine.dispose()
