"""SQLite backups: online copies under load, names, checksums, retention, and restore."""

from __future__ import annotations

import asyncio
import gzip
import hashlib
import json
import logging
import os
import sqlite3
import stat
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from ollama_web.backups import DatabaseBackup, names
from ollama_web.backups.errors import BackupCheckError, BackupError, RestoreRefusedError
from ollama_web.backups.locks import FileLock, server_lock_path
from ollama_web.backups.service import _claim_name
from ollama_web.core.db import create_null_pool_engine
from ollama_web.migrations.runner import known_revisions, script_head, upgrade
from tests.backups.conftest import (
    SettingsMaker,
    add_user_sqlite,
    fill,
    remount,
    usernames_sqlite,
)

WRITERS = 4


def test_no_backup_while_there_are_no_users(sqlite_settings: SettingsMaker) -> None:
    settings = sqlite_settings()
    assert DatabaseBackup(settings).create_backup() is None
    assert not settings.backup_dir.exists() or not any(settings.backup_dir.iterdir())


def test_a_backup_is_a_gzipped_sqlite_file_with_its_sha256(sqlite_settings: SettingsMaker) -> None:
    settings = sqlite_settings()
    add_user_sqlite(settings, "alice")
    info = DatabaseBackup(settings).create_backup("test")
    assert info is not None
    assert names.NAME_PATTERN.fullmatch(info.name)
    assert info.path.parent == settings.backup_dir
    digest = hashlib.sha256(info.path.read_bytes()).hexdigest()
    assert info.sha256 == digest
    assert names.checksum_path(info.path).read_text() == f"{digest}  {info.name}\n"
    metadata = json.loads(names.metadata_path(info.path).read_text())
    assert metadata["reason"] == "test"
    assert metadata["duration_ms"] >= 0
    restored = settings.backup_dir / "copy.db"
    restored.write_bytes(gzip.decompress(info.path.read_bytes()))
    connection = sqlite3.connect(restored)
    assert connection.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    assert connection.execute("SELECT username FROM users").fetchall() == [("alice",)]
    connection.close()
    assert not [p for p in settings.backup_dir.iterdir() if p.name.startswith(".tmp-")]


def test_backups_and_a_restored_database_are_private_whatever_the_umask(
    sqlite_settings: SettingsMaker,
) -> None:
    """They hold everything the database does (SECURITY.md: mode 0600), also when the
    command line runs under a permissive umask."""
    previous = os.umask(0o022)
    try:
        service, backup = _backup_with_alice(sqlite_settings)
        result = service.restore_backup(backup, force=True)
    finally:
        os.umask(previous)
    safety = service.find(result["safety_backup"])
    assert safety is not None
    for archive in (backup, safety.path):
        for path in (archive, names.checksum_path(archive), names.metadata_path(archive)):
            assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
    assert stat.S_IMODE(service.database_path.stat().st_mode) == 0o600
    assert stat.S_IMODE(service.settings.backup_dir.stat().st_mode) == 0o700


def test_names_get_a_suffix_when_two_fall_in_one_second(tmp_path: Path) -> None:
    moment = datetime(2024, 1, 1, 12, 0, 0, tzinfo=UTC)
    claimed = [_claim_name(tmp_path, moment, ".db.gz").name for _ in range(3)]
    assert claimed == [
        "ollama_web_backup_20240101_120000.db.gz",
        "ollama_web_backup_20240101_120000_1.db.gz",
        "ollama_web_backup_20240101_120000_2.db.gz",
    ]
    assert sorted(claimed, key=names.sort_key) == claimed


