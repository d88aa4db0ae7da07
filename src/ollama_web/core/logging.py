"""Log files (app, error, access), rotation, JSON lines, and redaction of secrets."""

from __future__ import annotations

import fcntl
import json
import logging
import os
import re
import stat
import sys
from datetime import UTC, datetime
from io import TextIOWrapper
from logging.handlers import RotatingFileHandler
from pathlib import Path
from typing import Any

from ollama_web.core.config import Settings

ACCESS_LOGGER = "ollama_web.access"
APP_LOG, ERROR_LOG, ACCESS_LOG = "app.log", "error.log", "access.log"
LOG_FILE_MODE = 0o640
LOG_FILES = (APP_LOG, ERROR_LOG, ACCESS_LOG)  # in LOG_DIR
_HANDLER_MARK = "_ollama_web_handler"
LOG_DIR_MODE = 0o750  # as its files: the group may read the logs, no one else
ROTATION_LOCK = ".rotation.lock"  # in LOG_DIR: the workers rotate the log files one at a time

# Secrets that might reach a message despite our care: redact them before writing.
_REDACTIONS: tuple[tuple[re.Pattern[str], str], ...] = (
    (re.compile(r"(?i)\b(bearer)\s+[A-Za-z0-9._~+/=-]+"), r"\1 [REDACTED]"),
    (re.compile(r"\bowk_[A-Za-z0-9_-]+"), "owk_[REDACTED]"),
    (
        re.compile(
            r"(?i)((?:authorization|cookie|set-cookie|x-api-key|x-csrf-token|api[_-]?key|"
            r"password|new_password|current_password|secret[_-]?key|token|csrf_token)"
            r"[\"']?\s*[:=]\s*[\"']?)([^\"',;&\s}]+)"
        ),
        r"\1[REDACTED]",
    ),
    (re.compile(r"(?i)(ow_session=)[^;\s]+"), r"\1[REDACTED]"),
)


def loggable(text: object, limit: int = 300) -> str:
    """Text a client chose (a path), for a log line: cut, with control characters and
    non-ASCII escaped, so that it cannot start a line of its own (`%0A` in a path)."""
    return str(text)[:limit].encode("unicode_escape").decode("ascii")


def redact(text: str) -> str:
    for pattern, replacement in _REDACTIONS:
        text = pattern.sub(replacement, text)
    return text


class RedactingFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        return redact(super().format(record))


class JsonFormatter(logging.Formatter):
    """One JSON object per line; extra fields given with `extra={"fields": {...}}`."""

    def __init__(self, *, redacting: bool = True) -> None:
        super().__init__()
        self.redacting = redacting

    def format(self, record: logging.LogRecord) -> str:
        payload: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):
            payload.update(fields)
        if record.exc_info:
            payload["exception"] = self.formatException(record.exc_info)
        line = json.dumps(payload, default=str, ensure_ascii=False)
        return redact(line) if self.redacting else line


