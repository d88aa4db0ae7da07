"""The server secret: from SECRET_KEY, or generated once into DATA_DIR with mode 0600.

Several workers may start at once on a new DATA_DIR. The file at DATA_DIR/.secret_key is
only ever a complete key: a new one is written and fsynced under a temporary name, then
hard-linked into place (the link fails if the name exists, so exactly one worker wins and
the others read the winner's key). A file holding too little to be a key (left by a crash,
a full disk, a hand edit) is replaced, under a lock on the directory so that workers
finding it at once agree on the one replacement.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import logging
import os
import secrets
import stat
import tempfile
from collections.abc import Iterator
from pathlib import Path

from ollama_web.core.config import MIN_SECRET_LENGTH, Settings, secret_problem

logger = logging.getLogger(__name__)

SECRET_FILE_NAME = ".secret_key"  # noqa: S105 - a file name, not a secret


def secret_file(settings: Settings) -> Path:
    return settings.data_dir / SECRET_FILE_NAME


def load_or_create_secret(settings: Settings) -> str:
    """Return the secret the server signs with.

    A strong SECRET_KEY wins. Otherwise (development only: production refuses weak keys at
    validation) the key stored in DATA_DIR is used, created on first start with mode 0600.
    """
    problem = secret_problem(settings.secret_key)
    if settings.secret_key is not None and problem is None:
        return settings.secret_key.get_secret_value()
    if settings.secret_key is not None:
        logger.warning("SECRET_KEY %s; using the generated key instead", problem)
    path = secret_file(settings)
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    stored = _read_key(path)
    if stored is None:
        return _create(path)
    return stored if _usable(stored) else _replace_corrupt(path)


_NO_HARD_LINKS = frozenset(
    {errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EXDEV, errno.ENOSYS}
)


def _usable(stored: str) -> bool:
    return len(stored) >= MIN_SECRET_LENGTH


def _read_key(path: Path) -> str | None:
    """The stored key (stripped), None when there is no file. Tightens a loose mode."""
    try:
        stored = path.read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        return None
    found = path.lstat()
    if stat.S_IMODE(found.st_mode) & 0o077:
        _tighten(path, found)
    return stored


def _tighten(path: Path, found: os.stat_result) -> None:
    """Make a key file others can read 0600: only our own regular file (never a symlink's
    target elsewhere), and never at the price of the key (a read-only volume keeps it)."""
    if not stat.S_ISREG(found.st_mode) or found.st_uid != os.geteuid():
        logger.warning("%s is readable by other users; make it 0600", path)
        return
    try:
        path.chmod(0o600)
    except OSError as exc:
        logger.warning("%s is readable by other users and cannot be changed (%s)", path, exc)
        return
    logger.warning("%s was readable by other users; its mode is now 0600", path)


def _write_temporary(directory: Path) -> tuple[Path, str]:
    """A new key, complete and on disk, under a temporary name (mkstemp: mode 0600)."""
    value = secrets.token_hex(32)
    fd, name = tempfile.mkstemp(prefix=f"{SECRET_FILE_NAME}.", suffix=".tmp", dir=directory)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(value)
        handle.flush()
        os.fsync(handle.fileno())
    return Path(name), value


def _create(path: Path) -> str:
    temporary, value = _write_temporary(path.parent)
    try:
        os.link(temporary, path)
    except FileExistsError:
        # Another worker linked its key first: use theirs (complete, as it was linked).
        stored = _read_key(path)
        return stored if stored is not None and _usable(stored) else _replace_corrupt(path)
    except OSError as exc:
        if exc.errno not in _NO_HARD_LINKS:
            raise
        # A filesystem without hard links (vfat, some network and FUSE mounts): the
        # directory lock keeps workers from both putting a key in place.
        with _locked_directory(path.parent):
            stored = _read_key(path)
            if stored is not None and _usable(stored):
                return stored
            os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)
    logger.info("generated a new secret key at %s", path)
    return value


def _replace_corrupt(path: Path) -> str:
    with _locked_directory(path.parent):
        stored = _read_key(path)
        if stored is not None and _usable(stored):
            return stored  # another worker replaced it while this one waited
        temporary, value = _write_temporary(path.parent)
        os.replace(temporary, path)
    logger.warning(
        "%s held %d characters, too few for a key: replaced it with a new key",
        path,
        len(stored or ""),
    )
    return value


@contextlib.contextmanager
def _locked_directory(directory: Path) -> Iterator[None]:
    fd = os.open(directory, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)
