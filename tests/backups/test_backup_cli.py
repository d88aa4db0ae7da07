"""`ollama-web backup`, `ollama-web restore`, and scripts/backup_db.py."""

from __future__ import annotations

import asyncio
import errno
import os
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from ollama_web.backups import DatabaseBackup, names
from ollama_web.backups.cli import EXIT_NOT_CHECKED
from ollama_web.backups.locks import FileLock, server_lock_path, server_lock_paths
from ollama_web.cli import main
from ollama_web.core.config import Settings
from ollama_web.core.db import create_null_pool_engine
from ollama_web.core.startup import EXIT_DATABASE_ERROR
from ollama_web.migrations.runner import script_head, upgrade
from tests.backups.conftest import (
    SettingsMaker,
    add_user_sqlite,
    fill,
    run_unprivileged,
    usernames_sqlite,
)
from tests.fixtures.privileges import unprivileged

ROOT = Path(__file__).resolve().parents[2]


def test_backup_list_verify_and_restore(
    environment: SettingsMaker, capsys: pytest.CaptureFixture[str]
) -> None:
    settings = environment()
    assert main(["backup"]) == 0
    assert "no users yet" in capsys.readouterr().out
    add_user_sqlite(settings, "alice")
    assert main(["backup"]) == 0
    printed = capsys.readouterr().out
    name = Path(printed.split()[0]).name
    assert (settings.backup_dir / name).is_file()
    assert main(["backup", "--list"]) == 0
    assert name in capsys.readouterr().out
    assert main(["backup", "--verify", name]) == 0
    assert "ok" in capsys.readouterr().out

    add_user_sqlite(settings, "bob")
    assert main(["restore", name]) == 1
    assert "--force" in capsys.readouterr().err
    assert main(["restore", name, "--force"]) == 0
    assert "saved as ollama_web_backup_" in capsys.readouterr().out
    assert usernames_sqlite(settings) == {"alice"}


def test_list_and_verify_together_are_a_malformed_command_line(
    environment: SettingsMaker, capsys: pytest.CaptureFixture[str]
) -> None:
    environment()
    with pytest.raises(SystemExit) as info:
        main(["backup", "--list", "--verify", "x"])
    assert info.value.code == 2  # the usage, not a list that ignored --verify
    assert "not allowed with argument" in capsys.readouterr().err


@pytest.mark.parametrize("data_dir", ["missing", "a-file/below"])
def test_a_backup_with_no_database_file_fails_instead_of_saying_no_users(
    environment: SettingsMaker,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    data_dir: str,
) -> None:
    """A DATA_DIR that holds no database (a cron job's typo, a regular file in its place):
    exit 1 and the path, not "no users yet" and exit 0."""
    (tmp_path / "a-file").write_text("")
    monkeypatch.setenv("DATA_DIR", str(tmp_path / data_dir))
    assert main(["backup"]) == 1
    captured = capsys.readouterr()
    assert "no users yet" not in captured.out
    assert f"backup failed: there is no database at {tmp_path / data_dir}" in captured.err


def test_restore_refuses_while_a_server_runs_and_unknown_names(
    environment: SettingsMaker, capsys: pytest.CaptureFixture[str]
) -> None:
    settings = environment()
    add_user_sqlite(settings, "alice")
    info = DatabaseBackup(settings).create_backup()
    assert info is not None
    server = FileLock(server_lock_path(settings.data_dir))
    server.acquire(shared=True)
    try:
        assert main(["restore", info.name, "--force"]) == 1
        assert "a server is using this database" in capsys.readouterr().err
    finally:
        server.release()
    capsys.readouterr()
    # README: 1 for "an unknown backup name", as for an unknown user.
    assert main(["restore", "../../etc/shadow-does-not-exist"]) == 1
    assert main(["backup", "--verify", "ollama_web_backup_20000101_000000.db.gz"]) == 1
    assert capsys.readouterr().err.splitlines() == [
        "no such backup: ../../etc/shadow-does-not-exist (a listed name or an existing file)",
        "no such backup: ollama_web_backup_20000101_000000.db.gz",
    ]
    # An operator may name a backup file anywhere (its .sha256 must be next to it).
    assert main(["restore", str(info.path), "--force"]) == 0
    # A backup in BACKUP_DIR that lost its checksum file is not listed; named, the refusal
    # says what is missing rather than that there is no such backup.
    names.checksum_path(info.path).unlink()
    capsys.readouterr()
    assert main(["backup", "--verify", info.name]) == 1
    assert main(["restore", info.name, "--force"]) == 1
    for line in capsys.readouterr().err.splitlines():
        assert "no checksum file" in line, line


