"""argon2id password hashing with constant-cost verification for unknown users.

Hashes run on threads of their own, at most HASH_THREADS at once: each holds
PASSWORD_HASH_MEMORY_KIB (64 MiB by default), so a burst of logins (from many addresses:
the failed-login throttle bounds each one's) costs bounded memory, and waits there, not in
the event loop's default executor, where it held up everything else that uses it (the
backups' part of `/health` took 0.8-2.6 s during 40 concurrent logins; peak RSS 481 MB).
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from functools import cache, cached_property
from typing import TypeVar

from argon2 import PasswordHasher, Type
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

from ollama_web.core.config import Settings

MIN_PASSWORD_LENGTH = 8
MAX_PASSWORD_LENGTH = 1024
PASSWORD_NOT_UTF8 = "The password is not valid UTF-8."  # noqa: S105 - a message
PARALLELISM = 4
# Verified against when the username is unknown, so both paths cost one argon2 verification.
_DUMMY_PASSWORD = "dummy password that matches no account"  # noqa: S105
HASH_THREADS = min(8, max(2, (os.cpu_count() or 1) // 2))
"""Hashes computed at once, in this process (each uses PARALLELISM lanes)."""
_T = TypeVar("_T")


@cache
def _hash_executor() -> ThreadPoolExecutor:
    return ThreadPoolExecutor(HASH_THREADS, thread_name_prefix="argon2")


async def _off_loop(function: Callable[..., _T], *args: object) -> _T:
    """`function(*args)` on a hashing thread (see the module docstring)."""
    return await asyncio.get_running_loop().run_in_executor(_hash_executor(), function, *args)


class Passwords:
    """Hashes and verifies passwords with the configured argon2id cost."""

    def __init__(self, time_cost: int, memory_kib: int) -> None:
        self._hasher = PasswordHasher(
            time_cost=time_cost,
            memory_cost=memory_kib,
            parallelism=PARALLELISM,
            type=Type.ID,
        )

    @cached_property
    def _dummy_hash(self) -> str:
        return self._hasher.hash(_DUMMY_PASSWORD)

    def hash(self, password: str) -> str:
        return self._hasher.hash(password)

    def verify(self, password_hash: str | None, password: str) -> bool:
        """True when `password` matches; with no hash, spend the same time and answer False."""
        if password_hash is None:
            self._check(self._dummy_hash, password)
            return False
        return self._check(password_hash, password)

    def _check(self, password_hash: str, password: str) -> bool:
        try:
            return self._hasher.verify(password_hash, password)
        except (VerifyMismatchError, VerificationError, InvalidHashError):
            return False

    async def hash_async(self, password: str) -> str:
        """`hash` off the event loop (argon2 is deliberately slow)."""
        return await _off_loop(self.hash, password)

    async def verify_async(self, password_hash: str | None, password: str) -> bool:
        return await _off_loop(self.verify, password_hash, password)

    def needs_rehash(self, password_hash: str) -> bool:
        try:
            return self._hasher.check_needs_rehash(password_hash)
        except InvalidHashError:
            return True


@cache
def _passwords(time_cost: int, memory_kib: int) -> Passwords:
    return Passwords(time_cost, memory_kib)


def passwords_for(settings: Settings) -> Passwords:
    return _passwords(settings.password_hash_time_cost, settings.password_hash_memory_kib)


def password_problem(password: str) -> str | None:
    """Why a new password is refused, or None when it is acceptable."""
    if not password.isascii() and any(0xD800 <= ord(char) <= 0xDFFF for char in password):
        # A lone surrogate: what Python makes of bytes that are not UTF-8 (a password piped
        # to the command line), or a JSON "\ud800". No hash can be made of it (argon2 hashes
        # the UTF-8 bytes): it was a traceback, or a 500 without the input guard.
        return PASSWORD_NOT_UTF8
    if len(password) < MIN_PASSWORD_LENGTH:
        return f"The password must be at least {MIN_PASSWORD_LENGTH} characters long."
    if len(password) > MAX_PASSWORD_LENGTH:
        return f"The password must be at most {MAX_PASSWORD_LENGTH} characters long."
    if not password.strip():
        return "The password cannot be only whitespace."
    return None
