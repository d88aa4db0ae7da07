"""PostgreSQL backups with the real pg_dump / pg_restore against the local server."""

from __future__ import annotations

import asyncio
import functools
import shutil
import time
from collections.abc import Callable
from pathlib import Path

import asyncpg
import pytest
from fastapi import FastAPI

from ollama_web.backups import DatabaseBackup
from ollama_web.backups.cli import EXIT_NOT_CHECKED
from ollama_web.backups.errors import ForceRequiredError, RestoreRefusedError
from ollama_web.backups.postgres import TOOLS, libpq_environment, tools_available
from ollama_web.cli import main
from ollama_web.core.config import Settings
from ollama_web.core.db import create_null_pool_engine
from ollama_web.db.base import new_id
from ollama_web.migrations.runner import script_head, upgrade
from tests.conftest import asgi_client, require_postgres_ca
from tests.fixtures.auth import create_test_user
from tests.fixtures.commands import command_environment
from tests.ollama.faults import closed_port_url

pytestmark = [pytest.mark.postgres, pytest.mark.parametrize("db_backend", ["postgres"])]

WRITERS = 4


@pytest.fixture(autouse=True)
def _tools() -> None:
    if not tools_available():
        pytest.skip("pg_dump/pg_restore/psql are not installed")


def _url(settings: Settings) -> str:
    assert settings.database_url is not None
    return settings.database_url


async def _add_user(settings: Settings, username: str) -> None:
    connection = await asyncpg.connect(_url(settings))
    try:
        await connection.execute(
            "INSERT INTO users (id, username, username_key, password_hash, role, is_active,"
            " created_at, updated_at) VALUES ($1, $2, $3, 'x', 'user', true, now(), now())",
            new_id(),
            username,
            username.lower(),
        )
    finally:
        await connection.close()


async def _usernames(settings: Settings) -> set[str]:
    connection = await asyncpg.connect(_url(settings))
    try:
        return {row[0] for row in await connection.fetch("SELECT username FROM users")}
    finally:
        await connection.close()


async def test_pg_dump_backup_and_forced_restore(settings: Settings) -> None:
    service = DatabaseBackup(settings)
    assert service.mode == "pg_dump"
    assert await asyncio.to_thread(service.create_backup) is None, "no users yet"
    await _add_user(settings, "alice")
    info = await asyncio.to_thread(service.create_backup, "test")
    assert info is not None
    assert info.name.endswith(".dump")
    assert await asyncio.to_thread(service.verify, info.path) == []
    await _add_user(settings, "bob")
    with pytest.raises(RestoreRefusedError, match="force=True"):
        await asyncio.to_thread(service.restore_backup, info.path)
    result = await asyncio.to_thread(service.restore_backup, info.path, True)
    assert await _usernames(settings) == {"alice"}
    safety = service.find(result["safety_backup"])
    assert safety is not None
    await asyncio.to_thread(service.restore_backup, safety.path, True)
    assert await _usernames(settings) == {"alice", "bob"}


async def test_a_current_database_that_cannot_be_read_is_not_answered_with_force(
    settings: Settings, settings_factory: Callable[..., Settings]
) -> None:
    """On SQLite --force sets an unreadable database aside; on PostgreSQL there is nothing
    to set aside and the forced restore's safety backup fails: the refusal points at the
    connection instead of at --force."""
    service = DatabaseBackup(settings)
    await _add_user(settings, "alice")
    info = await asyncio.to_thread(service.create_backup)
    assert info is not None
    port = closed_port_url().rsplit(":", 1)[1]
    unreachable = settings_factory(database_url=f"postgresql://nobody:x@127.0.0.1:{port}/none")
    assert unreachable.backup_dir == settings.backup_dir
    with pytest.raises(RestoreRefusedError) as refused:
        await asyncio.to_thread(DatabaseBackup(unreachable).restore_backup, info.path)
    assert not isinstance(refused.value, ForceRequiredError)
    message = str(refused.value)
    assert message.startswith("the current database cannot be read (")
    assert message.endswith(
        "check DATABASE_URL and that the PostgreSQL server answers, then try again"
    )
    assert "force" not in message
    assert await _usernames(settings) == {"alice"}


