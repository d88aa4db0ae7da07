"""Secret tokens: API keys, session tokens, CSRF tokens. Only sha256 digests are stored."""

from __future__ import annotations

import base64
import hashlib
import secrets

API_KEY_PREFIX = "owk_"
API_KEY_RANDOM_BYTES = 32
# How much of a key is stored and shown so a user can recognise it ("owk_" + 8 characters).
API_KEY_DISPLAY_LENGTH = 12
SESSION_TOKEN_BYTES = 32
CSRF_TOKEN_BYTES = 32
# Longest credential we bother hashing: anything longer cannot be one of ours.
MAX_CREDENTIAL_LENGTH = 256


def sha256_hex(value: str) -> str:
    return hashlib.sha256(value.encode("utf-8")).hexdigest()


def _random_urlsafe(nbytes: int) -> str:
    return base64.urlsafe_b64encode(secrets.token_bytes(nbytes)).rstrip(b"=").decode("ascii")


def generate_api_key() -> str:
    """`owk_` + base64url of 32 random bytes (43 characters)."""
    return API_KEY_PREFIX + _random_urlsafe(API_KEY_RANDOM_BYTES)


def api_key_display_prefix(key: str) -> str:
    return key[:API_KEY_DISPLAY_LENGTH]


def looks_like_api_key(value: str) -> bool:
    return value.startswith(API_KEY_PREFIX) and len(value) <= MAX_CREDENTIAL_LENGTH


def generate_session_token() -> str:
    return _random_urlsafe(SESSION_TOKEN_BYTES)


def generate_csrf_token() -> str:
    return secrets.token_hex(CSRF_TOKEN_BYTES)
