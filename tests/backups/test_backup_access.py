"""Backups where this user's access falls short: a sidecar it cannot read, a DATA_DIR it
cannot list. A backup is reported for what it is, and a check that cannot run says so."""

from __future__ import annotations

from pathlib import Path

import pytest

from ollama_web.backups import DatabaseBackup, names
from tests.backups.conftest import (
    AppMaker,
    SettingsMaker,
    add_user_sqlite,
    refuse_to_open,
    run_unprivileged,
)
from tests.conftest import asgi_client
from tests.fixtures.auth import create_test_user


async def test_a_backup_whose_sidecar_cannot_be_read_is_listed_and_could_not_be_checked(
    backup_app: AppMaker, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Its archive is there and its sidecar too: it was left out of the list, so verify by
    name answered 404 where `backup --verify` said it could not be checked (74). It is
    listed (its sha256 unknown: null), and verify answers 503 BACKUP_CHECK_FAILED."""
    app = await backup_app()
    admin = await create_test_user(app, role="admin")
    async with asgi_client(app) as client:
        name = (await client.post("/backup", headers=admin.headers)).json()["name"]
        refuse_to_open(monkeypatch, names.checksum_path(app.state.settings.backup_dir / name))
        listed = await client.get("/backup/list", headers=admin.headers)
        status = await client.get("/backup/status", headers=admin.headers)
        one = await client.get(f"/backup/{name}", headers=admin.headers)
        verified = await client.post(f"/backup/{name}/verify", headers=admin.headers)
        health = await client.get("/health")
    assert [(item["name"], item["sha256"]) for item in listed.json()["items"]] == [(name, None)]
    assert status.status_code == 200, status.text
    assert (status.json()["count"], status.json()["last_backup"]["sha256"]) == (1, None)
    assert (one.status_code, one.json()["name"]) == (200, name)
    assert verified.status_code == 503, verified.text
    assert verified.json()["error"] == "BACKUP_CHECK_FAILED"
    assert verified.json()["message"] == (
        f"the backup could not be checked, which says nothing about it: {name}.sha256 cannot "
        "be read (Permission denied); make it readable, and try again"
    )
    assert health.status_code == 200, health.text
    assert health.json()["components"]["backups"]["status"] == "healthy"


def test_a_backup_whose_sidecar_cannot_be_read_is_listed_by_the_command(
    environment: SettingsMaker,
) -> None:
    """Root's 0000 sidecar, for the service's user: `backup --list` said "no backups"."""
    settings = environment()
    add_user_sqlite(settings, "alice")
    info = DatabaseBackup(settings).create_backup()
    assert info is not None
    sidecar = names.checksum_path(info.path)
    sidecar.chmod(0o000)
    try:
        listed = run_unprivileged("backup", "--list")
    finally:
        sidecar.chmod(0o600)
    assert listed.returncode == 0, listed.stderr
    assert [line.split()[0] for line in listed.stdout.splitlines()] == [info.name]


def test_a_backup_beside_a_data_dir_that_cannot_be_listed_is_reported_taken(
    environment: SettingsMaker,
) -> None:
    """DATA_DIR 0300 for the service's user (it can write and search it, not list it): the
    backup was written and checked, then the clean-up after it listed DATA_DIR for what a
    killed restore left, and `backup` said "the backup failed: Permission denied", exit 1.
    It is taken (exit 0, and it verifies); the clean-up it could not do is a warning."""
    settings = environment()
    add_user_sqlite(settings, "alice")
    settings.data_dir.chmod(0o300)
    try:
        taken = run_unprivileged("backup")
        name = Path(taken.stdout.split()[0]).name if taken.stdout else ""
        verified = run_unprivileged("backup", "--verify", name)
    finally:
        settings.data_dir.chmod(0o700)
    assert taken.returncode == 0, taken.stderr
    assert taken.stderr == (
        "cannot remove unfinished backup files: [Errno 13] Permission denied: "
        f"'{settings.data_dir}'\n"
    )
    assert [info.name for info in DatabaseBackup(settings).list_backups()] == [name]
    assert verified.returncode == 0, verified.stderr
