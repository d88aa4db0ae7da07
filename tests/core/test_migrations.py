"""Migrations: upgrade from empty, idempotence, status, and models == migrations."""

from __future__ import annotations

import asyncio
import contextlib
import io
import logging
import os
import re
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import inspect, text
from sqlalchemy.engine import Connection, make_url

from ollama_web.cli import main
from ollama_web.core.config import Settings
from ollama_web.core.db import create_null_pool_engine
from ollama_web.core.startup import EXIT_DATABASE_ERROR, DatabaseUnusableError
from ollama_web.db import Base
from ollama_web.migrations.filters import include_object
from ollama_web.migrations.runner import migration_status, upgrade
from tests.conftest import _sync, require_postgres
from tests.fixtures.commands import command_environment
from tests.fixtures.ports import free_port

EXPECTED_TABLES = {
    "users",
    "api_keys",
    "user_sessions",
    "conversations",
    "messages",
    "audit_events",
}


def _diff(connection: Connection) -> list[object]:
    context = MigrationContext.configure(
        connection, opts={"compare_type": True, "include_object": include_object}
    )
    return list(compare_metadata(context, Base.metadata))


def _tables(connection: Connection) -> set[str]:
    return set(inspect(connection).get_table_names())


@pytest.fixture
def empty_settings(
    settings_factory: Callable[..., Settings],
    db_backend: str,
    request: pytest.FixtureRequest,
    tmp_path: Path,
) -> Settings:
    """Settings for a database with no schema yet (a new SQLite file, or a new PG database)."""
    database_url = None if db_backend == "sqlite" else request.getfixturevalue("empty_pg_database")
    return settings_factory(database_url=database_url, data_dir=tmp_path / "empty")


async def test_upgrade_from_empty_creates_schema_and_matches_models(
    empty_settings: Settings,
) -> None:
    settings = empty_settings
    engine = create_null_pool_engine(settings)
    try:
        before = await migration_status(engine)
        assert before.current is None
        assert before.pending
        await upgrade(engine, settings)
        after = await migration_status(engine)
        assert after.up_to_date
        assert after.current == after.head
        again = await upgrade(engine, settings)
        assert again.up_to_date
        async with engine.connect() as conn:
            assert EXPECTED_TABLES <= await conn.run_sync(_tables)
            assert await conn.run_sync(_diff) == []
    finally:
        await engine.dispose()


def _python(
    args: list[str], cwd: Path, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=cwd,
        timeout=120,
        check=False,
    )


