"""Failed-login throttling per username and per client address, on the `limits` library.

It uses the storage the rate limiter shares (`ollama_web.ratelimit`: Redis when REDIS_URL is
set, so every worker counts together) or, without one, its own in-memory storage.

It is always on (RATE_LIMIT_ENABLED only governs the request rate limiter). LOGIN_MAX_FAILURES
failures within LOGIN_FAILURE_WINDOW_MINUTES lock out further attempts for that username, and
separately for that address, until the oldest failure leaves the moving window; a locked-out
attempt is refused before any password is checked, with 429 RATE_LIMITED and Retry-After.
A successful login clears the username's failures.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time

from limits import RateLimitItemPerMinute
from limits.aio.storage import MemoryStorage, Storage
from limits.aio.strategies import MovingWindowRateLimiter

from ollama_web.core.config import Settings
from ollama_web.core.errors import RateLimitedError
from ollama_web.core.net import rate_limit_address

_USERNAME = "login-failures-username"
_ADDRESS = "login-failures-address"


class LoginThrottle:
    def __init__(self, settings: Settings, storage: Storage | None = None) -> None:
        self._own_storage = storage is None
        self.storage: Storage = storage if storage is not None else MemoryStorage()
        self._limiter = MovingWindowRateLimiter(self.storage)
        self._item = RateLimitItemPerMinute(
            settings.login_max_failures, settings.login_failure_window_minutes
        )

    def _keys(self, username_key: str, address: str | None) -> list[tuple[str, str]]:
        keys = [(_USERNAME, username_key)]
        if address:
            keys.append((_ADDRESS, rate_limit_address(address)))
        return keys

    async def check(self, username_key: str, address: str | None) -> None:
        """Raise 429 when this username or this address has too many recent failures."""
        retry_after = 0.0
        for namespace, identifier in self._keys(username_key, address):
            if not await self._limiter.test(self._item, namespace, identifier):
                stats = await self._limiter.get_window_stats(self._item, namespace, identifier)
                retry_after = max(retry_after, stats.reset_time - time.time())
        if retry_after > 0:
            seconds = max(1, math.ceil(retry_after))
            raise RateLimitedError(
                "Too many failed login attempts. Try again later.",
                details={"retry_after_seconds": seconds},
                headers={"Retry-After": str(seconds)},
            )

    async def record_failure(self, username_key: str, address: str | None) -> None:
        for namespace, identifier in self._keys(username_key, address):
            await self._limiter.hit(self._item, namespace, identifier)

    async def record_success(self, username_key: str) -> None:
        await self._limiter.clear(self._item, _USERNAME, username_key)

    async def aclose(self) -> None:
        """Stop the in-memory storage's expiry task (a shared storage is not ours to stop)."""
        timer = getattr(self.storage, "timer", None) if self._own_storage else None
        if isinstance(timer, asyncio.Task) and not timer.done():
            timer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await timer