def test_retention_keeps_the_newest_max_count_and_drops_old_ones(
    sqlite_settings: SettingsMaker,
) -> None:
    settings = sqlite_settings(backup_max_count=3, backup_retention_days=30)
    add_user_sqlite(settings, "alice")
    service = DatabaseBackup(settings)
    old = settings.backup_dir / names.format_name(datetime.now(UTC) - timedelta(days=31), ".db.gz")
    settings.backup_dir.mkdir(parents=True, exist_ok=True)
    old.write_bytes(b"old")
    names.checksum_path(old).write_text(hashlib.sha256(b"old").hexdigest() + f"  {old.name}\n")
    first = service.create_backup()
    assert first is not None
    assert not old.exists(), "older than BACKUP_RETENTION_DAYS"
    assert not names.checksum_path(old).exists()
    taken = [first.name]
    for _ in range(4):
        info = service.create_backup()
        assert info is not None
        taken.append(info.name)
    listed = [info.name for info in service.list_backups()]
    assert listed == sorted(taken, key=names.sort_key, reverse=True)[:3]


@pytest.mark.parametrize("sidecar", [b"", b"\xff\xfe"])
def test_a_backup_whose_sidecar_was_damaged_is_pruned_by_age(
    sqlite_settings: SettingsMaker, sidecar: bytes
) -> None:
    """Its .sha256 emptied or overwritten with bytes that are not text: it was left out of
    the list, so retention never saw it, and it stayed in BACKUP_DIR for good."""
    settings = sqlite_settings(backup_max_count=10, backup_retention_days=30)
    add_user_sqlite(settings, "alice")
    service = DatabaseBackup(settings)
    old = settings.backup_dir / names.format_name(datetime.now(UTC) - timedelta(days=31), ".db.gz")
    settings.backup_dir.mkdir(parents=True, exist_ok=True)
    old.write_bytes(b"old")
    names.checksum_path(old).write_bytes(sidecar)
    assert [(info.name, info.sha256) for info in service.list_backups()] == [(old.name, None)]
    taken = service.create_backup()
    assert taken is not None
    assert not old.exists(), "older than BACKUP_RETENTION_DAYS"
    assert not names.checksum_path(old).exists()
    assert [info.name for info in service.list_backups()] == [taken.name]


def test_an_old_backup_that_cannot_be_removed_does_not_fail_the_new_one(
    sqlite_settings: SettingsMaker, caplog: pytest.LogCaptureFixture
) -> None:
    """Pruning after a backup deleted what retention drops; a file it could not remove
    made the backup just taken (written, checked) fail. Now it is a warning and the rest
    of the pruning goes on."""
    settings = sqlite_settings(backup_max_count=1, backup_retention_days=30)
    add_user_sqlite(settings, "alice")
    settings.backup_dir.mkdir(parents=True, exist_ok=True)
    stuck, old = (
        settings.backup_dir / names.format_name(datetime.now(UTC) - timedelta(days=d), ".db.gz")
        for d in (40, 35)
    )
    for path in (stuck, old):
        path.write_bytes(b"old")
        names.checksum_path(path).write_text(hashlib.sha256(b"old").hexdigest() + "\n")
    names.metadata_path(stuck).mkdir()  # a real EISDIR when pruning unlinks it
    service = DatabaseBackup(settings)
    with caplog.at_level(logging.WARNING, logger="ollama_web.backups"):
        taken = service.create_backup()
    assert taken is not None
    assert not old.exists(), "the prune went on past the one it could not remove"
    assert stuck.exists()
    assert [r.getMessage().split(":")[0] for r in caplog.records] == [
        f"cannot remove the old backup {stuck.name}"
    ]
    # Its sidecar went first: unlisted, the rest is an orphan, removed after an hour.
    assert [info.name for info in service.list_backups()] == [taken.name]


def _writer(
    database: Path, writer: int, stop: threading.Event, log: list[tuple[int, float]]
) -> None:
    connection = sqlite3.connect(database, timeout=30, isolation_level=None)
    connection.execute("PRAGMA busy_timeout=30000")
    sequence = 0
    while not stop.is_set():
        sequence += 1
        connection.execute("BEGIN IMMEDIATE")
        connection.execute("INSERT INTO writes (writer, seq) VALUES (?, ?)", (writer, sequence))
        connection.execute("COMMIT")
        log.append((writer * 10_000_000 + sequence, time.monotonic()))
    connection.close()