def _cli(args: list[str], env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return _python(["-m", "ollama_web", *args], cwd, env)


def test_migrate_cli_status_exit_codes_and_idempotence(tmp_path: Path) -> None:
    env = {**os.environ, "DATA_DIR": str(tmp_path / "data"), "SECRET_KEY": "s" * 40}
    env.pop("DATABASE_URL", None)
    pending = _cli(["migrate", "--status"], env, tmp_path)
    assert pending.returncode == 1, pending.stderr
    assert "pending" in pending.stdout
    first = _cli(["migrate"], env, tmp_path)
    assert first.returncode == 0, first.stderr
    assert "upgraded" in first.stdout
    second = _cli(["migrate"], env, tmp_path)
    assert second.returncode == 0
    assert "already up to date" in second.stdout
    status = _cli(["migrate", "--status"], env, tmp_path)
    assert status.returncode == 0
    assert "up to date" in status.stdout
    script = Path(__file__).parents[2] / "scripts" / "run_migrations.py"
    wrapper = _python([str(script)], tmp_path, env)
    assert wrapper.returncode == 0, wrapper.stderr
    assert "already up to date" in wrapper.stdout


def test_fast_head_and_revisions_match_alembic() -> None:
    from alembic.script import ScriptDirectory

    from ollama_web.migrations.runner import alembic_config, known_revisions, script_head

    script = ScriptDirectory.from_config(alembic_config())
    assert script_head() == script.get_current_head()
    assert known_revisions() == {revision.revision for revision in script.walk_revisions()}


async def test_stored_revision_is_none_on_empty_and_head_after_upgrade(
    settings_factory: Callable[..., Settings], tmp_path: Path
) -> None:
    from ollama_web.migrations.runner import script_head, stored_revision

    settings = settings_factory(data_dir=tmp_path / "empty")
    engine = create_null_pool_engine(settings)
    try:
        assert await stored_revision(engine) is None
        await upgrade(engine, settings)
        assert await stored_revision(engine) == script_head()
    finally:
        await engine.dispose()


async def test_startup_migrates_an_empty_database_in_a_child_process(
    app_factory: Callable[[Settings], Any], empty_settings: Settings
) -> None:
    await app_factory(empty_settings)
    engine = create_null_pool_engine(empty_settings)
    try:
        assert (await migration_status(engine)).up_to_date
        async with engine.connect() as conn:
            assert await conn.run_sync(_diff) == []
    finally:
        await engine.dispose()


@contextlib.contextmanager
def migration_log(caplog: pytest.LogCaptureFixture) -> Iterator[None]:
    """The migrations logger's INFO records in `caplog`. The app's logging setup stops
    "ollama_web" records at its own handlers, short of the root logger that caplog listens
    on: listen on the migrations logger itself."""
    migrations_logger = logging.getLogger("ollama_web.migrations")
    migrations_logger.addHandler(caplog.handler)
    try:
        with caplog.at_level("INFO", logger="ollama_web.migrations"):
            yield
    finally:
        migrations_logger.removeHandler(caplog.handler)


async def test_a_startup_migration_that_takes_long_says_so_while_it_runs(
    app_factory: Callable[[Settings], Any],
    empty_settings: Settings,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A migration has no time limit: a start waiting for its child says so every
    PROGRESS_SECONDS (a large database's upgrade, or a child that will never report)."""
    from ollama_web.migrations import startup

    upgrade_all = startup._upgrade_all

    async def slow(settings: Settings) -> bool:  # runs in the forked child
        await asyncio.sleep(1.0)
        return await upgrade_all(settings)

    monkeypatch.setattr(startup, "_upgrade_all", slow)
    monkeypatch.setattr(startup, "PROGRESS_SECONDS", 0.2)
    with migration_log(caplog):
        started = time.monotonic()
        await app_factory(empty_settings)
        elapsed = time.monotonic() - started
    # Once per record: with "ollama_web" propagating (as after another test's logging
    # ended), the root logger's caplog handler sees each record too.
    records = {id(r): r for r in caplog.records if "still running" in r.getMessage()}
    waits = [record.getMessage() for record in records.values()]
    assert 2 <= len(waits) <= elapsed / 0.2 + 1, waits  # one each 0.2 s, from the first 1 s
    pattern = r"the database migration \(process \d+\) is still running, after (\d+) s"
    matches = [re.fullmatch(pattern, wait) for wait in waits]
    assert all(matches), waits
    seconds = [int(match[1]) for match in matches if match]
    assert seconds == sorted(seconds)
    engine = create_null_pool_engine(empty_settings)
    try:
        assert (await migration_status(engine)).up_to_date
    finally:
        await engine.dispose()


def test_the_server_process_never_imports_alembic(tmp_path: Path) -> None:
    """Migrating an empty database at startup leaves Alembic out of the server's memory."""
    program = (
        "import asyncio, sys\n"
        "from ollama_web.app import create_app\n"
        "from ollama_web.core.config import Settings\n"
        "async def main():\n"
        f"    settings = Settings(_env_file=None, data_dir={str(tmp_path / 'data')!r},"
        " secret_key='s' * 40, backup_enabled=False, ollama_url=['http://127.0.0.1:9'])\n"
        "    app = create_app(settings)\n"
        "    async with app.router.lifespan_context(app):\n"
        "        pass\n"
        "    print(sorted(name for name in sys.modules if name.startswith('alembic')))\n"
        "asyncio.run(main())\n"
    )
    result = _python(["-c", program], tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1] == "[]"
    assert (tmp_path / "data" / "ollama_web.db").is_file()


async def test_a_failed_startup_migration_refuses_to_start_and_says_why(
    app_factory: Callable[[Settings], Any],
    settings_factory: Callable[..., Settings],
    tmp_path: Path,
) -> None:
    data_dir = tmp_path / "broken"
    data_dir.mkdir()
    (data_dir / "ollama_web.db").write_bytes(b"this is not a database" * 100)
    settings = settings_factory(data_dir=data_dir)
    with pytest.raises(
        DatabaseUnusableError, match=r"cannot start: the database migration failed: .*not a"
    ):
        await app_factory(settings)


async def test_serve_gives_a_new_database_its_schema_while_the_server_starts(
    app_factory: Callable[[Settings], Any],
    empty_settings: Settings,
    caplog: pytest.LogCaptureFixture,
) -> None:
    from ollama_web.migrations.startup import begin_early_migration

    begin_early_migration(empty_settings)  # what `ollama-web serve` does before the imports
    with migration_log(caplog):
        await app_factory(empty_settings)
    assert "while the server started" in caplog.text
    engine = create_null_pool_engine(empty_settings)
    try:
        assert (await migration_status(engine)).up_to_date
    finally:
        await engine.dispose()


class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


@pytest.fixture
def migration_records() -> Iterator[_Records]:
    """What the migrations logger says during the test, from INFO up."""
    migrations_logger = logging.getLogger("ollama_web.migrations")
    records = _Records()
    migrations_logger.addHandler(records)
    level = migrations_logger.level
    migrations_logger.setLevel(logging.INFO)
    try:
        yield records
    finally:
        migrations_logger.removeHandler(records)
        migrations_logger.setLevel(level)


async def _upgrade_three_at_once(
    settings: Settings, monkeypatch: pytest.MonkeyPatch, behind: str
) -> None:
    """Three instances start at once on a database at revision `behind`: the pre-migration
    hook (the safety backup) runs once, before the migration, under the lock; the others
    wait for it, then find the database migrated and back up nothing."""
    from ollama_web.migrations import runner
    from ollama_web.migrations.runner import MigrationStatus, script_head, stored_revision

    engines = [create_null_pool_engine(settings) for _ in range(3)]
    seen: list[str | None] = []

    async def hook(_: Settings, status: MigrationStatus) -> None:
        seen.append(await stored_revision(engines[0]))
        await asyncio.sleep(0.2)  # a backup takes a while: the others must wait for it

    try:
        await upgrade(engines[0], settings, behind)
        monkeypatch.setattr(runner, "_before_upgrade_hooks", [hook])
        before = await asyncio.gather(*(upgrade(engine, settings) for engine in engines))
        assert seen == [behind]
        assert sorted(status.up_to_date for status in before) == [False, True, True]
        assert await stored_revision(engines[0]) == script_head()
    finally:
        for engine in engines:
            await engine.dispose()


@pytest.mark.postgres
async def test_instances_upgrading_together_back_up_once_before_migrating(
    settings_factory: Callable[..., Settings],
    empty_pg_database: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    settings = settings_factory(database_url=empty_pg_database, data_dir=tmp_path / "pg")
    await _upgrade_three_at_once(settings, monkeypatch, "0005")


async def test_instances_upgrading_one_sqlite_database_together_take_turns(
    settings_factory: Callable[..., Settings], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The same on SQLite, under a lock file beside the database. Without it each saw the
    old revision, each ran the safety backup, and one that wrote after another had
    migrated failed with "database is locked" (no start)."""
    settings = settings_factory(data_dir=tmp_path / "together")
    await _upgrade_three_at_once(settings, monkeypatch, "0008")
    lock = settings.data_dir / "ollama_web.db.migration-lock"
    assert lock.stat().st_mode & 0o777 == 0o600


async def test_an_instance_waiting_for_a_sqlite_migration_says_so_and_then_migrates(
    settings_factory: Callable[..., Settings], tmp_path: Path, migration_records: _Records
) -> None:
    """The lock file held by another process (here: another open file, as flock sees it):
    the upgrade waits, says once what it waits for, and migrates when it is released."""
    import fcntl

    from ollama_web.migrations.runner import script_head, stored_revision

    settings = settings_factory(data_dir=tmp_path / "waiting")
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    lock = settings.data_dir / "ollama_web.db.migration-lock"
    engine = create_null_pool_engine(settings)
    records = migration_records
    try:
        with lock.open("w") as holder:
            fcntl.flock(holder, fcntl.LOCK_EX)
            upgrading = asyncio.ensure_future(upgrade(engine, settings))
            for _ in range(100):
                if records.messages or upgrading.done():
                    break
                await asyncio.sleep(0.05)
            await asyncio.sleep(0.3)
            assert not upgrading.done()
            assert records.messages == [
                "waiting for the migration another process is running on this database "
                f"(it holds {lock})"
            ]
        before = await asyncio.wait_for(upgrading, 60)  # closing the file released it
        assert not before.up_to_date
        assert await stored_revision(engine) == script_head()
        assert records.messages[1] == "the other migration ended; checking the schema again"
    finally:
        await engine.dispose()


@pytest.mark.postgres
async def test_instances_starting_together_on_postgresql_migrate_once(
    settings_factory: Callable[..., Settings], empty_pg_database: str, tmp_path: Path
) -> None:
    """Three processes' upgrades at once on one new PostgreSQL database: one migrates, the
    others wait for its lock and find nothing to do; none fails on a half-made schema."""
    from ollama_web.migrations.runner import script_head, stored_revision

    settings = settings_factory(database_url=empty_pg_database, data_dir=tmp_path / "pg")
    engines = [create_null_pool_engine(settings) for _ in range(3)]
    try:
        before = await asyncio.gather(*(upgrade(engine, settings) for engine in engines))
        assert sorted(status.up_to_date for status in before) == [False, True, True]
        assert await stored_revision(engines[0]) == script_head()
    finally:
        for engine in engines:
            await engine.dispose()


@pytest.mark.postgres
async def test_an_instance_waiting_for_another_migration_says_who_holds_the_lock(
    settings_factory: Callable[..., Settings],
    empty_pg_database: str,
    tmp_path: Path,
    migration_records: _Records,
) -> None:
    """While another session holds the migration lock, an upgrade waits (never fails on a
    half-made schema) and says so once, naming the holder's backend pid; when the lock is
    released it migrates."""
    from sqlalchemy import text

    from ollama_web.migrations.runner import LOCK_KEY, script_head, stored_revision

    settings = settings_factory(database_url=empty_pg_database, data_dir=tmp_path / "pg")
    holder_engine = create_null_pool_engine(settings)
    engine = create_null_pool_engine(settings)
    records = migration_records
    try:
        async with holder_engine.connect() as holder:
            pid = (await holder.execute(text("SELECT pg_backend_pid()"))).scalar()
            await holder.execute(text("SELECT pg_advisory_lock(:key)"), {"key": LOCK_KEY})
            upgrading = asyncio.ensure_future(upgrade(engine, settings))
            for _ in range(400):
                if records.messages or upgrading.done():
                    break
                await asyncio.sleep(0.05)
            assert not upgrading.done()
            assert records.messages == [
                "waiting for the migration another process is running on this database "
                f"(PostgreSQL backend pid {pid} holds its lock)"
            ]
            await holder.execute(text("SELECT pg_advisory_unlock(:key)"), {"key": LOCK_KEY})
            before = await asyncio.wait_for(upgrading, 60)
        assert not before.up_to_date
        assert await stored_revision(engine) == script_head()
        assert records.messages[1] == "the other migration ended; checking the schema again"
    finally:
        await engine.dispose()
        await holder_engine.dispose()


def _unusable_postgres(problem: str) -> str:
    if problem == "refused":
        return f"postgresql://ollama_web:pw-not-shown@127.0.0.1:{free_port()}/ollama_web"
    url = make_url(require_postgres())
    if problem == "wrong-password":
        return url.set(password="pw-not-shown").render_as_string(hide_password=False)
    return url.set(database="ow_no_such_database").render_as_string(hide_password=False)


@pytest.mark.parametrize("command", [["migrate"], ["migrate", "--status"]])
@pytest.mark.parametrize(
    ("problem", "fragment"),
    [
        ("refused", "ConnectionRefusedError"),
        ("wrong-password", "password authentication failed"),
        ("missing-database", 'database "ow_no_such_database" does not exist'),
    ],
)
def test_migrate_on_an_unusable_postgres_is_one_line_and_exit_3(
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    command: list[str],
    problem: str,
    fragment: str,
) -> None:
    """Exit 3, so that `migrate --status` exiting 1 still means only "pending"."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("DATABASE_URL", _unusable_postgres(problem))

    assert main(command) == EXIT_DATABASE_ERROR

    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1
    assert lines[0].startswith("error: cannot use the database postgresql://")
    assert fragment in lines[0]
    assert "pw-not-shown" not in lines[0]


def test_migrate_on_a_locked_sqlite_database_is_one_line_and_exit_3(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    database = tmp_path / "data" / "ollama_web.db"
    database.parent.mkdir()
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("DATA_DIR", str(database.parent))
    monkeypatch.delenv("DATABASE_URL", raising=False)
    monkeypatch.setattr("ollama_web.core.db.SQLITE_BUSY_TIMEOUT_MS", 100)
    holder = sqlite3.connect(database, isolation_level=None)
    try:
        holder.execute("CREATE TABLE other (a)")
        holder.execute("BEGIN IMMEDIATE")
        code = main(["migrate"])
    finally:
        holder.close()

    assert code == EXIT_DATABASE_ERROR
    assert capsys.readouterr().err == (
        f"error: cannot use the database {database}: OperationalError: database is locked\n"
    )


def _set_revisions(settings: Settings, *revisions: str) -> None:
    async def write() -> None:
        engine = create_null_pool_engine(settings)
        try:
            async with engine.begin() as conn:
                await conn.execute(text("DELETE FROM alembic_version"))
                for revision in revisions:
                    await conn.execute(
                        text("INSERT INTO alembic_version VALUES (:revision)"),
                        {"revision": revision},
                    )
        finally:
            await engine.dispose()

    _sync(write())


@pytest.fixture
def newer_database(
    settings_factory: Callable[..., Settings],
    database_url: str | None,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> Iterator[Settings]:
    """The migrated test database as a newer version left it (revision 9999: restored from
    its backup, or the package downgraded), and the command line's environment on it."""
    from ollama_web.migrations.runner import script_head

    settings = _command_environment(settings_factory, database_url, tmp_path, monkeypatch)
    _set_revisions(settings, "9999")
    yield settings
    _set_revisions(settings, script_head())  # the shared PostgreSQL database outlives us


def _command_environment(
    settings_factory: Callable[..., Settings],
    database_url: str | None,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    migrate_on_startup: bool = True,
) -> Settings:
    """Settings on the test database, and the command line's environment set to match."""
    settings = settings_factory(database_url=database_url, migrate_on_startup=migrate_on_startup)
    migrate = str(migrate_on_startup).lower()
    command_environment(monkeypatch, settings, tmp_path, database_url, MIGRATE_ON_STARTUP=migrate)
    return settings


@pytest.fixture
def unmigrated_setup(
    settings_factory: Callable[..., Settings],
    database_url: str | None,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> Iterator[Settings]:
    """The test database and the command line's environment, with MIGRATE_ON_STARTUP=false."""
    from ollama_web.migrations.runner import script_head

    yield _command_environment(
        settings_factory, database_url, tmp_path, monkeypatch, migrate_on_startup=False
    )
    if database_url is not None:  # the shared PostgreSQL database outlives us
        _set_revisions(settings_factory(database_url=database_url), script_head())


@pytest.mark.parametrize(
    ("stored", "says"),
    [
        ((), "has no schema, and this version of ollama-web needs revision "),
        (("0006",), "is at revision 0006, and this version of ollama-web needs revision "),
        (("9999",), "is at revision 9999, which this version of ollama-web does not know"),
    ],
)
def test_serve_without_migrate_on_startup_refuses_a_schema_it_cannot_use_as_it_is(
    unmigrated_setup: Settings,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    stored: tuple[str, ...],
    says: str,
) -> None:
    """Nothing upgrades the schema when MIGRATE_ON_STARTUP is false: a server on a database
    behind this version would answer 500 at the first missing column. One line, exit 3,
    and what to run; nothing is started or changed."""
    started: list[dict[str, Any]] = []
    monkeypatch.setattr("uvicorn.run", lambda app, **options: started.append(options))
    _set_revisions(unmigrated_setup, *stored)

    assert main(["serve", "--workers", "2"]) == EXIT_DATABASE_ERROR

    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith("error: the database ")
    assert says in lines[0]
    if "9999" not in says:
        assert lines[0].endswith("MIGRATE_ON_STARTUP is false, so run `ollama-web migrate` first")
    assert started == []


def test_serve_without_migrate_on_startup_starts_on_a_migrated_database(
    unmigrated_setup: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    started: list[dict[str, Any]] = []
    monkeypatch.setattr("uvicorn.run", lambda app, **options: started.append(options))
    assert main(["serve", "--workers", "1"]) == 0
    assert len(started) == 1


@pytest.mark.parametrize("db_backend", ["sqlite"])
def test_serve_without_migrate_on_startup_and_no_database_file_creates_none(
    unmigrated_setup: Settings,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    database = unmigrated_setup.sqlite_file
    assert database is not None
    database.unlink()
    monkeypatch.setattr("uvicorn.run", lambda app, **options: None)
    assert main(["serve"]) == EXIT_DATABASE_ERROR
    assert f"the database {database} has no schema" in capsys.readouterr().err
    assert not database.exists()


async def test_a_server_without_migrate_on_startup_refuses_a_schema_behind_this_version(
    app_factory: Callable[[Settings], Any],
    settings_factory: Callable[..., Settings],
    database_url: str | None,
) -> None:
    """`uvicorn ollama_web.main:app`, without the command's check: the lifespan says it."""
    from ollama_web.core.startup import DatabaseUnusableError
    from ollama_web.migrations.runner import script_head

    settings = settings_factory(database_url=database_url, migrate_on_startup=False)
    _set_revisions(settings, "0006")
    try:
        with pytest.raises(DatabaseUnusableError, match="is at revision 0006, and this version"):
            await app_factory(settings)
    finally:
        _set_revisions(settings, script_head())


@pytest.mark.parametrize(
    "command",
    [
        ["migrate", "--status"],
        ["migrate"],
        ["users", "list"],
        ["create-admin", "--username", "root", "--password-stdin"],
        ["serve", "--workers", "1"],
        ["serve", "--workers", "2"],
    ],
)
def test_a_database_of_a_newer_version_is_one_line_and_exit_3(
    newer_database: Settings,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    command: list[str],
) -> None:
    """Not Alembic's traceback, and not `migrate --status`'s 1 ("pending"): the line says
    which revision, this version's newest, and what to do; nothing is started or changed."""
    from ollama_web.migrations.runner import script_head, stored_revision

    started: list[dict[str, Any]] = []
    monkeypatch.setattr("uvicorn.run", lambda app, **options: started.append(options))
    monkeypatch.setattr("sys.stdin", io.StringIO("a long passphrase indeed 123\n"))

    assert main(command) == EXIT_DATABASE_ERROR

    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith("error: the database ")
    assert lines[0].endswith(
        f" is at revision 9999, which this version of ollama-web does not know (its newest "
        f"is {script_head()}): it was made by a newer version; upgrade, or restore a backup "
        "made by this one"
    )
    database = newer_database.sqlite_file or make_url(newer_database.database_url or "")
    if isinstance(database, Path):
        assert f" {database} " in lines[0]
    else:
        assert f":{database.password}@" not in lines[0]
        assert ":***@" in lines[0]
    assert started == []

    async def revision() -> str | None:
        engine = create_null_pool_engine(newer_database)
        try:
            return await stored_revision(engine)
        finally:
            await engine.dispose()

    assert _sync(revision()) == "9999"


async def test_a_server_refuses_a_database_of_a_newer_version_before_any_migration(
    app_factory: Callable[[Settings], Any], newer_database: Settings
) -> None:
    """`uvicorn ollama_web.main:app`, without the command's check: the lifespan says the
    same, without forking a migration that could only fail."""
    from ollama_web.migrations.runner import UnknownRevisionError

    with pytest.raises(UnknownRevisionError, match="is at revision 9999, which this version"):
        await app_factory(newer_database)


def test_a_database_with_two_revisions_is_one_line_and_exit_3(
    newer_database: Settings, capsys: pytest.CaptureFixture[str]
) -> None:
    from ollama_web.migrations.runner import script_head

    _set_revisions(newer_database, script_head(), "0001")
    assert main(["migrate", "--status"]) == EXIT_DATABASE_ERROR
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1, lines
    assert f"records 2 schema revisions ({script_head()}, 0001)" in lines[0]


def _search_index(connection: Connection) -> str:
    return str(
        connection.scalar(
            text("SELECT indexdef FROM pg_indexes WHERE indexname = 'messages_fts_content_gin'")
        )
    )


def _fold(connection: Connection) -> str:
    return str(connection.scalar(text("SELECT to_tsvector('ollama_web_search', 'Un Café')")))


def _downgrade_to(connection: Connection, revision: str) -> None:
    from alembic import command

    from ollama_web.migrations.runner import alembic_config

    config = alembic_config()
    config.attributes["connection"] = connection
    command.downgrade(config, revision)


@pytest.mark.postgres
async def test_migration_0008_folds_accents_on_postgresql_and_goes_down_again(
    settings_factory: Callable[..., Settings], empty_pg_database: str, tmp_path: Path
) -> None:
    """The index takes `ollama_web_search` (`simple` behind `unaccent`); down to 0007, the
    index is `simple`'s again and the configuration gone; up again, as before."""
    settings = settings_factory(database_url=empty_pg_database, data_dir=tmp_path / "pg")
    engine = create_null_pool_engine(settings)
    try:
        await upgrade(engine, settings)
        async with engine.connect() as conn:
            index = await conn.run_sync(_search_index)
            assert "to_tsvector('ollama_web_search'::regconfig" in index
            assert await conn.run_sync(_fold) == "'cafe':2 'un':1"
            assert await conn.scalar(text("SELECT ollama_web_fold('Un CAFÉ')")) == "un cafe"
        async with engine.begin() as conn:
            await conn.run_sync(_downgrade_to, "0007")
        async with engine.connect() as conn:
            assert "to_tsvector('simple'::regconfig" in await conn.run_sync(_search_index)
            configs = await conn.scalar(
                text("SELECT count(*) FROM pg_ts_config WHERE cfgname = 'ollama_web_search'")
            )
            assert configs == 0
            functions = await conn.scalar(
                text("SELECT count(*) FROM pg_proc WHERE proname = 'ollama_web_fold'")
            )
            assert functions == 0
        assert not (await upgrade(engine, settings)).up_to_date  # 0008 again
        async with engine.connect() as conn:
            assert await conn.run_sync(_fold) == "'cafe':2 'un':1"
    finally:
        await engine.dispose()


@pytest.mark.postgres
async def test_without_the_unaccent_extension_search_stays_accent_sensitive_and_says_so(
    settings_factory: Callable[..., Settings],
    empty_pg_database: str,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """An extension that cannot be created (here: one that does not exist) leaves the
    configuration a copy of `simple`, the migration's transaction usable, and a warning."""
    import importlib

    migration = importlib.import_module("ollama_web.migrations.versions.0008_pg_search_unaccent")
    settings = settings_factory(database_url=empty_pg_database, data_dir=tmp_path / "pg")
    engine = create_null_pool_engine(settings)
    try:
        async with engine.begin() as conn:
            folds = await conn.run_sync(migration.create_search_config, "no_such_extension")
            assert folds is False
            assert await conn.run_sync(_fold) == "'café':2 'un':1"
            title = await conn.scalar(text("SELECT ollama_web_fold('Un CAFÉ')"))
            assert title == "un café"  # case folded, accents kept
    finally:
        await engine.dispose()
    assert "no_such_extension unavailable" in caplog.text
    assert "search stays accent-sensitive" in caplog.text


def _search_rows(database: Path) -> dict[str, str]:
    """Message id -> the text of its FTS5 row."""
    with sqlite3.connect(database) as db:
        rows = db.execute(
            "SELECT map.message_id, fts.content FROM messages_fts_map AS map "
            "JOIN messages_fts AS fts ON fts.rowid = map.fts_rowid"
        )
        return dict(rows.fetchall())


async def test_migration_0009_gives_an_answer_its_search_row_when_it_ends(
    settings_factory: Callable[..., Settings], tmp_path: Path
) -> None:
    """A question is indexed at once, an answer once it ends; down to 0008, the answers
    without a row get one (which its old trigger then rewrites), and up again."""
    settings = settings_factory(data_dir=tmp_path / "data")
    database = tmp_path / "data" / "ollama_web.db"
    engine = create_null_pool_engine(settings)
    at = "2026-12-01 16:00:00.000000"
    new_message = (
        "INSERT INTO messages (id, conversation_id, parent_id, role, content, status, "
        "created_at, updated_at) VALUES (?, 'c1', 'q1', 'assistant', '', 'pending', ?, ?)"
    )
    end = "UPDATE messages SET content = ?, status = 'complete' WHERE id = ?"

    try:
        await upgrade(engine, settings)
        with sqlite3.connect(database, isolation_level=None) as db:
            db.execute(
                "INSERT INTO users (id, username, username_key, password_hash, role, is_active, "
                "created_at, updated_at) VALUES ('u1', 'ada', 'ada', 'x', 'user', 1, ?, ?)",
                (at, at),
            )
            db.execute(
                "INSERT INTO conversations (id, user_id, title, model, options, pinned, "
                "archived, title_generated, created_at, updated_at) "
                "VALUES ('c1', 'u1', 't', 'llama3.2', '{}', 0, 0, 0, ?, ?)",
                (at, at),
            )
            db.execute(
                "INSERT INTO messages (id, conversation_id, role, content, status, created_at, "
                "updated_at) VALUES ('q1', 'c1', 'user', 'a question', 'complete', ?, ?)",
                (at, at),
            )
            db.execute(new_message, ("a1", at, at))
            db.execute("UPDATE messages SET content = 'half an', status = 'streaming' "
                       "WHERE id = 'a1'")  # fmt: skip
            assert _search_rows(database) == {"q1": "a question"}
            db.execute(end, ("an answer", "a1"))
            db.execute(new_message, ("a2", at, at))
        assert _search_rows(database) == {"q1": "a question", "a1": "an answer"}
        with sqlite3.connect(database) as db:
            hits = db.execute("SELECT rowid FROM messages_fts WHERE messages_fts MATCH 'answer'")
            assert len(hits.fetchall()) == 1

        async with engine.begin() as conn:
            await conn.run_sync(_downgrade_to, "0008")
        assert _search_rows(database) == {"q1": "a question", "a1": "an answer", "a2": ""}
        with sqlite3.connect(database, isolation_level=None) as db:
            db.execute(end, ("another answer", "a2"))
            db.execute(new_message, ("a3", at, at))  # the old way: a row at once
        assert _search_rows(database)["a2"] == "another answer"
        assert _search_rows(database)["a3"] == ""

        assert not (await upgrade(engine, settings)).up_to_date  # 0009 again
        with sqlite3.connect(database, isolation_level=None) as db:
            db.execute(end, ("a third answer", "a3"))  # its old row, rewritten
            db.execute("DELETE FROM messages WHERE id = 'a1'")
        rows = _search_rows(database)
        assert rows == {"q1": "a question", "a2": "another answer", "a3": "a third answer"}
    finally:
        await engine.dispose()


def _target_width(connection: Connection) -> int:
    columns = {column["name"]: column for column in inspect(connection).get_columns("audit_events")}
    return int(columns["target_id"]["type"].length)


async def test_migration_0010_gives_audit_targets_room_for_a_backup_name(
    empty_settings: Settings,
) -> None:
    """A backup's name (up to 80 characters) fits the audit row's target; down to 0009 it is
    cut to the 32 characters the column returns to, and up again the column is wide."""
    name = "ollama_web_backup_20261201_175809_2.dump"
    insert = text(
        "INSERT INTO audit_events (id, action, target_type, target_id, details, created_at) "
        "VALUES (:id, 'backup.created', 'backup', :target, '{}', CURRENT_TIMESTAMP)"
    )
    engine = create_null_pool_engine(empty_settings)
    try:
        await upgrade(engine, empty_settings)
        async with engine.begin() as conn:
            assert await conn.run_sync(_target_width) == 128
            await conn.execute(insert, {"id": "e1", "target": name})
            await conn.execute(insert, {"id": "e2", "target": "x" * 128})
        async with engine.begin() as conn:
            await conn.run_sync(_downgrade_to, "0009")
        async with engine.connect() as conn:
            assert await conn.run_sync(_target_width) == 32
            targets = await conn.execute(text("SELECT id, target_id FROM audit_events"))
            assert {row[0]: row[1] for row in targets} == {"e1": name[:32], "e2": "x" * 32}
        assert not (await upgrade(engine, empty_settings)).up_to_date
        async with engine.begin() as conn:
            assert await conn.run_sync(_target_width) == 128
            assert await conn.run_sync(_diff) == []
    finally:
        await engine.dispose()


_KILLED_MID_MIGRATION = """
import asyncio, os, sys
from sqlalchemy import event
from ollama_web.core.config import Settings
from ollama_web.core.db import create_null_pool_engine
from ollama_web.migrations.runner import upgrade

settings = Settings(_env_file=None, data_dir=sys.argv[1], secret_key="s" * 40)
engine = create_null_pool_engine(settings)

@event.listens_for(engine.sync_engine, "after_cursor_execute")
def die(conn, cursor, statement, *args):
    if statement.lstrip().startswith(sys.argv[2]):
        os._exit(137)  # as SIGKILL: no rollback, no cleanup

asyncio.run(upgrade(engine, settings))
"""


@pytest.mark.parametrize(
    ("revision", "statement"),
    [
        ("0009", "CREATE TABLE _alembic_tmp_audit_events"),  # 0010: a batch table copy
        ("0001", "CREATE VIRTUAL TABLE messages_fts"),  # 0002: DDL before its INSERTs
    ],
)
async def test_a_sqlite_migration_killed_half_way_leaves_the_database_as_it_was(
    settings_factory: Callable[..., Settings], tmp_path: Path, revision: str, statement: str
) -> None:
    """SQLite can roll DDL back, but Python's sqlite3 begins no transaction before it: each
    CREATE before a migration's first INSERT or UPDATE was committed at once, and a kill
    after it left a table every later try failed on ("table _alembic_tmp_audit_events
    already exists": no start, no migrate). Now every step is in one transaction."""
    settings = settings_factory(data_dir=tmp_path / "killed")
    engine = create_null_pool_engine(settings)
    try:
        await upgrade(engine, settings, revision)
        async with engine.connect() as conn:
            tables = await conn.run_sync(_tables)
        env = {k: v for k, v in os.environ.items() if k != "DATABASE_URL"}
        arguments = ["-c", _KILLED_MID_MIGRATION, str(settings.data_dir), statement]
        killed = _python(arguments, tmp_path, env)
        assert killed.returncode == 137, killed.stderr
        async with engine.connect() as conn:
            assert await conn.run_sync(_tables) == tables
            assert (await migration_status(engine)).current == revision
        assert not (await upgrade(engine, settings)).up_to_date  # tried again: it runs
        async with engine.connect() as conn:
            assert (await migration_status(engine)).up_to_date
            assert await conn.run_sync(_diff) == []
    finally:
        await engine.dispose()
