"""The embedded database engine: one trip per statement, and how pooled SQLite connections
are reset."""

from __future__ import annotations

import asyncio
import os
import stat
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import aiosqlite
import pytest
from fastapi import FastAPI
from sqlalchemy import event, text
from sqlalchemy.exc import IntegrityError, StatementError
from sqlalchemy.ext.asyncio import AsyncSession

from ollama_web.conversations.writes import Writes
from ollama_web.core.config import Settings
from ollama_web.core.db import (
    create_engine,
    create_null_pool_engine,
    create_sessionmaker,
    flush_owned,
    is_foreign_key_violation,
    session_scope,
)
from ollama_web.core.errors import AccountGoneError
from ollama_web.db import Conversation, User
from ollama_web.db.base import new_id
from tests.conftest import require_postgres, require_postgres_ca
from tests.fixtures.auth import TestUser


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


async def test_sqlite_statements_take_one_trip_to_the_driver_thread(
    settings_factory: Callable[..., Settings], monkeypatch: pytest.MonkeyPatch
) -> None:
    engine, _ = create_engine(settings_factory())
    trips: list[str] = []
    execute = aiosqlite.Connection._execute

    async def counting(self: aiosqlite.Connection, fn: Any, *args: Any, **kwargs: Any) -> Any:
        trips.append(getattr(fn, "__name__", repr(fn)))
        return await execute(self, fn, *args, **kwargs)

    try:
        async with engine.begin() as connection:
            await connection.execute(text("CREATE TABLE t (id INTEGER PRIMARY KEY, x TEXT)"))
        monkeypatch.setattr(aiosqlite.Connection, "_execute", counting)
        async with engine.begin() as connection:
            inserted = await connection.execute(text("INSERT INTO t (x) VALUES ('a')"))
            assert inserted.lastrowid == 1
            many = await connection.execute(
                text("INSERT INTO t (x) VALUES (:x)"), [{"x": "b"}, {"x": "<script>"}]
            )
            assert many.rowcount == 2
            updated = await connection.execute(text("UPDATE t SET x = x || '!' WHERE id > 1"))
            assert updated.rowcount == 2
            rows = await connection.execute(text("SELECT id, x FROM t ORDER BY id"))
            assert list(rows.keys()) == ["id", "x"]
            assert rows.all() == [(1, "a"), (2, "b!"), (3, "<script>!")]
            empty = await connection.execute(text("SELECT x FROM t WHERE id = :id"), {"id": 9})
            assert empty.first() is None
        assert trips == ["_run"] * 5 + ["commit"]

        trips.clear()
        async with engine.begin() as connection:  # read-only: nothing to commit
            assert (await connection.execute(text("SELECT count(*) FROM t"))).scalar() == 3
        assert trips == ["_run"]

        with pytest.raises(IntegrityError):  # errors still come out as SQLAlchemy's
            async with engine.begin() as connection:
                await connection.execute(text("INSERT INTO t (id, x) VALUES (1, 'again')"))

        async with engine.connect() as connection:  # server-side cursors are unchanged
            streamed = await connection.stream(text("SELECT x FROM t ORDER BY id"))
            assert [row.x async for row in streamed] == ["a", "b!", "<script>!"]
    finally:
        await engine.dispose()


async def test_sqlite_connections_are_kept_and_the_last_used_is_reused(
    settings_factory: Callable[..., Settings],
) -> None:
    """Opening a SQLite connection is a thread and four PRAGMAs: after a burst of 12 at
    once, all are kept, and a lone request takes the one used last (its cache is warm)."""
    engine, _ = create_engine(settings_factory())
    opened: list[object] = []
    event.listen(engine.sync_engine, "connect", lambda connection, _: opened.append(connection))
    try:
        held = [await engine.connect() for _ in range(12)]
        for connection in held:
            await connection.execute(text("SELECT 1"))
        last = (await held[-1].get_raw_connection()).driver_connection
        for connection in held:
            await connection.close()
        async with engine.connect() as connection:
            assert (await connection.get_raw_connection()).driver_connection is last
        for _ in range(3):
            await asyncio.gather(*(_select_one(engine) for _ in range(12)))
        assert len(opened) == 12
    finally:
        await engine.dispose()


