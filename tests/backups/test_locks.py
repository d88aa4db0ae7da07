"""The file locks that tell servers, restores and backups of one host about each other, on
real files: flock between open files, as between processes."""

from __future__ import annotations

from pathlib import Path

import pytest

from ollama_web.backups.locks import FileLock, LockBusyError


def test_asking_whether_it_is_alone_keeps_a_server_s_shared_lock(tmp_path: Path) -> None:
    """Linux drops a flock before converting it: a refused exclusive request left the
    second server holding nothing. It holds its shared lock still, so a restore (which
    takes the lock exclusive) is refused once the first server is gone."""
    path = tmp_path / "ollama-web.lock"
    first, second = FileLock(path), FileLock(path)
    first.acquire(shared=True)
    assert first.alone()
    second.acquire(shared=True)
    assert not second.alone()
    assert not first.alone()
    first.release()
    restore = FileLock(path)
    with pytest.raises(LockBusyError):
        restore.acquire()
    assert second.alone()
    second.release()
    restore.acquire()
    restore.release()