class SharedRotatingFileHandler(RotatingFileHandler):
    """A RotatingFileHandler that several processes (the workers of `serve --workers N`) can
    share. Each had its own: after one renamed the file, the others kept writing into the
    renamed one, and their lines were lost when it rotated out. Before each write this one
    reopens the file when the one at its path is no longer the one it has open (as
    WatchedFileHandler does), and it rotates under an exclusive lock beside the logs, only
    if no other process rotated the file in the meantime.

    A log file it creates is readable by its owner and group only (LOG_FILE_MODE, less the
    umask): the lines name users, client addresses and files, no business of every local
    account (the database, the secret key and the backups are 0600). A file that exists
    keeps the mode it has."""

    def __init__(self, path: Path, max_bytes: int, backup_count: int) -> None:
        super().__init__(
            path, maxBytes=max_bytes, backupCount=backup_count, encoding="utf-8", delay=True
        )
        self._lock_path = path.parent / ROTATION_LOCK
        self._opened: tuple[int, int] | None = None  # (st_dev, st_ino) of our stream
        self._failing = False  # a record could not be written, and that was said
        self._failed_now = False
        self._formatted: tuple[logging.LogRecord, str] | None = None  # by shouldRollover

    def emit(self, record: logging.LogRecord) -> None:
        self._failed_now = False
        super().emit(record)
        if self._failing and not self._failed_now:
            self._failing = False
            sys.stderr.write(f"ollama-web: writing the log file {self.baseFilename} again\n")

    def handleError(self, record: logging.LogRecord) -> None:
        """A log file that stops taking records after the start checked it (its filesystem
        full, or remounted read-only): one line on stderr, not a traceback for every record
        (hundreds a minute), until a record is written again. The console handler still
        shows warnings and errors."""
        self._failed_now = True
        if self._failing:
            return
        self._failing = True
        sys.stderr.write(
            f"ollama-web: cannot write the log file {self.baseFilename} ({sys.exc_info()[1]}); "
            "its records are lost until it can be written again\n"
        )

    def _open(self) -> TextIOWrapper:
        descriptor = os.open(
            self.baseFilename, os.O_WRONLY | os.O_APPEND | os.O_CREAT, LOG_FILE_MODE
        )
        stream = open(descriptor, "a", encoding=self.encoding, errors=self.errors)  # noqa: SIM115
        opened = os.fstat(stream.fileno())
        self._opened = (opened.st_dev, opened.st_ino)
        return stream

    def _at_path(self) -> os.stat_result | None:
        try:
            return os.stat(self.baseFilename)
        except FileNotFoundError:
            return None

    def _is_ours(self, found: os.stat_result | None) -> bool:
        return found is not None and (found.st_dev, found.st_ino) == self._opened

    def _reopen(self) -> None:
        if self.stream is not None:
            self.stream.close()
            self.stream = None  # opened again by emit

    def shouldRollover(self, record: logging.LogRecord) -> bool:
        """RotatingFileHandler's test with one `stat` where it made two (and ours a third),
        keeping the formatted record for `emit`, which formatted it again (an access line:
        17 -> 11 us)."""
        found = self._at_path()
        if self.stream is not None and not self._is_ours(found):
            self._reopen()
        if found is not None and not stat.S_ISREG(found.st_mode):
            return False  # never rotate anything but a regular file (bpo-45401)
        if self.stream is None:
            self.stream = self._open()
        if self.maxBytes <= 0:
            return False
        text = self.format(record)
        self._formatted = (record, text)
        return bool(self.stream.seek(0, os.SEEK_END) + len(text) + 1 >= self.maxBytes)

    def format(self, record: logging.LogRecord) -> str:
        formatted, self._formatted = self._formatted, None
        if formatted is not None and formatted[0] is record:
            return formatted[1]
        return super().format(record)

    def doRollover(self) -> None:
        # Read-only is enough for flock: a lock file another user made (the CLI run as
        # root) still serves the service's user.
        lock = os.open(self._lock_path, os.O_RDONLY | os.O_CREAT, 0o644)
        try:
            fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file is closed
            found = self._at_path()
            # Still our file: nobody rotated it since we decided. Another process's file
            # over the limit: rotate it. Anything else: write into the file at the path.
            if found is not None and (self._is_ours(found) or found.st_size >= self.maxBytes):
                super().doRollover()
            else:
                self._reopen()
        finally:
            os.close(lock)


def _handler(path: Path, settings: Settings, level: int) -> RotatingFileHandler:
    handler = SharedRotatingFileHandler(path, settings.log_max_bytes, settings.log_backup_count)
    handler.setLevel(level)
    setattr(handler, _HANDLER_MARK, True)
    return handler


def _formatter(settings: Settings) -> logging.Formatter:
    if settings.structured_logging:
        return JsonFormatter()
    return RedactingFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s")


def _remove_ours(logger: logging.Logger) -> None:
    for handler in list(logger.handlers):
        if getattr(handler, _HANDLER_MARK, False):
            logger.removeHandler(handler)
            handler.close()


def configure_logging(settings: Settings) -> None:
    """Attach our handlers (idempotent: calling again replaces them)."""
    settings.log_dir.mkdir(mode=LOG_DIR_MODE, parents=True, exist_ok=True)
    formatter = _formatter(settings)
    level = logging.getLevelNamesMapping()[settings.log_level.value]

    app_logger = logging.getLogger("ollama_web")
    _remove_ours(app_logger)
    app_logger.setLevel(level)
    app_logger.propagate = False
    for path, handler_level in (
        (settings.log_dir / APP_LOG, level),
        (settings.log_dir / ERROR_LOG, logging.ERROR),
    ):
        handler = _handler(path, settings, handler_level)
        handler.setFormatter(formatter)
        app_logger.addHandler(handler)
    console = logging.StreamHandler(sys.stderr)
    console.setLevel(max(level, logging.WARNING))
    console.setFormatter(formatter)
    setattr(console, _HANDLER_MARK, True)
    app_logger.addHandler(console)

    access_logger = logging.getLogger(ACCESS_LOGGER)
    _remove_ours(access_logger)
    access_logger.setLevel(logging.INFO)
    access_logger.propagate = False
    access_handler = _handler(settings.log_dir / ACCESS_LOG, settings, logging.INFO)
    # Access lines hold only what the server chose: method, route template (never the raw
    # path or query), status, duration, a validated request id, principal id and client
    # address, so they skip the redaction pass (a quarter of the cost of each line).
    access_handler.setFormatter(
        JsonFormatter(redacting=False)
        if settings.structured_logging
        else logging.Formatter("%(message)s")
    )
    access_logger.addHandler(access_handler)


def shutdown_logging() -> None:
    for name in ("ollama_web", ACCESS_LOGGER):
        _remove_ours(logging.getLogger(name))