async def _select_one(engine: Any) -> None:
    async with engine.connect() as connection:
        await connection.execute(text("SELECT 1"))


async def test_a_writes_transaction_commits_with_its_last_statement(
    settings_factory: Callable[..., Settings], monkeypatch: pytest.MonkeyPatch
) -> None:
    engine, _ = create_engine(settings_factory())
    writes = Writes(engine)
    trips: list[str] = []
    execute = aiosqlite.Connection._execute

    async def counting(self: aiosqlite.Connection, fn: Any, *args: Any, **kwargs: Any) -> Any:
        trips.append(getattr(fn, "__name__", repr(fn)))
        return await execute(self, fn, *args, **kwargs)

    insert = text("INSERT INTO t (id, x) VALUES (:id, :x)")
    try:
        async with engine.begin() as connection:
            await connection.execute(text("CREATE TABLE t (id INTEGER PRIMARY KEY, x TEXT)"))
        monkeypatch.setattr(aiosqlite.Connection, "_execute", counting)
        await writes.run([(insert, {"id": 1, "x": "a"}), (insert, [{"id": 2, "x": "b"}])])
        assert trips == ["_run", "_run"]  # no trip of its own for the commit

        with pytest.raises(IntegrityError):  # the last statement fails: nothing is kept
            await writes.run([(insert, {"id": 3, "x": "c"}), (insert, {"id": 1, "x": "dup"})])
        with pytest.raises(StatementError):  # fails before the driver: the request stays set
            await writes.run([(insert, {"id": 3, "x": "c"}), (insert, {"id": 5})])

        async def failing_pair() -> None:
            async with engine.begin() as connection:
                await connection.execute(insert, {"id": 4, "x": "d"})
                await connection.execute(insert, {"id": 2, "x": "dup"})

        with pytest.raises(IntegrityError):  # on the same (last used) connection: all or nothing
            await failing_pair()
        async with engine.connect() as connection:
            rows = await connection.execute(text("SELECT id, x FROM t ORDER BY id"))
            assert rows.all() == [(1, "a"), (2, "b")]
    finally:
        await engine.dispose()


async def test_closing_writes_waits_for_the_group_commit_in_progress(
    settings_factory: Callable[..., Settings],
) -> None:
    """A connection still checked out when the engine is disposed is never closed (and
    aiosqlite warns when it is collected): shutdown lets the group commit end first."""
    engine, _ = create_engine(settings_factory())
    writes = Writes(engine)
    pool: Any = engine.sync_engine.pool
    try:
        async with engine.begin() as connection:
            await connection.execute(text("CREATE TABLE t (id INTEGER PRIMARY KEY, x TEXT)"))
        insert = text("INSERT INTO t (id, x) VALUES (:id, :x)")
        writing = asyncio.ensure_future(writes.grouped(insert, {"id": 1, "x": "a"}))
        for _ in range(100):
            if pool.checkedout():
                break
            await asyncio.sleep(0)
        assert pool.checkedout() == 1  # the group commit is under way
        await writes.aclose()
        assert pool.checkedout() == 0
        assert writing.done()
    finally:
        await engine.dispose()