async def test_a_tampered_dump_is_refused(settings: Settings) -> None:
    service = DatabaseBackup(settings)
    await _add_user(settings, "alice")
    info = await asyncio.to_thread(service.create_backup)
    assert info is not None
    data = bytearray(info.path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    info.path.write_bytes(bytes(data))
    with pytest.raises(RestoreRefusedError, match="sha256 mismatch"):
        await asyncio.to_thread(service.restore_backup, info.path, True)
    assert await _usernames(settings) == {"alice"}


async def _set_revision(settings: Settings, revision: str) -> None:
    connection = await asyncpg.connect(_url(settings))
    try:
        await connection.execute("UPDATE alembic_version SET version_num = $1", revision)
    finally:
        await connection.close()


async def test_a_newer_versions_dump_is_refused(settings: Settings) -> None:
    """A pg_dump of a database a newer version made (revision 9999): verify says so, and
    the restore refuses it before pg_restore changes anything."""
    service = DatabaseBackup(settings)
    await _add_user(settings, "alice")
    await _set_revision(settings, "9999")
    try:
        info = await asyncio.to_thread(service.create_backup)
    finally:
        await _set_revision(settings, script_head())  # the shared database outlives the test
    assert info is not None
    newer = "the backup is at schema revision 9999, which this version of ollama-web does not"
    problems = await asyncio.to_thread(service.verify, info.path)
    assert len(problems) == 1
    assert problems[0].startswith(newer)
    await _add_user(settings, "bob")
    with pytest.raises(RestoreRefusedError, match=newer):
        await asyncio.to_thread(service.restore_backup, info.path, True)
    assert await _usernames(settings) == {"alice", "bob"}


async def test_a_dump_of_another_programs_database_is_refused(
    settings_factory: Callable[..., Settings], empty_pg_database: str, db_backend: str
) -> None:
    """A users table and an alembic_version at our newest revision: the archive's table of
    contents lacks every other table, so it is no ollama-web database, and a server
    restored onto it would fail at every query."""
    connection = await asyncpg.connect(empty_pg_database)
    try:
        await connection.execute("CREATE TABLE users (id text PRIMARY KEY)")
        await connection.execute("CREATE TABLE alembic_version (version_num varchar(32))")
        await connection.execute("INSERT INTO alembic_version VALUES ($1)", script_head())
        await connection.execute("INSERT INTO users VALUES ('u1')")
    finally:
        await connection.close()
    service = DatabaseBackup(settings_factory(database_url=empty_pg_database))
    info = await asyncio.to_thread(service.create_backup)
    assert info is not None
    not_ours = (
        f"the backup is not an ollama-web database at revision {script_head()}: missing "
        "tables api_keys, audit_events, conversations, messages, user_sessions"
    )
    assert await asyncio.to_thread(service.verify, info.path) == [not_ours]
    with pytest.raises(RestoreRefusedError, match=not_ours):
        await asyncio.to_thread(service.restore_backup, info.path, True)


async def test_a_dump_at_an_older_revision_verifies(
    settings_factory: Callable[..., Settings], empty_pg_database: str, db_backend: str
) -> None:
    """Checked against the tables of its own revision, not of the newest one."""
    settings = settings_factory(database_url=empty_pg_database)
    engine = create_null_pool_engine(settings)
    try:
        await upgrade(engine, settings, "0005")
    finally:
        await engine.dispose()
    await _add_user(settings, "alice")
    service = DatabaseBackup(settings)
    info = await asyncio.to_thread(service.create_backup)
    assert info is not None
    assert await asyncio.to_thread(service.verify, info.path) == []


async def _writer(url: str, writer: int, stop: asyncio.Event, log: list[tuple[int, float]]) -> None:
    connection = await asyncpg.connect(url)
    try:
        sequence = 0
        while not stop.is_set():
            sequence += 1
            await connection.execute(
                "INSERT INTO writes (writer, seq) VALUES ($1, $2)", writer, sequence
            )
            log.append((writer * 10_000_000 + sequence, time.monotonic()))
    finally:
        await connection.close()


async def test_backup_under_four_writers_restores_everything_committed_before_it(
    settings: Settings,
) -> None:
    await _add_user(settings, "alice")
    setup = await asyncpg.connect(_url(settings))
    await setup.execute("CREATE TABLE writes (writer integer, seq integer)")
    await setup.close()
    stop = asyncio.Event()
    logs: list[list[tuple[int, float]]] = [[] for _ in range(WRITERS)]
    tasks = [asyncio.create_task(_writer(_url(settings), n, stop, logs[n])) for n in range(WRITERS)]
    try:
        while min(len(log) for log in logs) < 50:
            await asyncio.sleep(0.01)
        began = time.monotonic()
        info = await asyncio.to_thread(DatabaseBackup(settings).create_backup, "under load")
        ended = time.monotonic()
        await asyncio.sleep(0.1)
    finally:
        stop.set()
        await asyncio.gather(*tasks)
    assert info is not None
    before = {key for log in logs for key, at in log if at < began}
    after = {key for log in logs for key, at in log if at > ended}
    assert after, "the writers kept writing during and after the backup"
    await asyncio.to_thread(DatabaseBackup(settings).restore_backup, info.path, True)
    check = await asyncpg.connect(_url(settings))
    try:
        rows = await check.fetch("SELECT writer * 10000000 + seq FROM writes")
    finally:
        await check.close()
    restored = {row[0] for row in rows}
    assert before <= restored
    assert not (after & restored)
    for writer in range(WRITERS):
        sequences = sorted(key % 10_000_000 for key in restored if key // 10_000_000 == writer)
        assert sequences == list(range(1, len(sequences) + 1))


@pytest.mark.parametrize("verified", [False, True])
async def test_a_database_url_with_libpq_sslmode_backs_up_with_that_sslmode(
    settings: Settings, settings_factory: Callable[..., Settings], verified: bool
) -> None:
    """The engine gets asyncpg's `ssl=`, pg_dump gets PGSSLMODE: both from `sslmode=`; and
    the server's CA (`sslrootcert`) reaches both."""
    query = "sslmode=disable"
    if verified:
        query = f"sslmode=verify-full&sslrootcert={require_postgres_ca()}&connect_timeout=5"
    with_sslmode = settings_factory(database_url=f"{_url(settings)}?{query}")
    service = DatabaseBackup(with_sslmode)
    environment = libpq_environment(with_sslmode.async_database_url)
    assert environment["PGSSLMODE"] == ("verify-full" if verified else "disable")
    if verified:
        assert environment["PGSSLROOTCERT"] == require_postgres_ca()
        assert environment["PGCONNECT_TIMEOUT"] == "5"
    await _add_user(settings, "alice")
    info = await asyncio.to_thread(service.create_backup, "test")
    assert info is not None
    assert await asyncio.to_thread(service.verify, info.path) == []


async def test_a_backup_taken_through_the_api_is_audited_under_its_name(app: FastAPI) -> None:
    """The audit row's target is the backup's file name, longer than an id (it was refused
    by PostgreSQL, and the route answered 500 after writing the backup)."""
    admin = await create_test_user(app, role="admin")
    async with asgi_client(app) as client:
        created = await client.post("/backup", headers=admin.headers)
        assert created.status_code == 201, created.text
        name = created.json()["name"]
        audit = await client.get("/api/admin/audit?action=backup.created", headers=admin.headers)
    assert len(name) > 32
    assert [item["target_id"] for item in audit.json()["items"]] == [name]


async def test_an_unchanged_database_is_not_backed_up_again_at_start_or_stop(
    settings: Settings,
) -> None:
    """Two dumps of an unchanged database differ only in their creation time: a startup
    or shutdown backup (`unless_unchanged`) of it is not taken; any change is."""
    await _add_user(settings, "alice")
    service = DatabaseBackup(settings)
    first = await asyncio.to_thread(service.create_backup, "startup")
    assert first is not None
    assert first.content_sha256 is not None
    await asyncio.sleep(1.1)  # another second in the dump's creation time
    again = await asyncio.to_thread(
        functools.partial(service.create_backup, "shutdown", unless_unchanged=True)
    )
    asked = await asyncio.to_thread(service.create_backup, "manual")
    assert again == first
    assert asked is not None
    assert asked.name != first.name
    assert asked.sha256 != first.sha256, "the archives differ (their creation time)"
    assert asked.content_sha256 == first.content_sha256

    await _add_user(settings, "bob")
    changed = await asyncio.to_thread(
        functools.partial(service.create_backup, "shutdown", unless_unchanged=True)
    )
    assert changed is not None
    assert changed.content_sha256 != first.content_sha256
    assert [info.reason for info in service.list_backups()] == ["shutdown", "manual", "startup"]


def _path_without(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, missing: str) -> None:
    """PATH holds PostgreSQL's client tools but `missing` (installed in part)."""
    tools = tmp_path / f"bin-without-{missing}"
    tools.mkdir()
    for tool in TOOLS:
        found = shutil.which(tool)
        assert found is not None
        if tool != missing:
            (tools / tool).symlink_to(found)
    monkeypatch.setenv("PATH", str(tools))


NO_PG_RESTORE = (
    "the backup could not be checked, which says nothing about it: pg_restore cannot be run "
    "(not installed); install PostgreSQL's client tools on this host, and try again"
)


async def test_verify_without_pg_restore_answers_that_the_check_could_not_run(
    app: FastAPI, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """pg_restore not on PATH: verify answered 200 {valid: false, problems: ["pg_restore is
    not installed"]}, a sound backup called damaged. The check could not run: 503."""
    admin = await create_test_user(app, role="admin")
    async with asgi_client(app) as client:
        name = (await client.post("/backup", headers=admin.headers)).json()["name"]
        with monkeypatch.context() as patched:
            _path_without(patched, tmp_path, "pg_restore")
            unchecked = await client.post(f"/backup/{name}/verify", headers=admin.headers)
        verified = await client.post(f"/backup/{name}/verify", headers=admin.headers)
    assert unchecked.status_code == 503, unchecked.text
    body = unchecked.json()
    assert (body["error"], body["message"]) == ("BACKUP_CHECK_FAILED", NO_PG_RESTORE)
    assert body["details"] == {"reason": "not installed"}
    assert verified.json() == {"name": name, "valid": True, "problems": []}


async def test_the_commands_without_pg_restore_could_not_check_the_backup(
    settings: Settings,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """`backup --verify` said the backup was damaged (exit 1); `restore` said "pg_restore
    is not installed" as well when pg_dump was the one missing. Without pg_restore the
    check cannot run (74); without another tool the restore is refused naming it (1)."""
    await _add_user(settings, "alice")
    info = await asyncio.to_thread(DatabaseBackup(settings).create_backup)
    assert info is not None
    await _add_user(settings, "bob")
    command_environment(monkeypatch, settings, tmp_path, _url(settings))
    with monkeypatch.context() as patched:
        _path_without(patched, tmp_path, "pg_restore")
        assert main(["backup", "--verify", info.name]) == EXIT_NOT_CHECKED
        assert main(["restore", info.name, "--force"]) == EXIT_NOT_CHECKED
    with monkeypatch.context() as patched:
        _path_without(patched, tmp_path, "pg_dump")
        assert main(["restore", info.name, "--force"]) == 1
    assert capsys.readouterr().err.splitlines() == [
        f"{info.name}: {NO_PG_RESTORE}",
        f"restore refused, nothing was changed: {NO_PG_RESTORE}",
        "restore refused, nothing was changed: pg_dump is not installed on this host (a "
        "restore needs pg_dump, pg_restore and psql): install PostgreSQL's client tools",
    ]
    assert await _usernames(settings) == {"alice", "bob"}
