"""Backups inside the server: startup/shutdown/scheduled backups, /backup routes, /health,
the server lock, and the pre-migration backup."""

from __future__ import annotations

import asyncio
import errno
import hashlib
import json
import logging
import os
import shutil
import time
from collections.abc import Awaitable, Callable
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
from fastapi import FastAPI

from ollama_web.backups import DatabaseBackup, names
from ollama_web.backups.errors import RestoreRefusedError
from ollama_web.backups.lifespan import RestoreInProgressError
from ollama_web.backups.locks import (
    FileLock,
    database_lock_path,
    holding,
    server_lock_path,
    server_lock_paths,
)
from ollama_web.core.config import Settings
from ollama_web.keys.service import _KEY_LOOKUP
from ollama_web.migrations.runner import upgrade_settings
from tests.backups.conftest import AppMaker, SettingsMaker, add_user_sqlite, fill, refuse_to_open
from tests.conftest import asgi_client
from tests.fixtures.auth import create_test_user
from tests.fixtures.logs import app_warnings

STATUS_FIELDS = {
    "enabled", "mode", "directory", "last_backup", "count", "total_size_bytes",
    "retention_days", "max_count", "next_scheduled_at", "free_bytes",
}  # fmt: skip
LAST_BACKUP_FIELDS = {"name", "created_at", "size_bytes", "sha256", "duration_ms"}


def _reasons(backup_dir: Path) -> list[str | None]:
    """The reasons of the backups in BACKUP_DIR, oldest first."""
    backups = sorted(
        backup_dir.glob("ollama_web_backup_*.db.gz"), key=lambda p: names.sort_key(p.name)
    )
    return [json.loads(names.metadata_path(path).read_text())["reason"] for path in backups]


def _disk_full(self: DatabaseBackup, work: Path) -> None:
    """`DatabaseBackup._write_archive` on a full disk."""
    raise OSError(errno.ENOSPC, "No space left on device", str(work))


