"""Backups on real SQLite files (pre-migrated from the session template) and PostgreSQL."""

from __future__ import annotations

import errno
import os
import shutil
import subprocess
import sys
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi import FastAPI

from ollama_web.backups import DatabaseBackup
from ollama_web.core.config import Settings
from tests.fixtures.commands import command_environment
from tests.fixtures.privileges import unprivileged

SettingsMaker = Callable[..., Settings]
AppMaker = Callable[..., Awaitable[FastAPI]]


@pytest.fixture
def sqlite_settings(
    settings_factory: SettingsMaker, sqlite_template: Path, tmp_path: Path
) -> SettingsMaker:
    """Settings for a migrated SQLite database in tmp_path/data (copied once per test)."""

    def make(**overrides: Any) -> Settings:
        data_dir = tmp_path / "data"
        data_dir.mkdir(exist_ok=True)
        database = data_dir / "ollama_web.db"
        if not database.exists():
            shutil.copyfile(sqlite_template, database)
        return settings_factory(**overrides)

    return make


@pytest.fixture
def small_data_dir(tmp_path: Path) -> Iterator[Path]:
    """tmp_path/data on a 1 MiB tmpfs of its own, which `fill` fills for real (ENOSPC)
    without touching the host's disk; skipped where a tmpfs cannot be mounted (mounting
    needs root, or CAP_SYS_ADMIN)."""
    if shutil.which("mount") is None:
        pytest.skip("mount (util-linux) is not installed")
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=1m,mode=0700", "tmpfs", str(data_dir)],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs: {mounted.stderr.strip() or mounted.returncode}")
    try:
        yield data_dir
    finally:
        subprocess.run(["umount", "--lazy", str(data_dir)], capture_output=True, check=True)


def remount(directory: Path, mode: str) -> None:
    """Remount `small_data_dir` read-only ("ro") or read-write ("rw")."""
    subprocess.run(["mount", "-o", f"remount,{mode}", str(directory)], check=True)


def fill(directory: Path, leave: int = 0) -> Path:
    """Fill the filesystem of `directory` with a file until `leave` bytes or fewer are free:
    what wants more is told ENOSPC. Returns the file (remove it to make room again)."""
    filler = directory / "filler"
    descriptor = os.open(filler, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        while _free_bytes(directory) > leave:
            os.write(descriptor, b"\0" * 4096)
    except OSError as exc:
        if exc.errno != errno.ENOSPC:
            raise
    finally:
        os.close(descriptor)
    return filler


def _free_bytes(directory: Path) -> int:
    usage = os.statvfs(directory)
    return usage.f_bavail * usage.f_frsize


@pytest.fixture
def backup_app(
    app_factory: Callable[[Settings], Awaitable[FastAPI]], sqlite_settings: SettingsMaker
) -> AppMaker:
    async def make(**overrides: Any) -> FastAPI:
        return await app_factory(sqlite_settings(**overrides))

    return make


def add_user_sqlite(settings: Settings, username: str) -> None:
    """A user row written straight into the SQLite file (no server needed)."""
    import sqlite3

    from ollama_web.db.base import new_id

    database = DatabaseBackup(settings).database_path
    with sqlite3.connect(database) as connection:
        connection.execute(
            "INSERT INTO users (id, username, username_key, password_hash, role, is_active,"
            " created_at, updated_at, password_changed_at)"
            " VALUES (?, ?, ?, 'x', 'user', 1, CURRENT_TIMESTAMP, CURRENT_TIMESTAMP,"
            " CURRENT_TIMESTAMP)",
            (new_id(), username, username.lower()),
        )
    connection.close()


def usernames_sqlite(settings: Settings) -> set[str]:
    import sqlite3

    connection = sqlite3.connect(DatabaseBackup(settings).database_path)
    try:
        return {row[0] for row in connection.execute("SELECT username FROM users")}
    finally:
        connection.close()


@pytest.fixture
def environment(
    sqlite_settings: SettingsMaker, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> SettingsMaker:
    """The CLI reads its settings from the environment: point it at the test directories."""
    command_environment(monkeypatch, sqlite_settings(), tmp_path, BACKUP_ENABLED="true")
    return sqlite_settings


def run_unprivileged(*arguments: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    """`ollama-web ARGUMENTS` as the service's user would run it (root reads anything)."""
    return subprocess.run(
        [*unprivileged(), sys.executable, "-m", "ollama_web", *arguments],
        env=dict(os.environ), input=stdin, capture_output=True, text=True, timeout=60,
        check=False,
    )  # fmt: skip


def refuse_to_open(monkeypatch: pytest.MonkeyPatch, file: Path) -> None:
    """`file` cannot be opened, as one of root's 0000 for the service's user (it is listed
    and stat works). (Simulated: root reads any file.)"""
    open_file = Path.open

    def refused(path: Path, *args: Any, **kwargs: Any) -> Any:
        if path == file:
            raise PermissionError(errno.EACCES, "Permission denied", str(path))
        return open_file(path, *args, **kwargs)

    monkeypatch.setattr(Path, "open", refused)
