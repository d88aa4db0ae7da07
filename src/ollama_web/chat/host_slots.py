"""A user's generation slots, shared by the server processes of one host.

MAX_CONCURRENT_GENERATIONS_PER_USER bounds the answers a user has running. Each process
counts its own (the registry's reservations). The workers of `serve --workers N`, and
servers sharing one DATA_DIR, also share the count through lock files: slot k of a user
is a write lock on byte k of `DATA_DIR/generation-slots/<user id>`, an open file
description lock (Linux's F_OFD_SETLK), so that

- taking a slot locks the first byte no process holds; a process opens one description
  per user and skips the bytes it holds itself (its own locks never conflict there);
- the kernel drops a process's locks when it exits, however it ends: a crash never leaves
  a slot taken;
- nothing is written: the files stay empty, one per user who chatted.

With REDIS_URL the count is also Redis's (see `slots`), across hosts; these files still
bound a host's processes together while Redis is unreachable. Where these files cannot
be used (a platform without such locks, a directory the server cannot write), each
process counts its own, logged once: chats never stop for want of a lock file.
"""

from __future__ import annotations

import errno
import fcntl
import logging
import os
import re
import struct
from dataclasses import dataclass, field
from pathlib import Path

logger = logging.getLogger("ollama_web.chat.slots")

DIRECTORY_NAME = "generation-slots"
_SETLK: int | None = getattr(fcntl, "F_OFD_SETLK", None)
_BUSY = frozenset({errno.EAGAIN, errno.EACCES})
_USER_ID = re.compile(r"[0-9A-Za-z_-]{1,64}")


class SlotsInUse(Exception):
    """Every one of the user's slots is held by some process of this host."""


def _lock(kind: int, index: int) -> bytes:
    """A `struct flock` for byte `index` (l_pid 0, as open file description locks want)."""
    return struct.pack("hhqqi4x", kind, os.SEEK_SET, index, 1, 0)


@dataclass
class _UserFile:
    fd: int
    held: set[int] = field(default_factory=set)


class HostSlots:
    def __init__(self, directory: Path) -> None:
        self._directory = directory
        self._files: dict[str, _UserFile] = {}
        self._usable = True

    @staticmethod
    def supported() -> bool:
        return _SETLK is not None

    def take(self, user_id: str, limit: int) -> int | None:
        """The slot taken (its index, to give back); SlotsInUse when all `limit` are held;
        None when the files cannot be used (this process then counts on its own)."""
        assert _SETLK is not None, "check supported() first"
        if not _USER_ID.fullmatch(user_id):
            raise ValueError(f"not a user id: {user_id!r}")
        entry = self._files.get(user_id)
        try:
            if entry is None:
                entry = _UserFile(self._open(user_id))
            for index in range(limit):
                if index in entry.held:
                    continue
                try:
                    fcntl.fcntl(entry.fd, _SETLK, _lock(fcntl.F_WRLCK, index))
                except OSError as exc:
                    if exc.errno in _BUSY:
                        continue
                    raise
                entry.held.add(index)
                self._files[user_id] = entry
                self._ok()
                return index
        except OSError as exc:
            if entry is not None and not entry.held:
                os.close(entry.fd)
            self._failed(exc)
            return None
        if not entry.held:
            os.close(entry.fd)
        raise SlotsInUse(user_id)

    def give_back(self, user_id: str, index: int) -> None:
        entry = self._files.get(user_id)
        if entry is None or index not in entry.held:
            return
        entry.held.discard(index)
        if not entry.held:  # closing the description drops its last lock
            del self._files[user_id]
            os.close(entry.fd)
            return
        assert _SETLK is not None
        try:
            fcntl.fcntl(entry.fd, _SETLK, _lock(fcntl.F_UNLCK, index))
        except OSError as exc:  # not seen in practice; the slot is free once the rest are
            logger.warning("could not give back a generation slot: %s", exc)

    def close(self) -> None:
        files, self._files = self._files, {}
        for entry in files.values():
            os.close(entry.fd)

    def _open(self, user_id: str) -> int:
        path = self._directory / user_id
        flags = os.O_RDWR | os.O_CREAT | os.O_CLOEXEC
        try:
            return os.open(path, flags, 0o600)
        except FileNotFoundError:
            self._directory.mkdir(mode=0o700, parents=True, exist_ok=True)
            return os.open(path, flags, 0o600)

    def _failed(self, exc: OSError) -> None:
        if self._usable:
            logger.warning(
                "generation slot files in %s cannot be used (%s); generation limits count "
                "per process (and through Redis, with REDIS_URL)",
                self._directory,
                exc.strerror or exc,
            )
        self._usable = False

    def _ok(self) -> None:
        if not self._usable:
            logger.warning("generation slot files are usable again; limits are shared")
        self._usable = True
