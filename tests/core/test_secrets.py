"""The generated secret in DATA_DIR: one complete key, mode 0600, even with workers racing."""

from __future__ import annotations

import errno
import logging
import multiprocessing
import os
import stat
from collections.abc import Callable
from multiprocessing.queues import Queue
from multiprocessing.synchronize import Barrier
from pathlib import Path

import pytest

from ollama_web.core.config import Settings
from ollama_web.core.secrets import load_or_create_secret, secret_file

WORKERS = 4
ROUNDS = 15


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.mark.parametrize("stored", ["", "   \n", "abc", "x" * 31])
def test_a_blank_or_short_key_file_is_replaced_with_a_warning(
    settings_factory: Callable[..., Settings],
    caplog: pytest.LogCaptureFixture,
    stored: str,
) -> None:
    settings = settings_factory(secret_key=None)
    path = secret_file(settings)
    path.parent.mkdir(parents=True)
    path.write_text(stored)
    path.chmod(0o600)
    with caplog.at_level(logging.WARNING, logger="ollama_web.core.secrets"):
        key = load_or_create_secret(settings)
    assert len(key) == 64
    assert path.read_text() == key
    assert _mode(path) == 0o600
    assert "too few for a key" in caplog.text
    assert load_or_create_secret(settings) == key
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no temporary left


def test_a_key_file_readable_by_others_is_made_0600(
    settings_factory: Callable[..., Settings],
) -> None:
    settings = settings_factory(secret_key=None)
    path = secret_file(settings)
    path.parent.mkdir(parents=True)
    path.write_text("k" * 64)
    path.chmod(0o644)
    assert load_or_create_secret(settings) == "k" * 64
    assert _mode(path) == 0o600


def test_a_key_that_cannot_be_tightened_is_used_and_a_symlinks_target_left_alone(
    settings_factory: Callable[..., Settings],
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    """A read-only volume (a mounted secret is often 0644) keeps its key in use; a key file
    that is a symlink never has its target's mode changed."""
    settings = settings_factory(secret_key=None)
    path = secret_file(settings)
    path.parent.mkdir(parents=True)
    shared = tmp_path / "shared_key"
    shared.write_text("s" * 64)
    shared.chmod(0o644)
    path.symlink_to(shared)
    assert load_or_create_secret(settings) == "s" * 64
    assert _mode(shared) == 0o644
    path.unlink()
    path.write_text("k" * 64)
    path.chmod(0o644)

    def read_only(self: Path, mode: int) -> None:
        raise OSError(errno.EROFS, "Read-only file system", str(self))

    monkeypatch.setattr(Path, "chmod", read_only)
    assert load_or_create_secret(settings) == "k" * 64


def test_a_filesystem_without_hard_links_still_gets_one_key(
    settings_factory: Callable[..., Settings], monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_links(source: object, destination: object) -> None:
        raise OSError(errno.EPERM, "Operation not permitted")

    monkeypatch.setattr(os, "link", no_links)
    settings = settings_factory(secret_key=None)
    key = load_or_create_secret(settings)
    path = secret_file(settings)
    assert len(key) == 64
    assert path.read_text() == key
    assert _mode(path) == 0o600
    assert load_or_create_secret(settings) == key
    assert [p.name for p in path.parent.iterdir()] == [path.name]


def _start_worker(data_dir: str, barrier: Barrier, keys: Queue[str]) -> None:
    logging.disable(logging.CRITICAL)
    settings = Settings(_env_file=None, data_dir=Path(data_dir))  # type: ignore[call-arg]
    barrier.wait()
    keys.put(load_or_create_secret(settings))


@pytest.mark.parametrize("existing", [None, ""], ids=["no-file", "empty-file"])
def test_workers_starting_together_agree_on_one_complete_key(
    tmp_path: Path, existing: str | None
) -> None:
    """`serve --workers N` on a new DATA_DIR: a worker must never read a file another is
    still writing (and sign with ""), nor keep a key the others do not have."""
    context = multiprocessing.get_context("fork")
    for round_number in range(ROUNDS):
        data_dir = tmp_path / str(round_number)
        data_dir.mkdir()
        if existing is not None:
            (data_dir / ".secret_key").write_text(existing)
        barrier = context.Barrier(WORKERS)
        keys: Queue[str] = context.Queue()
        workers = [
            context.Process(target=_start_worker, args=(str(data_dir), barrier, keys))
            for _ in range(WORKERS)
        ]
        for worker in workers:
            worker.start()
        seen = [keys.get(timeout=30) for _ in workers]
        for worker in workers:
            worker.join(timeout=30)
        assert len(set(seen)) == 1, f"round {round_number}: {[len(key) for key in seen]}"
        assert len(seen[0]) == 64
        assert (data_dir / ".secret_key").read_text() == seen[0]
        assert _mode(data_dir / ".secret_key") == 0o600
        assert [p.name for p in data_dir.iterdir()] == [".secret_key"]
