"""The server secret: from SECRET_KEY, or generated once into DATA_DIR with mode 0600."""

from __future__ import annotations

import logging
import os
import secrets
from pathlib import Path

from ollama_web.core.config import Settings, secret_is_strong

logger = logging.getLogger(__name__)

SECRET_FILE_NAME = ".secret_key"  # noqa: S105 - a file name, not a secret


def secret_file(settings: Settings) -> Path:
    return settings.data_dir / SECRET_FILE_NAME


def load_or_create_secret(settings: Settings) -> str:
    """Return the secret the server signs with.

    A strong SECRET_KEY wins. Otherwise (development only: production refuses weak keys at
    validation) the key stored in DATA_DIR is used, created on first start with mode 0600.
    """
    if settings.secret_key is not None and secret_is_strong(settings.secret_key):
        return settings.secret_key.get_secret_value()
    if settings.secret_key is not None:
        logger.warning("SECRET_KEY is a placeholder or too short; using the generated key instead")
    path = secret_file(settings)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        stored = path.read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        stored = ""
    if len(stored) >= 32:
        return stored
    value = secrets.token_hex(32)
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL
    try:
        fd = os.open(path, flags, 0o600)
    except FileExistsError:
        # Another worker created it first; use theirs.
        return path.read_text(encoding="utf-8").strip()
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(value)
    logger.info("generated a new secret key at %s", path)
    return value