async def test_a_request_session_commits_and_closes_only_when_there_is_something_to(
    settings_factory: Callable[..., Settings], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Commit, roll back and close as before, except that a session that never ran a
    statement nor held an object skips them (each is a trip into SQLAlchemy's greenlet)."""
    engine, _ = create_engine(settings_factory())
    sessionmaker = create_sessionmaker(engine)
    calls: list[str] = []
    for name in ("commit", "close", "rollback"):
        original = getattr(AsyncSession, name)

        async def recorded(
            self: AsyncSession, _name: str = name, _original: Any = original
        ) -> None:
            calls.append(_name)
            await _original(self)

        monkeypatch.setattr(AsyncSession, name, recorded)
    try:
        async with engine.begin() as connection:
            await connection.execute(text("CREATE TABLE t (id INTEGER PRIMARY KEY, x TEXT)"))
        async with session_scope(sessionmaker):
            pass
        assert calls == []

        async with session_scope(sessionmaker) as session:
            await session.execute(text("INSERT INTO t (x) VALUES ('kept')"))
        assert calls == ["commit"]  # it gave its connection back; it holds no object
        assert engine.sync_engine.pool.checkedout() == 0  # type: ignore[attr-defined]

        calls.clear()
        with pytest.raises(RuntimeError, match="boom"):
            await _insert_then_fail(sessionmaker)
        assert calls == ["rollback", "close"]

        async with session_scope(sessionmaker) as session:
            assert (await session.execute(text("SELECT x FROM t"))).scalars().all() == ["kept"]
    finally:
        await engine.dispose()


async def _insert_then_fail(sessionmaker: Any) -> None:
    async with session_scope(sessionmaker) as session:
        await session.execute(text("INSERT INTO t (x) VALUES ('undone')"))
        raise RuntimeError("boom")


@pytest.mark.parametrize("sslmode", ["disable", "prefer"])
async def test_postgres_url_with_libpq_sslmode_connects(
    settings_factory: Callable[..., Settings], sslmode: str
) -> None:
    """Managed PostgreSQL providers give URLs with `?sslmode=`; asyncpg takes it as `ssl`."""
    settings = settings_factory(database_url=f"{require_postgres()}?sslmode={sslmode}")
    for engine in (create_engine(settings)[0], create_null_pool_engine(settings)):
        try:
            async with engine.connect() as connection:
                assert await connection.scalar(text("SELECT 1")) == 1
        finally:
            await engine.dispose()


async def test_postgres_url_with_libpq_tls_parameters_verifies_the_server(
    settings_factory: Callable[..., Settings],
) -> None:
    """A managed server's CA (`sslrootcert`) with `sslmode=verify-full`, and the libpq
    parameters asyncpg reads only from a DSN: the connection is TLS, verified, named."""
    url, ca = require_postgres(), require_postgres_ca()
    query = f"sslmode=verify-full&sslrootcert={ca}&application_name=ow-tls&connect_timeout=5"
    settings = settings_factory(database_url=f"{url}?{query}")
    for engine in (create_engine(settings)[0], create_null_pool_engine(settings)):
        try:
            async with engine.connect() as connection:
                ssl = "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()"
                assert await connection.scalar(text(ssl)) is True
                assert await connection.scalar(text("SHOW application_name")) == "ow-tls"
        finally:
            await engine.dispose()


async def test_data_dir_is_created_private_and_a_typed_directory_is_not_created(
    settings_factory: Callable[..., Settings],
    tmp_path: Path,
) -> None:
    """The default database's DATA_DIR is made (0700: it holds everything); a DATABASE_URL
    naming a directory that does not exist is more likely a typo: one line, exit 3, and
    nothing is created (`migrate --status` must not report a typo as an empty database)."""
    import os
    import stat
    import subprocess
    import sys

    from ollama_web.core.startup import EXIT_DATABASE_ERROR

    previous = os.umask(0o022)
    try:
        settings = settings_factory(data_dir=tmp_path / "fresh" / "data")
        for engine in (create_engine(settings)[0], create_null_pool_engine(settings)):
            try:
                async with engine.begin() as connection:
                    await connection.execute(text("CREATE TABLE IF NOT EXISTS t (x INTEGER)"))
            finally:
                await engine.dispose()
    finally:
        os.umask(previous)
    assert stat.S_IMODE(settings.data_dir.stat().st_mode) == 0o700
    typo = tmp_path / "typo" / "ollama_web.db"
    env = {**os.environ, "DATA_DIR": str(tmp_path / "data"), "DATABASE_URL": f"sqlite:///{typo}"}
    result = subprocess.run(
        [sys.executable, "-m", "ollama_web", "migrate", "--status"],
        capture_output=True, text=True, env=env, cwd=tmp_path, timeout=60, check=False,
    )  # fmt: skip
    assert result.returncode == EXIT_DATABASE_ERROR
    assert result.stderr.count("\n") == 1
    assert "unable to open database file" in result.stderr
    assert not typo.parent.exists()


@pytest.mark.parametrize("path", ["engine", "inline"])
async def test_statement_errors_carry_no_parameters(
    settings_factory: Callable[..., Settings], path: str
) -> None:
    """Errors are logged, and a statement's parameters are users' text (a message, an
    answer) or credentials' hashes: the error names the statement, not the values."""
    from sqlalchemy import insert as insert_into

    from ollama_web.conversations.writes import MESSAGES, NewMessage
    from ollama_web.core.sqlite_inline import open_inline
    from ollama_web.db.base import utcnow
    from ollama_web.migrations.runner import upgrade

    settings = settings_factory()
    engine, recorder = create_engine(settings)
    now = utcnow()
    # No such conversation: the foreign key refuses the row.
    row = NewMessage("a" * 32, "b" * 32, None, "user", "my private words", "complete", now, now)
    statement = insert_into(MESSAGES)

    async def store() -> None:
        if path == "engine":
            async with engine.begin() as connection:
                await connection.execute(statement, row.row())
        else:
            inline = open_inline(engine, recorder)
            assert inline is not None
            inline.write([(statement, row.row())])

    try:
        await upgrade(engine, settings)
        with pytest.raises(IntegrityError) as raised:
            await store()
    finally:
        await engine.dispose()
    assert "my private words" not in str(raised.value)
    assert "INSERT INTO messages" in str(raised.value)


async def test_a_failed_sqlite_connect_leaves_no_driver_thread_behind(
    settings_factory: Callable[..., Settings], tmp_path: Path
) -> None:
    """aiosqlite stops its thread after a failed connect with a future nobody awaits; were
    the thread still running when the event loop closed (a CLI command that exits on the
    error), it would die on the closed loop with a traceback on stderr."""
    import threading

    from sqlalchemy.exc import OperationalError

    settings = settings_factory(database_url=f"sqlite:///{tmp_path / 'missing' / 'x.db'}")
    before = set(threading.enumerate())
    for engine in (create_engine(settings)[0], create_null_pool_engine(settings)):
        try:
            for _ in range(10):
                with pytest.raises(OperationalError, match="unable to open database file"):
                    async with engine.connect():
                        pass
                assert [t for t in set(threading.enumerate()) - before if t.is_alive()] == []
        finally:
            await engine.dispose()


async def test_only_a_missing_owner_is_the_caller_s_account_gone(
    app: FastAPI, regular_user: TestUser
) -> None:
    """A row whose owner does not exist is a foreign-key violation (SQLite's error names no
    constraint; PostgreSQL's SQLSTATE is 23503), which `flush_owned` answers 401. A
    duplicate is not one: a bug, raised as it is (a 500)."""
    sessionmaker = app.state.core.sessionmaker
    async with sessionmaker() as session:
        session.add(Conversation(id=new_id(), user_id=new_id(), title="orphan", model="m"))
        with pytest.raises(IntegrityError) as missing_owner:
            await session.flush()
        assert is_foreign_key_violation(missing_owner.value)
        await session.rollback()
        session.add(Conversation(id=new_id(), user_id=new_id(), title="orphan", model="m"))
        with pytest.raises(AccountGoneError):
            await flush_owned(session)
        await session.rollback()
        twin = User(
            username=regular_user.username,
            username_key=regular_user.username.lower(),
            password_hash="x",
        )
        session.add(twin)
        with pytest.raises(IntegrityError) as duplicate:
            await flush_owned(session)
        assert not is_foreign_key_violation(duplicate.value)
        await session.rollback()


@pytest.mark.parametrize("name", ["a?b", "a%20b", "a#b", "dätä dir/ü?x#y%20", "file:x"])
async def test_the_database_is_in_data_dir_whatever_its_name_holds(
    settings_factory: Callable[..., Settings],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    name: str,
) -> None:
    """DATA_DIR is a path, not a piece of URL: with `?` in it the database was a file `a`
    beside it, with `%20` one in `a b/`, away from the secret key, the server lock, and the
    file the backups copy."""
    from sqlalchemy.engine import make_url

    from ollama_web.backups.service import DatabaseBackup

    monkeypatch.chdir(tmp_path)  # relative, as `DATA_DIR=./a?b` is
    settings = settings_factory(data_dir=Path(name))
    database = tmp_path / name / "ollama_web.db"
    assert Path(str(make_url(settings.async_database_url).database)).resolve() == database
    assert settings.sqlite_file == Path(name) / "ollama_web.db"
    assert DatabaseBackup(settings).database_path.resolve() == database
    for engine in (create_engine(settings)[0], create_null_pool_engine(settings)):
        # What the inline connection opens, and what SQLite does not read as a URI.
        assert Path(str(engine.url.database)).resolve() == database
        assert not str(engine.url.database).startswith("file:")
        try:
            async with engine.begin() as connection:
                await connection.execute(text("CREATE TABLE IF NOT EXISTS t (x INTEGER)"))
        finally:
            await engine.dispose()
    assert database.stat().st_size > 0
    assert [path.name for path in tmp_path.iterdir()] == [name.split("/")[0]]


@pytest.fixture
def umask_022() -> Iterator[None]:
    """The common umask, under which SQLite made new files 0644."""
    previous = os.umask(0o022)
    yield
    os.umask(previous)


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.mark.usefixtures("umask_022")
async def test_a_new_database_and_its_wal_and_shm_are_0600_in_an_existing_data_dir(
    settings_factory: Callable[..., Settings], tmp_path: Path
) -> None:
    """A DATA_DIR made beforehand (a Docker volume, `install -d`) is 0755: the database,
    password and key hashes and every conversation in it, was 0644 there, as were -wal and
    -shm (SQLite gives them the database's mode)."""
    for name, engine_for in (
        ("pooled", lambda s: create_engine(s)[0]),
        ("cli", create_null_pool_engine),
    ):
        data_dir = tmp_path / name
        data_dir.mkdir(mode=0o755)
        settings = settings_factory(data_dir=data_dir)
        engine = engine_for(settings)
        try:
            async with engine.begin() as connection:
                await connection.execute(text("CREATE TABLE t (x INTEGER)"))
            async with engine.connect() as connection:  # open: -wal and -shm exist
                await connection.execute(text("SELECT * FROM t"))
                files = ["ollama_web.db", "ollama_web.db-wal", "ollama_web.db-shm"]
                assert {file: _mode(data_dir / file) for file in files} == dict.fromkeys(
                    files, 0o600
                )
        finally:
            await engine.dispose()


@pytest.mark.usefixtures("umask_022")
async def test_an_existing_database_keeps_the_mode_its_owner_gave_it(
    settings_factory: Callable[..., Settings], tmp_path: Path
) -> None:
    """0640 for a backup agent's group, say: not ours to change."""
    settings = settings_factory(database_url=f"sqlite:///{tmp_path / 'chosen.db'}")
    (tmp_path / "chosen.db").touch(mode=0o640)
    engine = create_engine(settings)[0]
    try:
        async with engine.begin() as connection:
            await connection.execute(text("CREATE TABLE t (x INTEGER)"))
    finally:
        await engine.dispose()
    assert _mode(tmp_path / "chosen.db") == 0o640