def test_a_backup_on_postgresql_without_pg_dump_fails_with_status_1(
    environment: SettingsMaker, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from ollama_web.backups import postgres

    environment()
    monkeypatch.setenv("DATABASE_URL", "postgresql://nobody@127.0.0.1:9/none")
    monkeypatch.setattr(postgres.shutil, "which", lambda _name: None)
    assert main(["backup"]) == 1
    assert capsys.readouterr().err == (
        "PostgreSQL backups are external: pg_dump, pg_restore and psql are not installed on "
        "this host.\n"
    )
    monkeypatch.setattr(postgres.shutil, "which", lambda name: None if name == "psql" else name)
    assert main(["backup"]) == 1  # the one missing is named, not pg_dump
    assert capsys.readouterr().err == (
        "PostgreSQL backups are external: psql is not installed on this host.\n"
    )


def _set_revision(settings: Settings, revision: str) -> None:
    with sqlite3.connect(DatabaseBackup(settings).database_path) as connection:
        connection.execute("UPDATE alembic_version SET version_num = ?", (revision,))
    connection.close()


def test_a_newer_versions_backup_is_refused_by_verify_and_restore(
    environment: SettingsMaker, capsys: pytest.CaptureFixture[str]
) -> None:
    """A real backup, with a valid sidecar, of a database a newer version made: nothing
    here would start on it, so it is refused before anything is replaced."""
    settings = environment()
    add_user_sqlite(settings, "alice")
    _set_revision(settings, "9999")
    info = DatabaseBackup(settings).create_backup()
    assert info is not None
    _set_revision(settings, script_head())
    add_user_sqlite(settings, "bob")
    capsys.readouterr()

    assert main(["backup", "--verify", info.name]) == 1
    assert main(["restore", info.name, "--force"]) == 1

    err = capsys.readouterr().err.splitlines()
    newer = (
        "the backup is at schema revision 9999, which this version of ollama-web does not "
        f"know (its newest is {script_head()})"
    )
    assert len(err) == 2
    assert err[0].startswith(f"{info.name}: {newer}")
    assert err[1].startswith(
        f"restore refused, nothing was changed: the backup failed its check: {newer}"
    )
    assert usernames_sqlite(settings) == {"alice", "bob"}


def test_an_older_versions_backup_is_restored_then_migrated(
    environment: SettingsMaker, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    settings = environment()
    older = environment(data_dir=tmp_path / "older")
    engine = create_null_pool_engine(older)
    try:
        asyncio.run(upgrade(engine, older, "0005"))
    finally:
        asyncio.run(engine.dispose())
    add_user_sqlite(older, "alice")
    info = DatabaseBackup(older).create_backup()
    assert info is not None

    assert main(["backup", "--verify", info.name]) == 0
    assert main(["restore", info.name, "--force"]) == 0
    assert main(["migrate"]) == 0
    assert f"upgraded 0005 -> {script_head()}" in capsys.readouterr().out
    assert usernames_sqlite(settings) == {"alice"}


def test_a_backup_with_no_room_to_unpack_it_is_not_called_damaged_by_the_commands(
    small_data_dir: Path, environment: SettingsMaker, capsys: pytest.CaptureFixture[str]
) -> None:
    """The check could not run (DATA_DIR full): not exit 1 and "cannot be decompressed",
    which a script (or an operator) takes for a damaged backup, but its own status."""
    settings = environment()
    add_user_sqlite(settings, "alice")
    info = DatabaseBackup(settings).create_backup()
    assert info is not None
    add_user_sqlite(settings, "bob")
    filler = fill(small_data_dir)
    capsys.readouterr()
    assert main(["backup", "--verify", info.name]) == EXIT_NOT_CHECKED
    assert main(["restore", info.name, "--force"]) == EXIT_NOT_CHECKED
    filler.unlink()
    unchecked = (
        "the backup could not be checked, which says nothing about it: unpacking it beside "
        "the database failed (No space left on device)"
    )
    verify_line, restore_line = capsys.readouterr().err.splitlines()
    assert verify_line.startswith(f"{info.name}: {unchecked}")
    assert restore_line.startswith(f"restore refused, nothing was changed: {unchecked}")
    assert usernames_sqlite(settings) == {"alice", "bob"}
    assert main(["backup", "--verify", info.name]) == 0


def test_verify_in_a_read_only_data_dir_says_the_check_could_not_run(
    environment: SettingsMaker,
) -> None:
    """A DATA_DIR the service's user cannot write (run as that user: root writes anyway)."""
    settings = environment()
    add_user_sqlite(settings, "alice")
    info = DatabaseBackup(settings).create_backup()
    assert info is not None
    settings.data_dir.chmod(0o500)
    try:
        result = subprocess.run(
            [*unprivileged(), sys.executable, "-m", "ollama_web", "backup", "--verify", info.name],
            env=dict(os.environ), capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
    finally:
        settings.data_dir.chmod(0o700)
    assert result.returncode == EXIT_NOT_CHECKED, result.stderr
    assert result.stderr == (
        f"{info.name}: the backup could not be checked, which says nothing about it: unpacking "
        "it beside the database failed (Permission denied); make room there, or make it "
        "writable, and try again\n"
    )


def test_restore_in_a_read_only_data_dir_says_the_check_could_not_run(
    environment: SettingsMaker,
) -> None:
    """DATA_DIR 0500 for the service's user, where a server ran (its lock files are
    there): the restore said "the archive cannot be decompressed: Permission denied", exit
    1, of a sound backup. It could not be checked (74), and nothing changed."""
    settings = environment()
    add_user_sqlite(settings, "alice")
    info = DatabaseBackup(settings).create_backup()
    assert info is not None
    add_user_sqlite(settings, "bob")
    for lock in server_lock_paths(settings):
        lock.touch(mode=0o600)  # as a server left them
    settings.data_dir.chmod(0o500)
    try:
        restored = run_unprivileged("restore", info.name, "--force")
    finally:
        settings.data_dir.chmod(0o700)
    assert restored.returncode == EXIT_NOT_CHECKED, restored.stderr
    assert restored.stderr == (
        "restore refused, nothing was changed: the backup could not be checked, which says "
        "nothing about it: unpacking it beside the database failed (Permission denied); make "
        "room there, or make it writable, and try again\n"
    )
    assert usernames_sqlite(settings) == {"alice", "bob"}


@pytest.mark.parametrize(
    ("mode", "command"),
    [(0o000, "verify"), (0o000, "restore"), (0o500, "restore")],
)
def test_a_data_dir_that_cannot_be_used_is_one_line_from_verify_and_restore(
    environment: SettingsMaker, mode: int, command: str
) -> None:
    """DATA_DIR another user's (here: 000, as root owns it), or 0500 where no server has
    run yet (no lock files to open): `backup --verify` printed the traceback of the
    clean-up's `Path.exists()`, `restore` the one of taking the server lock."""
    settings = environment()
    add_user_sqlite(settings, "alice")
    info = DatabaseBackup(settings).create_backup()
    assert info is not None
    settings.data_dir.chmod(mode)
    try:
        if command == "verify":
            result = run_unprivileged("backup", "--verify", info.name)
        else:
            result = run_unprivileged("restore", info.name, "--force")
    finally:
        settings.data_dir.chmod(0o700)
    if command == "verify":
        assert (result.returncode, result.stderr) == (
            EXIT_NOT_CHECKED,
            f"{info.name}: the backup could not be checked, which says nothing about it: "
            "unpacking it beside the database failed (Permission denied); make room there, "
            "or make it writable, and try again\n",
        )
    else:
        lock = server_lock_path(settings.data_dir)
        assert (result.returncode, result.stderr) == (
            1,
            f"restore refused, nothing was changed: the lock {lock} cannot be taken "
            "(Permission denied); run the restore as the user the server runs as\n",
        )
    assert usernames_sqlite(settings) == {"alice"}


@pytest.mark.parametrize("unreadable", ["archive", "sidecar"])
def test_a_backup_that_cannot_be_read_could_not_be_checked_by_the_commands(
    environment: SettingsMaker, unreadable: str
) -> None:
    """A backup file (or its .sha256) the service's user cannot read: verify and restore
    printed a PermissionError traceback (an unreadable sidecar was "no checksum file",
    exit 1: a sound backup called damaged). The check could not run: one line, exit 74."""
    settings = environment()
    add_user_sqlite(settings, "alice")
    info = DatabaseBackup(settings).create_backup()
    assert info is not None
    add_user_sqlite(settings, "bob")
    file = info.path if unreadable == "archive" else names.checksum_path(info.path)
    file.chmod(0o000)
    try:
        verified = run_unprivileged("backup", "--verify", info.name)
        restored = run_unprivileged("restore", info.name, "--force")
    finally:
        file.chmod(0o600)
    unchecked = (
        f"the backup could not be checked, which says nothing about it: {file.name} cannot be "
        "read (Permission denied); make it readable, and try again\n"
    )
    assert (verified.returncode, verified.stderr) == (
        EXIT_NOT_CHECKED,
        f"{info.name}: {unchecked}",
    )
    assert (restored.returncode, restored.stderr) == (
        EXIT_NOT_CHECKED,
        f"restore refused, nothing was changed: {unchecked}",
    )
    assert usernames_sqlite(settings) == {"alice", "bob"}


@pytest.mark.parametrize("mode", [0o000, 0o300])
def test_a_backup_directory_that_cannot_be_read_is_one_line_from_the_commands(
    environment: SettingsMaker, mode: int
) -> None:
    """BACKUP_DIR without read permission for the service's user: list, verify and restore
    printed a PermissionError traceback. One line each, naming the directory; verify and
    restore could not check the backup (74), which says nothing about it."""
    settings = environment()
    add_user_sqlite(settings, "alice")
    info = DatabaseBackup(settings).create_backup()
    assert info is not None
    settings.backup_dir.chmod(mode)
    try:
        listed = run_unprivileged("backup", "--list")
        verified = run_unprivileged("backup", "--verify", info.name)
        restored = run_unprivileged("restore", info.name, "--force")
    finally:
        settings.backup_dir.chmod(0o700)
    unreadable = f"the backup directory {settings.backup_dir} cannot be read: Permission denied\n"
    assert (listed.returncode, listed.stderr) == (1, f"cannot list the backups: {unreadable}")
    assert (verified.returncode, verified.stderr) == (
        EXIT_NOT_CHECKED,
        f"{info.name}: the backup could not be checked: {unreadable}",
    )
    assert (restored.returncode, restored.stderr) == (
        EXIT_NOT_CHECKED,
        f"restore refused, nothing was changed: {unreadable}",
    )
    assert usernames_sqlite(settings) == {"alice"}


def test_a_backup_of_a_data_dir_that_cannot_be_searched_is_one_line(
    environment: SettingsMaker,
) -> None:
    """DATA_DIR another user's 0700 (here: 000, as root owns it): `backup` printed the
    traceback of `is_file()`; exit 1 as for a missing database, and why."""
    settings = environment()
    add_user_sqlite(settings, "alice")
    settings.data_dir.chmod(0o000)
    try:
        taken = run_unprivileged("backup")
    finally:
        settings.data_dir.chmod(0o700)
    database = settings.data_dir / "ollama_web.db"
    assert (taken.returncode, taken.stderr) == (
        1,
        f"backup failed: the database {database} cannot be read: Permission denied\n",
    )
    assert not list(settings.backup_dir.glob("*.gz"))


@pytest.fixture
def pending_migration(
    environment: SettingsMaker, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> Settings:
    """DATA_DIR holds a database with users at an older schema revision: the commands
    that migrate take a backup first."""
    older = environment(data_dir=tmp_path / "older")
    engine = create_null_pool_engine(older)
    try:
        asyncio.run(upgrade(engine, older, "0005"))
    finally:
        asyncio.run(engine.dispose())
    add_user_sqlite(older, "alice")
    older.backup_dir.mkdir(exist_ok=True)
    monkeypatch.setenv("DATA_DIR", str(older.data_dir))
    return older


@pytest.mark.parametrize("mode", [0o500, 0o000])
def test_a_migration_refused_for_its_backup_is_one_line_and_exit_3(
    pending_migration: Settings, mode: int
) -> None:
    """The pre-migration backup cannot be taken (BACKUP_DIR not writable; not readable):
    `migrate`, `users list` and `create-admin` printed a 40-line traceback ending in
    RuntimeError, exit 1 (BACKUP_DIR 500), or blamed the database for the backup
    directory (000: "cannot use the database …: PermissionError: … 'backups'"). One line
    naming what failed, and exit 3, as `serve` does for this refusal."""
    backup_dir = pending_migration.backup_dir
    backup_dir.chmod(mode)
    password = "correct horse battery staple\n"
    create_admin = ("create-admin", "--username", "root", "--password-stdin")
    try:
        results = [
            run_unprivileged("migrate"),
            run_unprivileged("users", "list"),
            run_unprivileged(*create_admin, stdin=password),
        ]
    finally:
        backup_dir.chmod(0o700)
    failure = (
        f"the backup failed: [Errno 13] Permission denied: '{backup_dir / '.backup.lock'}'"
        if mode == 0o500
        else f"the backup directory {backup_dir} cannot be read: Permission denied"
    )
    refused = (
        f"error: refusing to migrate: the pre-migration backup failed ({failure}); fix it or "
        "set BACKUP_ENABLED=false to migrate without one\n"
    )
    for result in results:
        assert (result.returncode, result.stderr) == (EXIT_DATABASE_ERROR, refused)
    assert usernames_sqlite(pending_migration) == {"alice"}  # nothing created, not migrated


def test_serve_with_workers_refused_a_migration_in_one_line_and_exit_3(
    pending_migration: Settings,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """`serve --workers N` migrates once before its workers start: the same refusal was a
    traceback there, and exit 1; one worker's lifespan said it in one line, exit 3."""
    acquire = FileLock.acquire

    def not_writable(lock: FileLock, **kwargs: Any) -> None:
        if lock.path.parent == pending_migration.backup_dir:
            raise PermissionError(errno.EACCES, "Permission denied", str(lock.path))
        acquire(lock, **kwargs)

    monkeypatch.setattr(FileLock, "acquire", not_writable)
    monkeypatch.setenv("MIGRATE_ON_STARTUP", "true")
    monkeypatch.setattr("uvicorn.run", lambda *args, **kwargs: pytest.fail("uvicorn started"))
    assert main(["serve", "--workers", "2", "--port", "29107"]) == EXIT_DATABASE_ERROR
    (line,) = capsys.readouterr().err.splitlines()
    assert line.startswith("error: refusing to migrate: the pre-migration backup failed")


def test_a_sidecar_that_is_not_text_is_a_damaged_backup_for_the_commands(
    environment: SettingsMaker, capsys: pytest.CaptureFixture[str]
) -> None:
    """Verify and restore of a backup whose .sha256 is not UTF-8 printed the traceback of
    a UnicodeDecodeError: it is a damaged backup (exit 1), said in one line."""
    settings = environment()
    add_user_sqlite(settings, "alice")
    info = DatabaseBackup(settings).create_backup()
    assert info is not None
    names.checksum_path(info.path).write_bytes(b"\xff\xfe")
    capsys.readouterr()
    assert main(["backup", "--verify", info.name]) == 1
    assert main(["restore", info.name, "--force"]) == 1
    damaged = f"the checksum file {info.name}.sha256 is not text: it was altered or damaged"
    assert capsys.readouterr().err.splitlines() == [
        f"{info.name}: {damaged}",
        f"restore refused, nothing was changed: {damaged}",
    ]


def test_a_tampered_file_is_refused_by_the_command(
    environment: SettingsMaker, capsys: pytest.CaptureFixture[str]
) -> None:
    settings = environment()
    add_user_sqlite(settings, "alice")
    info = DatabaseBackup(settings).create_backup()
    assert info is not None
    data = info.path.read_bytes()
    info.path.write_bytes(data[:-1] + bytes([data[-1] ^ 0xFF]))
    assert main(["backup", "--verify", info.name]) == 1
    assert main(["restore", info.name, "--force"]) == 1
    assert "sha256 mismatch" in capsys.readouterr().err


@pytest.mark.slow
def test_backup_script_is_a_thin_wrapper(environment: SettingsMaker) -> None:
    settings = environment()
    add_user_sqlite(settings, "alice")
    completed = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "backup_db.py")],
        env=dict(os.environ),
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert completed.returncode == 0, completed.stderr
    assert len(DatabaseBackup(settings).list_backups()) == 1