def test_backup_under_four_writers_restores_everything_committed_before_it(
    sqlite_settings: SettingsMaker, tmp_path: Path
) -> None:
    settings = sqlite_settings()
    add_user_sqlite(settings, "alice")
    database = DatabaseBackup(settings).database_path
    with sqlite3.connect(database) as connection:
        connection.execute("CREATE TABLE writes (writer INTEGER, seq INTEGER)")
    connection.close()
    stop = threading.Event()
    logs: list[list[tuple[int, float]]] = [[] for _ in range(WRITERS)]
    threads = [
        threading.Thread(target=_writer, args=(database, n, stop, logs[n])) for n in range(WRITERS)
    ]
    for thread in threads:
        thread.start()
    try:
        while min(len(log) for log in logs) < 50:
            time.sleep(0.01)
        began = time.monotonic()
        info = DatabaseBackup(settings).create_backup("under load")
        ended = time.monotonic()
        time.sleep(0.1)  # the writers go on after the backup
    finally:
        stop.set()
        for thread in threads:
            thread.join()
    assert info is not None
    before = {key for log in logs for key, at in log if at < began}
    after = {key for log in logs for key, at in log if at > ended}
    assert len(before) >= WRITERS * 50
    assert after, "the writers kept writing during and after the backup"

    target = sqlite_settings(data_dir=tmp_path / "restored", log_dir=tmp_path / "restored-logs")
    DatabaseBackup(target).restore_backup(info.path)
    restored_db = DatabaseBackup(target).database_path
    connection = sqlite3.connect(restored_db)
    try:
        assert connection.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        rows = connection.execute("SELECT writer * 10000000 + seq FROM writes").fetchall()
    finally:
        connection.close()
    restored = {row[0] for row in rows}
    assert before <= restored, f"{len(before - restored)} committed rows missing"
    assert not (after & restored), "nothing committed after the backup ended"
    for writer in range(WRITERS):
        sequences = sorted(key % 10_000_000 for key in restored if key // 10_000_000 == writer)
        assert sequences == list(range(1, len(sequences) + 1)), "a consistent prefix per writer"


def _backup_with_alice(sqlite_settings: SettingsMaker) -> tuple[DatabaseBackup, Path]:
    settings = sqlite_settings()
    add_user_sqlite(settings, "alice")
    service = DatabaseBackup(settings)
    info = service.create_backup()
    assert info is not None
    add_user_sqlite(settings, "bob")
    return service, info.path


def test_restore_needs_force_over_a_database_with_users_and_saves_it_first(
    sqlite_settings: SettingsMaker,
) -> None:
    service, backup = _backup_with_alice(sqlite_settings)
    with pytest.raises(RestoreRefusedError, match="force=True"):
        service.restore_backup(backup)
    assert usernames_sqlite(service.settings) == {"alice", "bob"}
    result = service.restore_backup(backup, force=True)
    assert usernames_sqlite(service.settings) == {"alice"}
    safety = service.find(result["safety_backup"])
    assert safety is not None
    assert safety.reason == "pre-restore safety backup"
    # The safety backup holds what was replaced, and restores like any other.
    service.restore_backup(safety.path, force=True)
    assert usernames_sqlite(service.settings) == {"alice", "bob"}


def test_a_restore_never_prunes_the_backup_it_restores(sqlite_settings: SettingsMaker) -> None:
    """With room for two backups, the safety backup of a restore from the oldest one would
    have pruned that very archive: the safety backup applies no retention."""
    settings = sqlite_settings(backup_max_count=2)
    add_user_sqlite(settings, "alice")
    service = DatabaseBackup(settings)
    oldest = service.create_backup()
    assert oldest is not None
    add_user_sqlite(settings, "bob")
    assert service.create_backup() is not None
    service.restore_backup(oldest.path, force=True)
    assert usernames_sqlite(settings) == {"alice"}
    assert oldest.path.exists()
    assert service.find(oldest.name) is not None
    assert len(service.list_backups()) == 3  # the next ordinary backup prunes


def test_force_restores_over_a_damaged_database_and_sets_it_aside(
    sqlite_settings: SettingsMaker,
) -> None:
    """A damaged database is the usual reason to restore: it cannot be backed up, so with
    --force it is renamed beside itself (kept as it was) and the restore goes on."""
    service, backup = _backup_with_alice(sqlite_settings)
    database = service.database_path
    for suffix in ("-wal", "-shm"):
        database.with_name(database.name + suffix).unlink(missing_ok=True)
    database.write_bytes(os.urandom(4096))
    with pytest.raises(RestoreRefusedError, match="cannot be read"):
        service.restore_backup(backup)
    result = service.restore_backup(backup, force=True)
    assert usernames_sqlite(service.settings) == {"alice"}
    kept = Path(result["safety_backup"])
    assert kept.parent == database.parent
    assert kept.name.startswith("ollama_web.db.set-aside-")
    assert len(kept.read_bytes()) == 4096


def test_force_never_sets_a_sound_database_aside_when_its_backup_fails(
    sqlite_settings: SettingsMaker, monkeypatch: pytest.MonkeyPatch
) -> None:
    """BACKUP_DIR full (or read-only): the safety backup fails, but the database is sound;
    it was renamed aside as a damaged one is, outside BACKUP_DIR, where `restore` cannot
    bring it back. Now the restore is refused and nothing changes."""
    service, backup = _backup_with_alice(sqlite_settings)  # bob came after it

    def disk_full(self: DatabaseBackup, work: Path) -> None:
        raise sqlite3.OperationalError("database or disk is full")

    monkeypatch.setattr(DatabaseBackup, "_write_archive", disk_full)
    with pytest.raises(RestoreRefusedError, match="the current database is sound"):
        service.restore_backup(backup, force=True)
    assert usernames_sqlite(service.settings) == {"alice", "bob"}
    database = service.database_path
    assert not list(database.parent.glob("*.set-aside-*"))


def test_a_backup_directory_that_cannot_be_made_is_a_backup_error(
    sqlite_settings: SettingsMaker, tmp_path: Path
) -> None:
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("x")
    settings = sqlite_settings(backup_dir=blocker)
    add_user_sqlite(settings, "alice")
    with pytest.raises(BackupError, match="the backup failed"):
        DatabaseBackup(settings).create_backup()


def _tamper(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


def _resign(path: Path) -> None:
    """An attacker who also rewrites the checksum sidecar."""
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    names.checksum_path(path).write_text(f"{digest}  {path.name}\n")


def _rewrite(path: Path, statement: str, work: Path) -> None:
    """Change the database inside a backup, and re-sign it (a valid backup of that database)."""
    database = work / "rewritten.db"
    database.write_bytes(gzip.decompress(path.read_bytes()))
    with sqlite3.connect(database) as connection:
        connection.execute(statement)
    connection.close()
    path.write_bytes(gzip.compress(database.read_bytes()))
    _resign(path)


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        ("flip a byte", "sha256 mismatch"),
        ("truncate and re-sign", "cannot be decompressed"),
        ("a damaged deflate stream, re-signed", "cannot be decompressed: .*invalid block type"),
        ("not sqlite, re-signed", "not a usable SQLite database"),
        ("corrupt pages, re-signed", "failed its check"),
        ("other database, re-signed", "no users table"),
        ("only a users table, re-signed", "no alembic_version table"),
        (
            "another program's users table at our revision, re-signed",
            r"the backup is not an ollama-web database at revision 00\d\d: missing tables "
            r"api_keys, audit_events, conversations, messages, messages_fts and \d+ more$",
        ),
        ("a column dropped, re-signed", r"at revision 00\d\d: missing columns users\.email$"),
        ("no revision, re-signed", "records 0 schema revisions"),
        (
            "a newer version's, re-signed",
            r"at schema revision 9999, which this version of ollama-web does not know \(its "
            r"newest is 00\d\d\): it was made by a newer version",
        ),
        ("no checksum file", "no checksum file"),
    ],
)
def test_a_corrupted_or_tampered_backup_is_refused_and_nothing_changes(
    sqlite_settings: SettingsMaker, tmp_path: Path, damage: str, message: str
) -> None:
    service, backup = _backup_with_alice(sqlite_settings)
    if damage == "flip a byte":
        _tamper(backup)
    elif damage == "truncate and re-sign":
        backup.write_bytes(backup.read_bytes()[:200])
        _resign(backup)
    elif damage == "a damaged deflate stream, re-signed":
        # A header without a file name: the deflate stream starts at byte 10, whose bits
        # 1-2 are the first block's type; 3 is reserved (zlib.error, not an OSError).
        raw = bytearray(gzip.compress(gzip.decompress(backup.read_bytes())))
        raw[10] |= 0b110
        backup.write_bytes(bytes(raw))
        _resign(backup)
    elif damage == "not sqlite, re-signed":
        backup.write_bytes(gzip.compress(b"this is not a database" * 100))
        _resign(backup)
    elif damage == "corrupt pages, re-signed":
        raw = bytearray(gzip.decompress(backup.read_bytes()))
        for offset in range(4096, len(raw), 4096):  # every page but the first one
            raw[offset : offset + 8] = b"\xff" * 8  # not a b-tree page's header
        backup.write_bytes(gzip.compress(bytes(raw)))
        _resign(backup)
    elif damage == "other database, re-signed":
        other = tmp_path / "other.db"
        with sqlite3.connect(other) as connection:
            connection.execute("CREATE TABLE notes (text TEXT)")
        connection.close()
        backup.write_bytes(gzip.compress(other.read_bytes()))
        _resign(backup)
    elif damage == "only a users table, re-signed":
        other = tmp_path / "other.db"
        with sqlite3.connect(other) as connection:
            connection.execute("CREATE TABLE users (id)")
        connection.close()
        backup.write_bytes(gzip.compress(other.read_bytes()))
        _resign(backup)
    elif damage == "another program's users table at our revision, re-signed":
        other = tmp_path / "other.db"
        with sqlite3.connect(other) as connection:
            connection.execute("CREATE TABLE users (id)")
            connection.execute("CREATE TABLE alembic_version (version_num)")
            connection.execute("INSERT INTO alembic_version VALUES (?)", (script_head(),))
        connection.close()
        backup.write_bytes(gzip.compress(other.read_bytes()))
        _resign(backup)
    elif damage == "a column dropped, re-signed":
        _rewrite(backup, "ALTER TABLE users DROP COLUMN email", tmp_path)
    elif damage == "no revision, re-signed":
        _rewrite(backup, "DELETE FROM alembic_version", tmp_path)
    elif damage == "a newer version's, re-signed":
        _rewrite(backup, "UPDATE alembic_version SET version_num = '9999'", tmp_path)
    else:
        names.checksum_path(backup).unlink()
    before = service.database_path.read_bytes()
    with pytest.raises(RestoreRefusedError, match=message):
        service.restore_backup(backup, force=True)
    assert service.database_path.read_bytes() == before
    assert usernames_sqlite(service.settings) == {"alice", "bob"}
    assert service.verify(backup), "verify reports the same problem"


