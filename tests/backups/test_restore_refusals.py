"""A restore that only a forced one would do is refused in the words of the surface asked:
`--force` on the command line, `force=True` from Python (there is no HTTP restore)."""

from __future__ import annotations

import os

import pytest

from ollama_web.backups import DatabaseBackup
from ollama_web.backups.errors import RestoreRefusedError
from ollama_web.cli import main
from ollama_web.core.config import Settings
from tests.backups.conftest import SettingsMaker, add_user_sqlite, usernames_sqlite

HAS_USERS = (
    "the current database has users; pass {} to replace it (a safety backup of it is taken first)"
)
UNREADABLE = (
    "the current database cannot be read (file is not a database); pass {} to set it aside "
    "and restore"
)


def _refused_restore(settings: Settings, database: str) -> str:
    """A backup of alice, then the current database with users (bob too) or damaged."""
    add_user_sqlite(settings, "alice")
    info = DatabaseBackup(settings).create_backup()
    assert info is not None
    if database == "damaged":
        path = DatabaseBackup(settings).database_path
        for suffix in ("-wal", "-shm"):
            path.with_name(path.name + suffix).unlink(missing_ok=True)
        path.write_bytes(os.urandom(4096))
        return info.name
    add_user_sqlite(settings, "bob")
    return info.name


@pytest.mark.parametrize(("database", "refusal"), [("users", HAS_USERS), ("damaged", UNREADABLE)])
def test_the_command_says_pass_force_as_its_option(
    environment: SettingsMaker, capsys: pytest.CaptureFixture[str], database: str, refusal: str
) -> None:
    """It said "pass --force (force=True)": the Python argument on a command line."""
    settings = environment()
    name = _refused_restore(settings, database)
    assert main(["restore", name]) == 1
    assert capsys.readouterr().err == (
        f"restore refused, nothing was changed: {refusal.format('--force')}\n"
    )
    if database == "users":
        assert usernames_sqlite(settings) == {"alice", "bob"}


@pytest.mark.parametrize(("database", "refusal"), [("users", HAS_USERS), ("damaged", UNREADABLE)])
def test_python_says_force_true_as_its_argument(
    sqlite_settings: SettingsMaker, database: str, refusal: str
) -> None:
    settings = sqlite_settings()
    name = _refused_restore(settings, database)
    with pytest.raises(RestoreRefusedError) as refused:
        DatabaseBackup(settings).restore_backup(settings.backup_dir / name)
    assert str(refused.value) == refusal.format("force=True")
