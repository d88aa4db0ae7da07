"""Failed-login throttling per username and per client address, on the `limits` library.

It uses the Redis of the rate limiter's storage when REDIS_URL is set (`ollama_web.ratelimit`:
every worker and instance counts together), else, and while Redis is unreachable, a file in
DATA_DIR the host's processes share (`ratelimit.host_storage`: the workers of `serve
--workers N` count together), or, given none, its own in-memory storage.

It is always on (RATE_LIMIT_ENABLED only governs the request rate limiter). LOGIN_MAX_FAILURES
failures within LOGIN_FAILURE_WINDOW_MINUTES lock out further attempts for that username, and
separately for that address, until the oldest failure leaves the moving window; a locked-out
attempt is refused before any password is checked, with 429 RATE_LIMITED and Retry-After.
A successful login clears the username's failures.

Attempts whose password is being checked count too (`attempt`): the failures in the window
plus the checks in progress may not pass LOGIN_MAX_FAILURES, so guesses sent all at once get
no more checks than guesses sent one after another. A check in progress is counted in the
storage (atomically, across processes when shared) until it ends, or CHECK_EXPIRY_SECONDS if
its process died.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections.abc import AsyncIterator

from limits import RateLimitItemPerMinute
from limits.aio.storage import Storage
from limits.aio.strategies import MovingWindowRateLimiter

from ollama_web.core.config import Settings
from ollama_web.core.errors import RateLimitedError
from ollama_web.core.net import rate_limit_address
from ollama_web.ratelimit.storage import FallbackStorage, LocalStorage

_USERNAME = "login-failures-username"
_ADDRESS = "login-failures-address"
_CHECKING = "login-checks"
CHECK_EXPIRY_SECONDS = 60
# Refused because the other attempts in progress may still succeed: ask again shortly.
BUSY_RETRY_SECONDS = 1


class LoginThrottle:
    def __init__(
        self, settings: Settings, storage: Storage | None = None, *, owned: bool = False
    ) -> None:
        self._own_storage = storage is None or owned
        self.storage: Storage = storage if storage is not None else LocalStorage()
        self._limiter = MovingWindowRateLimiter(self.storage)
        self._item = RateLimitItemPerMinute(
            settings.login_max_failures, settings.login_failure_window_minutes
        )

    def _keys(self, username_key: str, address: str | None) -> list[tuple[str, str]]:
        keys = [(_USERNAME, username_key)]
        if address:
            keys.append((_ADDRESS, rate_limit_address(address)))
        return keys

    @contextlib.asynccontextmanager
    async def attempt(self, username_key: str, address: str | None) -> AsyncIterator[None]:
        """Check a password inside: raises 429 first when this username or this address
        has no attempt left (recent failures plus the checks in progress). A failure must
        be recorded (`record_failure`) before the block ends."""
        taken = await self._take(self._keys(username_key, address))
        try:
            yield
        finally:
            await self._give_back(taken)

    async def _take(self, keys: list[tuple[str, str]]) -> list[str]:
        taken: list[str] = []
        retry_after = 0.0
        try:
            for namespace, identifier in keys:
                key = f"{_CHECKING}/{namespace}/{identifier}"
                # Atomic: attempts arriving together each see a different count.
                checking = max(1, await self.storage.incr(key, CHECK_EXPIRY_SECONDS))
                taken.append(key)
                stats = await self._limiter.get_window_stats(self._item, namespace, identifier)
                failures = self._item.amount - stats.remaining
                if failures + checking > self._item.amount:
                    locked = failures >= self._item.amount
                    wait = stats.reset_time - time.time() if locked else BUSY_RETRY_SECONDS
                    retry_after = max(retry_after, wait)
        except BaseException:
            await self._give_back(taken)
            raise
        if retry_after > 0:
            await self._give_back(taken)
            seconds = max(1, math.ceil(retry_after))
            raise RateLimitedError(
                "Too many failed login attempts. Try again later.",
                details={"retry_after_seconds": seconds},
                headers={"Retry-After": str(seconds)},
            )
        return taken

    async def _give_back(self, keys: list[str]) -> None:
        for key in keys:
            await self.storage.incr(key, CHECK_EXPIRY_SECONDS, amount=-1)

    async def record_failure(self, username_key: str, address: str | None) -> None:
        for namespace, identifier in self._keys(username_key, address):
            await self._limiter.hit(self._item, namespace, identifier)

    async def record_success(self, username_key: str) -> None:
        await self._limiter.clear(self._item, _USERNAME, username_key)

    async def aclose(self) -> None:
        """Close a storage of its own (the host's file), or stop the in-memory storage's
        expiry task (a shared storage is not ours to stop)."""
        if self._own_storage and isinstance(self.storage, FallbackStorage):
            await self.storage.aclose()
            return
        timer = getattr(self.storage, "timer", None) if self._own_storage else None
        if isinstance(timer, asyncio.Task) and not timer.done():
            timer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await timer