@pytest.mark.parametrize("revision", sorted(known_revisions()))
def test_a_backup_at_each_revision_verifies_and_needs_that_revisions_tables(
    settings_factory: SettingsMaker, tmp_path: Path, revision: str
) -> None:
    """A real backup at any revision this version knows is sound (an older one is checked
    against what the migrations made up to it, not against the newest schema); the same
    backup without one of its tables is not an ollama-web database."""
    settings = settings_factory(data_dir=tmp_path / f"at-{revision}")
    settings.data_dir.mkdir()
    engine = create_null_pool_engine(settings)
    try:
        asyncio.run(upgrade(engine, settings, revision))
    finally:
        asyncio.run(engine.dispose())
    add_user_sqlite(settings, "alice")
    service = DatabaseBackup(settings)
    info = service.create_backup()
    assert info is not None
    assert service.verify(info.path) == []
    _rewrite(info.path, "DROP TABLE api_keys", tmp_path)
    assert service.verify(info.path) == [
        f"the backup is not an ollama-web database at revision {revision}: missing tables api_keys"
    ]


def test_a_backup_with_no_room_to_unpack_it_is_not_called_damaged(
    small_data_dir: Path, sqlite_settings: SettingsMaker
) -> None:
    """Verify and restore unpack the backup beside the database. With that filesystem full
    they said "the archive cannot be decompressed" of a sound backup (which an operator
    could delete for it): the check could not run, and they say that; nothing changes."""
    service, backup = _backup_with_alice(sqlite_settings)
    assert service.database_path.parent == small_data_dir
    filler = fill(small_data_dir)
    with pytest.raises(BackupCheckError) as verified:
        service.verify(backup)
    with pytest.raises(BackupCheckError) as restored:
        service.restore_backup(backup, force=True)
    left = [path.name for path in small_data_dir.iterdir()]
    filler.unlink()
    for error in (verified.value, restored.value):
        assert (error.status_code, error.code) == (503, "BACKUP_CHECK_FAILED")
        assert error.message.startswith("the backup could not be checked, which says nothing")
        assert "(No space left on device)" in error.message
        assert str(small_data_dir) not in error.message
    assert not [name for name in left if name.startswith(names.UNPACKED_PREFIX)]
    assert usernames_sqlite(service.settings) == {"alice", "bob"}
    assert service.verify(backup) == [], "the backup was sound all along"