async def _two_workers_after_a_failed_backup(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> tuple[Any, Any]:
    """Two workers' backup runtimes; the first (the leader) just failed a scheduled backup
    on a full disk, which is over now."""
    from ollama_web.backups.runtime import BackupRuntime

    add_user_sqlite(settings, "alice")
    leader, other = BackupRuntime(DatabaseBackup(settings)), BackupRuntime(DatabaseBackup(settings))
    with monkeypatch.context() as patched:
        patched.setattr(DatabaseBackup, "_write_archive", _disk_full)
        await leader.automatic_backup("scheduled")
    return leader, other


async def test_backups_at_startup_and_shutdown_once_there_are_users(
    sqlite_settings: SettingsMaker,
) -> None:
    settings = sqlite_settings(backup_enabled=True, backup_interval_hours=0)
    from ollama_web.app import create_app

    app = create_app(settings)
    async with app.router.lifespan_context(app):
        assert _reasons(settings.backup_dir) == [], "no users yet: nothing to back up"
        await create_test_user(app, role="admin")
    assert _reasons(settings.backup_dir) == ["shutdown"]
    add_user_sqlite(settings, "bob")  # changed while no server ran
    async with app.router.lifespan_context(app):
        # Taken in the background: the server is ready before it is written.
        await app.state.backups.startup_backup_done()
        assert _reasons(settings.backup_dir) == ["shutdown", "startup"]
        await create_test_user(app)
    assert _reasons(settings.backup_dir) == ["shutdown", "startup", "shutdown"]


async def test_a_server_restarted_in_a_loop_keeps_the_older_backups(
    sqlite_settings: SettingsMaker, caplog: pytest.LogCaptureFixture
) -> None:
    """Its port taken, say, under systemd's Restart=: a start and a stop every few seconds.
    Each took two backups of the same database, and BACKUP_MAX_COUNT of them deleted every
    older one. Now a startup or shutdown backup of a database as in the newest backup is
    not taken; any change is (and a scheduled or asked-for backup always is)."""
    from ollama_web.app import create_app

    settings = sqlite_settings(backup_enabled=True, backup_interval_hours=0, backup_max_count=3)
    add_user_sqlite(settings, "alice")
    service = DatabaseBackup(settings)
    older = [service.create_backup("older"), service.create_backup("older")]
    add_user_sqlite(settings, "bob")
    app = create_app(settings)
    for _ in range(6):
        async with app.router.lifespan_context(app):
            await app.state.backups.startup_backup_done()
    assert _reasons(settings.backup_dir) == ["older", "older", "startup"]
    assert all(info is not None and info.path.exists() for info in older)
    assert "no new backup (shutdown): the database is as in ollama_web_backup_" in caplog.text

    async with app.router.lifespan_context(app):
        await app.state.backups.startup_backup_done()
        await create_test_user(app)
    assert _reasons(settings.backup_dir) == ["older", "startup", "shutdown"]
    manual = service.create_backup("manual")  # asked for: taken, unchanged or not
    assert manual is not None
    assert _reasons(settings.backup_dir) == ["startup", "shutdown", "manual"]
    newest = service.list_backups()[0]
    assert newest.content_sha256 is not None
    assert newest.content_sha256 == service.list_backups()[1].content_sha256


async def test_the_startup_backup_does_not_hold_readiness(
    sqlite_settings: SettingsMaker, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A large database takes long to copy: the server answers meanwhile."""
    import threading

    from ollama_web.app import create_app

    settings = sqlite_settings(backup_enabled=True, backup_interval_hours=0)
    add_user_sqlite(settings, "alice")
    release = threading.Event()
    original = DatabaseBackup.create_backup

    def slow_backup(self: DatabaseBackup, *args: Any, **kwargs: Any) -> Any:
        assert release.wait(30)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(DatabaseBackup, "create_backup", slow_backup)
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        async with asgi_client(app) as client:
            assert (await client.get("/health/live")).status_code == 200
        assert _reasons(settings.backup_dir) == []
        release.set()
        await app.state.backups.startup_backup_done()
        assert _reasons(settings.backup_dir) == ["startup"]
        await create_test_user(app)
    assert _reasons(settings.backup_dir) == ["startup", "shutdown"]


async def test_periodic_backups_follow_the_interval(
    backup_app: AppMaker, sqlite_settings: SettingsMaker
) -> None:
    settings = sqlite_settings()
    add_user_sqlite(settings, "alice")
    app = await backup_app(backup_enabled=True, backup_interval_hours=3 / 3600)
    await app.state.backups.startup_backup_done()
    admin = await create_test_user(app, role="admin")
    async with asgi_client(app) as client:
        status = (await client.get("/backup/status", headers=admin.headers)).json()
        assert status["count"] == 1  # the startup backup
        due = datetime.fromisoformat(status["next_scheduled_at"])
        last = datetime.fromisoformat(status["last_backup"]["created_at"])
        assert (due - last).total_seconds() == pytest.approx(3)
        for _ in range(100):
            await asyncio.sleep(0.1)
            if (await client.get("/backup/status", headers=admin.headers)).json()["count"] >= 2:
                break
    assert "scheduled" in _reasons(settings.backup_dir)


async def test_a_failed_automatic_backup_shows_in_health_without_server_paths(
    backup_app: AppMaker, sqlite_settings: SettingsMaker, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The public /health says the last backup failed and why, in the OS's words, without
    the file name an OS error carries (the log has it)."""
    settings = sqlite_settings()
    add_user_sqlite(settings, "alice")
    full = str(settings.backup_dir / ".tmp-work")

    def disk_full(self: DatabaseBackup, work: Path) -> None:
        raise OSError(errno.ENOSPC, "No space left on device", full)

    monkeypatch.setattr(DatabaseBackup, "_write_archive", _disk_full)
    app = await backup_app(backup_enabled=True)
    await app.state.backups.startup_backup_done()
    async with asgi_client(app) as client:
        component = (await client.get("/health")).json()["components"]["backups"]
    assert component["status"] == "degraded"
    assert component["error"] == "startup: the backup failed: No space left on device"
    assert full not in json.dumps(component)


async def test_a_failed_manual_backup_shows_in_health_until_one_succeeds(
    backup_app: AppMaker, sqlite_settings: SettingsMaker, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The last attempt's state, whatever took it: a backup through the API that fails
    turns the component degraded (a scheduled one did already), the next success clears it."""
    settings = sqlite_settings()
    add_user_sqlite(settings, "alice")
    write_archive = DatabaseBackup._write_archive

    app = await backup_app()
    admin = await create_test_user(app, role="admin")
    async with asgi_client(app) as client:
        monkeypatch.setattr(DatabaseBackup, "_write_archive", _disk_full)
        with app_warnings("ollama_web.backups", logging.ERROR) as records:
            failed = await client.post("/backup", headers=admin.headers)
        degraded = (await client.get("/health")).json()["components"]["backups"]
        monkeypatch.setattr(DatabaseBackup, "_write_archive", write_archive)
        taken = await client.post("/backup", headers=admin.headers)
        healthy = (await client.get("/health")).json()["components"]["backups"]
    assert (failed.status_code, failed.json()["error"]) == (503, "BACKUP_FAILED")
    assert degraded["status"] == "degraded"
    assert degraded["error"] == "manual (API): the backup failed: No space left on device"
    # The operator's log says so too, as it does for an automatic backup.
    (error,) = [record.getMessage() for record in records]
    assert error.startswith("manual backup (API) failed: ")
    assert "No space left on device" in error
    assert taken.status_code == 201, taken.text
    assert healthy["status"] == "healthy"


async def test_a_failed_backup_shows_in_the_health_of_every_worker(
    sqlite_settings: SettingsMaker, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Only one worker takes the automatic backups; /health may be answered by any: the
    last attempt's failure is kept in DATA_DIR, not in that worker's memory (/health was
    healthy or degraded by which worker answered)."""
    settings = sqlite_settings(backup_enabled=True)
    leader, other = await _two_workers_after_a_failed_backup(settings, monkeypatch)
    degraded = other.health()
    await leader.automatic_backup("scheduled")
    assert degraded["status"] == "degraded"
    assert degraded["error"] == "scheduled: the backup failed: No space left on device"
    assert other.health()["status"] == "healthy"


def _state_unwritable(monkeypatch: pytest.MonkeyPatch, settings: Settings) -> None:
    """DATA_DIR full: the last attempt's state file cannot be written (backups can)."""
    from ollama_web.backups import runtime

    write = runtime.write_atomically

    def full(path: Path, text: str) -> None:
        if path.parent == settings.data_dir:
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        write(path, text)

    monkeypatch.setattr(runtime, "write_atomically", full)


async def test_a_backup_taken_after_a_failure_clears_health_when_data_dir_is_full(
    sqlite_settings: SettingsMaker, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A failure recorded in DATA_DIR, then DATA_DIR full: the next backup succeeded but
    could not clear the record, and every worker's /health said the old failure for good
    beside the newer backup."""
    settings = sqlite_settings(backup_enabled=True)
    leader, other = await _two_workers_after_a_failed_backup(settings, monkeypatch)
    assert other.health()["status"] == "degraded"
    _state_unwritable(monkeypatch, settings)
    await asyncio.sleep(1)  # a backup's name has whole seconds: one started after the failure
    with app_warnings("ollama_web.backups") as records:
        await leader.automatic_backup("scheduled")
    assert "cannot record the backup attempt" in records[0].getMessage()
    assert json.loads((settings.data_dir / ".backup-last-attempt.json").read_text())["error"]
    assert leader.health()["status"] == "healthy"
    assert other.health()["status"] == "healthy"


async def test_a_failure_that_cannot_be_recorded_still_shows_in_its_workers_health(
    sqlite_settings: SettingsMaker, monkeypatch: pytest.MonkeyPatch
) -> None:
    """DATA_DIR full and the backup failing: the failure could not be written to the state
    file, and /health said healthy while no backup was being taken."""
    from ollama_web.backups.runtime import BackupRuntime

    settings = sqlite_settings(backup_enabled=True)
    add_user_sqlite(settings, "alice")
    runtime = BackupRuntime(DatabaseBackup(settings))
    await runtime.automatic_backup("scheduled")
    assert runtime.health()["status"] == "healthy"

    monkeypatch.setattr(DatabaseBackup, "_write_archive", _disk_full)
    _state_unwritable(monkeypatch, settings)
    await asyncio.sleep(1)
    await runtime.automatic_backup("scheduled")
    component = runtime.health()
    assert component["status"] == "degraded"
    assert component["error"] == "scheduled: the backup failed: No space left on device"


def unlistable(monkeypatch: pytest.MonkeyPatch, directory: Path) -> None:
    """`directory` cannot be listed, as one without read permission (chmod 300, another
    owner) for the service's user. (Simulated: root reads any directory.)"""
    iterdir = Path.iterdir

    def refused(path: Path) -> Any:
        if path == directory:
            raise PermissionError(errno.EACCES, "Permission denied", str(path))
        return iterdir(path)

    monkeypatch.setattr(Path, "iterdir", refused)


async def test_a_backup_directory_that_cannot_be_listed_is_a_degraded_component(
    backup_app: AppMaker, sqlite_settings: SettingsMaker, monkeypatch: pytest.MonkeyPatch
) -> None:
    """BACKUP_DIR without read permission (a chmod, another owner): listing it raised out
    of the backups check and /health answered 500. (Simulated: root reads any directory.)"""
    settings = sqlite_settings()
    add_user_sqlite(settings, "alice")
    app = await backup_app(backup_enabled=True)
    unlistable(monkeypatch, settings.backup_dir)
    async with asgi_client(app) as client:
        response = await client.get("/health")
    assert response.status_code == 200, response.text
    component = response.json()["components"]["backups"]
    assert component["status"] == "degraded"
    assert component["error"] == "the backup directory cannot be read: Permission denied"
    assert str(settings.backup_dir) not in json.dumps(component)


async def test_the_scheduler_outlives_a_backup_directory_that_cannot_be_listed(
    sqlite_settings: SettingsMaker, monkeypatch: pytest.MonkeyPatch
) -> None:
    """BACKUP_DIR unreadable for a while (a chmod, a remount), its lock already held: the
    scheduler's look at the newest backup raised out of its task, which ended for good
    (no periodic backup until a restart), and its error came back at shutdown."""
    from ollama_web.app import create_app

    settings = sqlite_settings(backup_enabled=True, backup_interval_hours=1 / 3600)
    add_user_sqlite(settings, "alice")
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        runtime = app.state.backups
        await runtime.startup_backup_done()
        with monkeypatch.context() as patch:
            unlistable(patch, settings.backup_dir)
            await asyncio.sleep(2.5)  # the scheduler looks each second
            assert runtime._task is not None
            assert not runtime._task.done()
        before = len(runtime.service.list_backups())
        for _ in range(100):  # readable again: the periodic backups resume
            await asyncio.sleep(0.1)
            if len(runtime.service.list_backups()) > before:
                break
        assert len(runtime.service.list_backups()) > before
    log = (settings.log_dir / "app.log").read_text()
    said = [line for line in log.splitlines() if "automatic backups are waiting" in line]
    assert len(said) == 1, said  # once, not at every look
    assert f"the backup directory {settings.backup_dir} cannot be read" in said[0]


async def test_a_backup_directory_where_no_backup_can_be_taken_shows_in_health(
    backup_app: AppMaker, sqlite_settings: SettingsMaker, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A read-only BACKUP_DIR: no worker could take the scheduler lock, so no automatic
    backup was ever tried, nothing was logged, and /health said healthy for ever."""
    settings = sqlite_settings()
    add_user_sqlite(settings, "alice")
    acquire = FileLock.acquire

    def read_only(lock: FileLock, **kwargs: Any) -> None:
        if lock.path.parent == settings.backup_dir:
            raise OSError(errno.EROFS, "Read-only file system", str(lock.path))
        acquire(lock, **kwargs)

    monkeypatch.setattr(FileLock, "acquire", read_only)
    app = await backup_app(backup_enabled=True, backup_interval_hours=1 / 3600)
    await asyncio.sleep(2.5)  # the scheduler tries again, each second
    async with asgi_client(app) as client:
        component = (await client.get("/health")).json()["components"]["backups"]
    assert component["status"] == "degraded"
    assert component["error"] == "automatic backups cannot run: Read-only file system"
    log = (settings.log_dir / "app.log").read_text()
    said = [line for line in log.splitlines() if "automatic backups cannot run" in line]
    assert len(said) == 1, said  # once, not at every try
    assert str(settings.backup_dir) in said[0]  # the log names the directory; /health not
    assert str(settings.backup_dir) not in json.dumps(component)


async def test_files_a_killed_backup_or_restore_left_are_removed_at_the_next_start(
    backup_app: AppMaker, sqlite_settings: SettingsMaker
) -> None:
    """A restore or a verification killed while it unpacked a backup beside the database
    left a copy as large as the database, for ever; a killed backup left its work files
    until a later backup succeeded. An hour on, the next start removes them; younger ones
    may belong to a process still running, and stay."""
    settings = sqlite_settings()
    data, backups = settings.data_dir, settings.backup_dir
    backups.mkdir(exist_ok=True)
    old = [data / ".restore-0a1b.db", backups / ".tmp-0a1b", backups / ".tmp-0a1b.db"]
    young = [data / ".restore-2c3d.db", backups / ".tmp-2c3d"]
    kept = [data / "notes.txt", backups / ".scheduler.lock"]
    for path in old + young + kept:
        path.write_bytes(b"x")
    an_hour_ago = time.time() - 3700
    for path in old + kept:
        os.utime(path, (an_hour_ago, an_hour_ago))
    await backup_app()
    assert [path for path in old if path.exists()] == []
    assert all(path.exists() for path in young + kept)


async def test_a_backup_dated_in_the_future_is_not_the_newest(
    backup_app: AppMaker, sqlite_settings: SettingsMaker
) -> None:
    """Taken while the clock was ahead (a VM resumed with a wrong time): it was reported as
    the last backup with a negative age, healthy, and the next scheduled backup was due
    after it, years on. Now the real newest counts, and /health says what is wrong."""
    settings = sqlite_settings()
    add_user_sqlite(settings, "alice")
    app = await backup_app(backup_enabled=True, backup_interval_hours=24)
    runtime = app.state.backups
    await runtime.startup_backup_done()
    [taken] = DatabaseBackup(settings).list_backups()
    future = settings.backup_dir / "ollama_web_backup_20990101_000000.db.gz"
    shutil.copyfile(taken.path, future)
    names.checksum_path(future).write_text(f"{taken.sha256}  {future.name}\n")
    status, health = runtime.status(), runtime.health()
    assert status["last_backup"]["name"] == taken.name
    due = datetime.fromisoformat(status["next_scheduled_at"])
    assert (due - taken.created_at).total_seconds() == 24 * 3600
    assert health["last_backup_at"] == taken.created_at.isoformat()
    assert 0 <= health["age_seconds"] < 60
    assert health["status"] == "degraded"
    assert health["error"].startswith(f"{future.name} is dated in the future")


async def test_backup_routes_for_admins(backup_app: AppMaker) -> None:
    app = await backup_app()
    admin = await create_test_user(app, role="admin")
    user = await create_test_user(app)
    async with asgi_client(app) as client:
        for method, path in (
            ("POST", "/backup"),
            ("GET", "/backup/status"),
            ("GET", "/backup/list"),
        ):
            assert (await client.request(method, path)).status_code == 401
            assert (await client.request(method, path, headers=user.headers)).status_code == 403
        created = await client.post("/backup", headers=admin.headers)
        assert created.status_code == 201
        body = created.json()
        path = app.state.settings.backup_dir / body["name"]
        assert body["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
        second = (await client.post("/backup", headers=admin.headers)).json()
        status = (await client.get("/backup/status", headers=admin.headers)).json()
        listed = (await client.get("/backup/list?limit=1", headers=admin.headers)).json()
        page_two = await client.get(
            f"/backup/list?limit=1&cursor={listed['next_cursor']}", headers=admin.headers
        )
        one = await client.get(f"/backup/{body['name']}", headers=admin.headers)
        verified = await client.post(f"/backup/{body['name']}/verify", headers=admin.headers)
        bad_cursor = await client.get("/backup/list?cursor=abc.def", headers=admin.headers)
        health = (await client.get("/health")).json()["components"]["backups"]
        audit = await client.get("/api/admin/audit?action=backup.created", headers=admin.headers)
    assert set(status) == STATUS_FIELDS
    assert set(status["last_backup"]) == LAST_BACKUP_FIELDS
    assert status["last_backup"]["name"] == second["name"]
    assert status["count"] == 2
    assert status["enabled"] is False  # BACKUP_ENABLED=false: no automatic backups
    assert status["mode"] == "sqlite"
    assert status["free_bytes"] > 0
    assert status["total_size_bytes"] >= body["size_bytes"]
    assert [item["name"] for item in listed["items"]] == [second["name"]]
    assert [item["name"] for item in page_two.json()["items"]] == [body["name"]]
    assert page_two.json()["next_cursor"] is None
    assert one.json()["sha256"] == body["sha256"]
    assert verified.json() == {"name": body["name"], "valid": True, "problems": []}
    assert bad_cursor.status_code == 400
    assert bad_cursor.json()["error"] == "INVALID_CURSOR"
    assert health["status"] == "healthy"
    assert audit.status_code == 200
    assert any(item["target_id"] == body["name"] for item in audit.json()["items"])


async def test_verify_reports_a_tampered_backup(backup_app: AppMaker) -> None:
    app = await backup_app()
    admin = await create_test_user(app, role="admin")
    async with asgi_client(app) as client:
        name = (await client.post("/backup", headers=admin.headers)).json()["name"]
        path = app.state.settings.backup_dir / name
        data = bytearray(path.read_bytes())
        data[-10] ^= 0x01
        path.write_bytes(bytes(data))
        verified = (await client.post(f"/backup/{name}/verify", headers=admin.headers)).json()
    assert verified["valid"] is False
    assert "sha256 mismatch" in verified["problems"][0]


async def test_verify_answers_503_when_the_backup_cannot_be_unpacked_to_be_checked(
    small_data_dir: Path, backup_app: AppMaker
) -> None:
    """DATA_DIR full: verify answered 200 {valid: false, "cannot be decompressed"} of a
    sound backup. The check could not run: a 503 that says so, the path left to the log."""
    app = await backup_app()
    admin = await create_test_user(app, role="admin")
    async with asgi_client(app) as client:
        name = (await client.post("/backup", headers=admin.headers)).json()["name"]
        filler = fill(small_data_dir, leave=64 * 1024)  # room for the request's own writes
        with app_warnings("ollama_web.backups", logging.ERROR) as records:
            unchecked = await client.post(f"/backup/{name}/verify", headers=admin.headers)
        filler.unlink()
        verified = await client.post(f"/backup/{name}/verify", headers=admin.headers)
    assert unchecked.status_code == 503, unchecked.text
    body = unchecked.json()
    assert body["error"] == "BACKUP_CHECK_FAILED"
    assert body["message"].startswith("the backup could not be checked, which says nothing")
    assert body["details"] == {"reason": "No space left on device"}
    assert str(small_data_dir) not in unchecked.text
    (logged,) = [record.getMessage() for record in records]
    assert logged.startswith(f"backup {name} could not be checked: [Errno 28]")
    assert verified.json() == {"name": name, "valid": True, "problems": []}


async def test_routes_answer_503_when_the_backup_directory_cannot_be_read(
    backup_app: AppMaker, monkeypatch: pytest.MonkeyPatch
) -> None:
    """BACKUP_DIR without read permission while the server runs: status, list, one backup
    and verify answered 500 INTERNAL_ERROR (a PermissionError's traceback in the log). The
    server cannot do this now: 503, in the OS's words, the path left to the log."""
    app = await backup_app()
    admin = await create_test_user(app, role="admin")
    backup_dir = app.state.settings.backup_dir
    async with asgi_client(app) as client:
        name = (await client.post("/backup", headers=admin.headers)).json()["name"]
        unlistable(monkeypatch, backup_dir)
        with app_warnings("ollama_web", logging.ERROR) as records:
            answers = [
                await client.request(method, url, headers=admin.headers)
                for method, url in (
                    ("GET", "/backup/status"),
                    ("GET", "/backup/list"),
                    ("GET", f"/backup/{name}"),
                    ("POST", f"/backup/{name}/verify"),
                )
            ]
    for response in answers:
        assert response.status_code == 503, response.text
        body = response.json()
        assert body["error"] == "BACKUP_DIR_UNAVAILABLE"
        assert body["message"] == "the backup directory cannot be read: Permission denied"
        assert body["details"] == {"reason": "Permission denied"}
        assert str(backup_dir) not in response.text
    logged = [record.getMessage() for record in records]
    assert logged == [f"the backup directory {backup_dir} cannot be read: Permission denied"] * 4
    assert all(record.exc_info is None for record in records)  # one line, no traceback


async def test_verify_answers_503_when_the_backup_cannot_be_read(
    backup_app: AppMaker, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The archive root's 0600, its sidecars readable: it is listed, and its sha256 could
    not be computed. Verify answered 500; the check could not run, which says nothing
    about the backup: 503, the path left to the log. (Simulated: root reads any file.)"""
    app = await backup_app()
    admin = await create_test_user(app, role="admin")
    async with asgi_client(app) as client:
        name = (await client.post("/backup", headers=admin.headers)).json()["name"]
        archive = app.state.settings.backup_dir / name
        refuse_to_open(monkeypatch, archive)
        with app_warnings("ollama_web", logging.ERROR) as records:
            unchecked = await client.post(f"/backup/{name}/verify", headers=admin.headers)
    assert unchecked.status_code == 503, unchecked.text
    assert unchecked.json()["error"] == "BACKUP_CHECK_FAILED"
    assert unchecked.json()["message"] == (
        f"the backup could not be checked, which says nothing about it: {name} cannot be "
        "read (Permission denied); make it readable, and try again"
    )
    assert str(archive.parent) not in unchecked.text
    (logged,) = [record.getMessage() for record in records]
    assert (
        logged == f"backup {name} could not be checked: [Errno 13] Permission denied: '{archive}'"
    )


@pytest.mark.parametrize(
    ("sidecar", "problem"),
    [
        (b"\xff\xfe", "is not text: it was altered or damaged"),
        (b"", "is empty"),
        (b"not-a-checksum  x.db.gz\n", None),
    ],
)
async def test_a_damaged_sidecar_lists_its_backup_as_damaged(
    backup_app: AppMaker, sidecar: bytes, problem: str | None
) -> None:
    """A .sha256 of bytes that are not UTF-8 went up from every listing as a
    UnicodeDecodeError (/backup/status, /backup/list and /health answered 500); then such a
    backup, and one with an empty sidecar, was left out of the list: the admin could not
    see or check it, and it was never pruned. It is listed, with sha256 null, and its check
    says it is damaged."""
    app = await backup_app()
    admin = await create_test_user(app, role="admin")
    async with asgi_client(app) as client:
        sound = (await client.post("/backup", headers=admin.headers)).json()["name"]
        damaged = (await client.post("/backup", headers=admin.headers)).json()["name"]
        checksum = names.checksum_path(app.state.settings.backup_dir / damaged)
        checksum.write_bytes(sidecar)
        status = await client.get("/backup/status", headers=admin.headers)
        listed = await client.get("/backup/list", headers=admin.headers)
        health = await client.get("/health")
        verified = await client.post(f"/backup/{damaged}/verify", headers=admin.headers)
    assert status.status_code == 200, status.text
    assert status.json()["count"] == 2
    assert status.json()["last_backup"]["name"] == damaged
    assert status.json()["last_backup"]["sha256"] is None
    items = listed.json()["items"]
    assert [(item["name"], item["sha256"] is None) for item in items] == [
        (damaged, True),
        (sound, False),
    ]
    assert health.status_code == 200, health.text
    assert verified.status_code == 200, verified.text
    assert verified.json()["valid"] is False
    expected = (
        f"the checksum file {checksum.name} {problem}"
        if problem
        else "sha256 mismatch: the backup was altered or damaged since it was taken"
    )
    assert verified.json()["problems"] == [expected]


async def test_names_from_requests_must_be_listed_backups(
    backup_app: AppMaker, tmp_path: Path
) -> None:
    app = await backup_app()
    admin = await create_test_user(app, role="admin")
    secret = tmp_path / "outside.db.gz"
    secret.write_bytes(b"secret")
    async with asgi_client(app) as client:
        name = (await client.post("/backup", headers=admin.headers)).json()["name"]
        for hostile in (
            "../../../../etc/passwd",
            "..%2F..%2Fetc%2Fpasswd",
            "/etc/passwd",
            f"{name}/../../outside.db.gz",
            "..",
            "ollama_web_backup_20240101_000000.db.gz",
            name + "\x00",
            "A" * 5000,
        ):
            for method, suffix in (("GET", ""), ("POST", "/verify")):
                url = f"/backup/{quote(hostile, safe='')}{suffix}"
                response = await client.request(method, url, headers=admin.headers)
                assert response.status_code in (404, 422), (hostile, response.status_code)
                assert response.json()["error"] in (
                    "BACKUP_NOT_FOUND",
                    "NOT_FOUND",
                    "VALIDATION_ERROR",
                )
                assert "secret" not in response.text


async def test_a_running_server_blocks_restore(
    backup_app: AppMaker, sqlite_settings: SettingsMaker
) -> None:
    settings = sqlite_settings()
    add_user_sqlite(settings, "alice")
    info = DatabaseBackup(settings).create_backup()
    assert info is not None
    await backup_app()
    with pytest.raises(RestoreRefusedError, match="a server is using this database"):
        DatabaseBackup(settings).restore_backup(info.path, force=True)


async def test_a_running_server_blocks_a_restore_given_another_data_dir(
    backup_app: AppMaker, sqlite_settings: SettingsMaker, tmp_path: Path
) -> None:
    """The restore names the server's database through DATABASE_URL, from another DATA_DIR
    and through another spelling of its path (a linked directory): it still refuses, since
    the server also holds a lock beside the database file itself."""
    settings = sqlite_settings()
    add_user_sqlite(settings, "alice")
    info = DatabaseBackup(settings).create_backup()
    assert info is not None
    await backup_app()
    (tmp_path / "link").symlink_to(settings.data_dir)
    elsewhere = sqlite_settings(
        data_dir=tmp_path / "other-data-dir",
        database_url=f"sqlite:///{tmp_path / 'link' / 'ollama_web.db'}",
    )
    with pytest.raises(RestoreRefusedError, match="a server is using this database"):
        DatabaseBackup(elsewhere).restore_backup(info.path, force=True)


async def test_a_server_will_not_start_during_a_restore_from_another_data_dir(
    sqlite_settings: SettingsMaker,
) -> None:
    from ollama_web.app import create_app

    settings = sqlite_settings()
    database = DatabaseBackup(settings).database_path
    restore_lock = FileLock(database_lock_path(database))
    restore_lock.acquire()  # what a restore given DATABASE_URL and another DATA_DIR holds
    try:
        app = create_app(settings)
        with pytest.raises(RestoreInProgressError, match=r"ollama_web\.db\.server\.lock"):
            async with app.router.lifespan_context(app):
                pass
    finally:
        restore_lock.release()
    with holding(server_lock_path(settings.data_dir)):  # the one taken first was let go
        pass


async def test_a_server_will_not_start_during_a_restore(sqlite_settings: SettingsMaker) -> None:
    from ollama_web.app import create_app

    settings = sqlite_settings()
    restore_lock = FileLock(server_lock_path(settings.data_dir))
    restore_lock.acquire()  # what `ollama-web restore` holds while it works
    try:
        app = create_app(settings)
        with pytest.raises(RestoreInProgressError):
            async with app.router.lifespan_context(app):
                pass
    finally:
        restore_lock.release()


async def test_the_server_lock_is_released_after_the_database_is_closed(
    sqlite_settings: SettingsMaker, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A restore may start the moment the locks are free: by then this process holds no
    handle on the database (engine pool and inline connection closed)."""
    from ollama_web.app import create_app

    app = create_app(settings := sqlite_settings())
    seen: list[tuple[int, bool]] = []
    release = FileLock.release

    def recording_release(lock: FileLock) -> None:
        if lock.path in server_lock_paths(settings):
            core = app.state.core
            seen.append((core.engine.pool.checkedin(), core.inline._opened is None))
        release(lock)

    monkeypatch.setattr(FileLock, "release", recording_release)
    async with app.router.lifespan_context(app):
        await create_test_user(app, role="admin")  # the engine's connections used
        app.state.core.inline.first(_KEY_LOOKUP, {"key_hash": "h"})  # and the inline one
        assert app.state.core.inline._opened is not None
    assert seen == [(0, True), (0, True)]  # the lock beside the database, then DATA_DIR's
    assert not Path(f"{settings.data_dir / 'ollama_web.db'}-wal").exists()


async def test_a_migration_of_an_existing_database_is_preceded_by_a_backup(
    sqlite_settings: SettingsMaker, tmp_path: Path
) -> None:
    from ollama_web.backups.lifespan import install_migration_hook
    from ollama_web.core.db import create_null_pool_engine
    from ollama_web.migrations.runner import upgrade

    install_migration_hook()
    settings = sqlite_settings(data_dir=tmp_path / "old", backup_enabled=True)
    settings.data_dir.mkdir(parents=True)
    engine = create_null_pool_engine(settings)
    try:
        await upgrade(engine, settings, revision="0001")
    finally:
        await engine.dispose()
    add_user_sqlite(settings, "alice")
    before = await upgrade_settings(settings)
    assert before.current == "0001"
    backups = DatabaseBackup(settings).list_backups()
    assert len(backups) == 1
    assert backups[0].reason is not None
    assert backups[0].reason.startswith("before migrating 0001 ->")
    shutil.rmtree(settings.backup_dir)
    assert await upgrade_settings(settings), "an up-to-date database needs no backup"
    assert not settings.backup_dir.exists()


async def test_a_migration_tried_again_and_again_keeps_the_backups_from_before_it(
    sqlite_settings: SettingsMaker, tmp_path: Path
) -> None:
    """A start that fails in its migration, restarted for ever by systemd: each try took a
    backup before migrating, and the retention deleted the older ones, until every backup
    from before the upgrade was gone. The failed tries changed nothing (one transaction):
    one backup before the migration is kept, and none is taken again."""
    from sqlalchemy import event

    from ollama_web.backups.lifespan import install_migration_hook
    from ollama_web.core.db import create_null_pool_engine
    from ollama_web.migrations.runner import upgrade

    install_migration_hook()
    settings = sqlite_settings(data_dir=tmp_path / "old", backup_enabled=True, backup_max_count=2)
    settings.data_dir.mkdir(parents=True)
    engine = create_null_pool_engine(settings)

    def fail(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        if statement.lstrip().startswith("CREATE TABLE _alembic_tmp_audit_events"):
            raise RuntimeError("the migration fails")

    try:
        await upgrade(engine, settings, revision="0009")
        add_user_sqlite(settings, "alice")
        earlier = DatabaseBackup(settings).create_backup("manual")
        assert earlier is not None
        event.listen(engine.sync_engine, "after_cursor_execute", fail)
        for _ in range(3):
            with pytest.raises(RuntimeError, match="the migration fails"):
                await upgrade(engine, settings)
        event.remove(engine.sync_engine, "after_cursor_execute", fail)
        assert not (await upgrade(engine, settings)).up_to_date  # it works at last
    finally:
        await engine.dispose()
    reasons = [b.reason for b in DatabaseBackup(settings).list_backups()]
    assert reasons[1:] == ["manual"]
    assert reasons[0] is not None
    assert reasons[0].startswith("before migrating 0009 -> ")


def test_postgres_without_pg_dump_reports_external_backups(
    settings_factory: SettingsMaker, monkeypatch: pytest.MonkeyPatch
) -> None:
    from ollama_web.backups import postgres

    settings = settings_factory(database_url="postgresql://nobody@127.0.0.1:9/none")
    monkeypatch.setattr(postgres.shutil, "which", lambda _name: None)
    service = DatabaseBackup(settings)
    assert service.mode == "external"
    from ollama_web.backups.errors import BackupsExternalError
    from ollama_web.backups.runtime import BackupRuntime

    with pytest.raises(BackupsExternalError):
        service.create_backup()
    status = BackupRuntime(service).status()
    assert status["mode"] == "external"
    assert status["enabled"] is False
    assert status["last_backup"] is None


def test_backup_lock_serialises_concurrent_backups(sqlite_settings: SettingsMaker) -> None:
    import concurrent.futures

    settings = sqlite_settings()
    add_user_sqlite(settings, "alice")
    service = DatabaseBackup(settings)
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        infos = list(pool.map(lambda _: service.create_backup(), range(4)))
    assert len({info.name for info in infos if info}) == 4
    assert len(service.list_backups()) == 4
    assert all(not service.verify(info.path) for info in infos if info)


async def test_a_server_starting_on_an_old_database_backs_it_up_then_migrates(
    app_factory: Callable[[Settings], Awaitable[FastAPI]],
    sqlite_settings: SettingsMaker,
    tmp_path: Path,
) -> None:
    """Startup migrations run in a forked child: the backup hook runs there too."""
    from ollama_web.core.db import create_null_pool_engine
    from ollama_web.migrations.runner import migration_status, script_head, upgrade
    from ollama_web.migrations.startup import begin_early_migration

    settings = sqlite_settings(data_dir=tmp_path / "old", backup_enabled=True)
    settings.data_dir.mkdir(parents=True)
    engine = create_null_pool_engine(settings)
    try:
        await upgrade(engine, settings, revision="0001")
        add_user_sqlite(settings, "alice")
        # `serve`'s early child only gives schemas to new databases: this one waits for
        # the lifespan, where the backup hook is registered.
        begin_early_migration(settings)
        app = await app_factory(settings)
        assert (await migration_status(engine)).current == script_head()
    finally:
        await engine.dispose()
    backups = DatabaseBackup(settings).list_backups()
    assert [b.reason for b in backups if b.reason and b.reason.startswith("before migrating")]
    async with asgi_client(app) as client:
        assert (await client.get("/health")).status_code == 200


@pytest.mark.parametrize("refused", ["lock", "listing"])
async def test_a_failed_backup_through_the_api_answers_without_server_paths(
    backup_app: AppMaker, monkeypatch: pytest.MonkeyPatch, refused: str
) -> None:
    """BACKUP_DIR not writable (its lock cannot be made) or not readable (a name cannot be
    claimed): the answer was "the backup failed: [Errno 13] Permission denied:
    '/abs/path/backups/.backup.lock'". The OS's words, as /health says them; the log has
    the path."""
    app = await backup_app()
    admin = await create_test_user(app, role="admin")
    backup_dir = app.state.settings.backup_dir
    if refused == "listing":
        unlistable(monkeypatch, backup_dir)
    else:
        acquire = FileLock.acquire

        def not_writable(lock: FileLock, **kwargs: Any) -> None:
            if lock.path.parent == backup_dir:
                raise PermissionError(errno.EACCES, "Permission denied", str(lock.path))
            acquire(lock, **kwargs)

        monkeypatch.setattr(FileLock, "acquire", not_writable)
    async with asgi_client(app) as client:
        with app_warnings("ollama_web.backups", logging.ERROR) as records:
            failed = await client.post("/backup", headers=admin.headers)
    assert failed.status_code == 503, failed.text
    assert failed.json()["error"] == "BACKUP_FAILED"
    assert failed.json()["message"] == "the backup failed: Permission denied"
    assert str(backup_dir) not in failed.text
    (logged,) = [record.getMessage() for record in records]
    assert logged.startswith("manual backup (API) failed: the backup failed: [Errno 13]")
    assert str(backup_dir) in logged


async def test_a_backup_taken_whose_audit_row_fails_is_still_answered_201(
    backup_app: AppMaker, sqlite_settings: SettingsMaker, monkeypatch: pytest.MonkeyPatch
) -> None:
    """DATA_DIR full, BACKUP_DIR not: the archive is written, then the audit row is refused.
    The answer was 503 DATABASE_UNAVAILABLE for a backup that exists (and a retry took
    another); it is the backup, and the log says what was lost."""
    import sqlite3

    from sqlalchemy.exc import OperationalError

    from ollama_web.backups import router

    async def disk_full(*_: Any, **__: Any) -> None:
        raise OperationalError("INSERT", {}, sqlite3.OperationalError("database or disk is full"))

    settings = sqlite_settings()
    add_user_sqlite(settings, "alice")
    app = await backup_app()
    admin = await create_test_user(app, role="admin")
    monkeypatch.setattr(router, "record_event", disk_full)
    with app_warnings("ollama_web.backups", logging.ERROR) as records:
        async with asgi_client(app) as client:
            taken = await client.post("/backup", headers=admin.headers)
            listed = (await client.get("/backup/list", headers=admin.headers)).json()["items"]
    assert taken.status_code == 201, taken.text
    assert [item["name"] for item in listed] == [taken.json()["name"]]
    assert [record.getMessage() for record in records] == [
        f"backup {taken.json()['name']} taken, but its audit event could not be stored: "
        "OperationalError: database or disk is full"
    ]
