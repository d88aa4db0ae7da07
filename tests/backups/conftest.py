"""Backups on real SQLite files (pre-migrated from the session template) and PostgreSQL."""

from __future__ import annotations

import shutil
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from fastapi import FastAPI

from ollama_web.backups import DatabaseBackup
from ollama_web.core.config import Settings

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