def test_verify_on_a_read_only_filesystem_says_the_check_could_not_run(
    small_data_dir: Path, sqlite_settings: SettingsMaker
) -> None:
    """Also with nothing to clean up: removing the copy that was never made fails there
    too (EROFS, not ENOENT), and that error took the place of this one."""
    service, backup = _backup_with_alice(sqlite_settings)
    remount(small_data_dir, "ro")
    try:
        with pytest.raises(BackupCheckError, match=r"failed \(Read-only file system\)"):
            service.verify(backup)
    finally:
        remount(small_data_dir, "rw")
    assert service.verify(backup) == []


def test_restore_is_refused_while_a_server_holds_the_database(
    sqlite_settings: SettingsMaker,
) -> None:
    service, backup = _backup_with_alice(sqlite_settings)
    server = FileLock(server_lock_path(service.settings.data_dir))
    server.acquire(shared=True)
    try:
        with pytest.raises(RestoreRefusedError, match="a server is using this database"):
            service.restore_backup(backup, force=True)
    finally:
        server.release()
    assert usernames_sqlite(service.settings) == {"alice", "bob"}
    service.restore_backup(backup, force=True)
    assert usernames_sqlite(service.settings) == {"alice"}


def test_traversal_and_unlisted_names_are_not_found(
    sqlite_settings: SettingsMaker, tmp_path: Path
) -> None:
    service, backup = _backup_with_alice(sqlite_settings)
    outside = tmp_path / "secret.db.gz"
    outside.write_bytes(b"secret")
    link = service.directory / "ollama_web_backup_20990101_000000.db.gz"
    link.symlink_to(outside)
    names.checksum_path(link).write_text("0" * 64 + "  x\n")
    for name in (
        "../secret.db.gz",
        "../../etc/passwd",
        "/etc/passwd",
        f"{backup.name}/../../secret.db.gz",
        f"./{backup.name}",
        "ollama_web_backup_20240101_000000.db.gz",  # well-formed, not listed
        link.name,  # a link pointing outside BACKUP_DIR
        backup.name + "\x00.txt",
        "..",
        "",
    ):
        assert service.find(name) is None, name
    assert service.find(backup.name) is not None
    assert link.name not in [info.name for info in service.list_backups()]


def test_a_failed_atomic_write_leaves_neither_file_behind(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The state files are written beside the data (DATA_DIR): a write that fails (the
    disk full) left its empty temporary file there for good."""
    import errno

    from ollama_web.backups import service

    target = tmp_path / "state.json"
    target.write_text("old")

    def full(_: Path) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(service.sqlite, "fsync_file", full)
    with pytest.raises(OSError, match="No space"):
        service.write_atomically(target, "new")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["state.json"]
    assert target.read_text() == "old"
