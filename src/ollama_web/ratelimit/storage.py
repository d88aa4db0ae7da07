"""The `limits` storage every limiter in the process shares: Redis when REDIS_URL is set,
with a fallback that takes over while Redis is unreachable.

`FallbackStorage` is itself a `limits` async storage (moving-window capable), so any
`limits` strategy can use it — the request rate limiter and the accounts engineer's
failed-login throttle alike. Redis is reached through redis-py's asyncio client
(`implementation="redispy"`; coredis is not needed), connected as every Redis client of
the app is (`core.redis_client`: short timeouts, a dead pooled connection replaced at once).
On a Redis error the call is answered by the fallback, the outage is logged once, and Redis
is tried again after RETRY_SECONDS (or as soon as the /health probe succeeds). The fallback
of the request rate limiter is the host's file (`host_storage`, `request-limits.db`) when
WORKERS > 1, so that a host's workers still count a client together, and memory with one
worker; failed logins fall back to the host's file (`failed_login_storage`), so that a
host's workers still lock a guesser out together. Without Redis, the same: the host's files
(in memory while one cannot be used), or memory.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sqlite3
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

from limits.aio.storage import MemoryStorage, MovingWindowSupport, RedisStorage, Storage

from ollama_web.core.redis_client import connection_options
from ollama_web.ratelimit.host_storage import FILE_NAME, REQUESTS_FILE_NAME, HostStorage

if TYPE_CHECKING:
    import redis.asyncio as aioredis

logger = logging.getLogger("ollama_web.ratelimit")

T = TypeVar("T")

RETRY_SECONDS = 5.0
POOL_MAX_CONNECTIONS = 50
POOL_WAIT_SECONDS = 5.0
KEY_PREFIX = "ollama_web"


class FallbackStorage(Storage, MovingWindowSupport):
    """Delegate to `primary` (Redis) and fall back to `fallback` (memory) when it fails."""

    STORAGE_SCHEME = None

    def __init__(
        self,
        primary: RedisStorage | HostStorage | None,
        fallback: MemoryStorage | FallbackStorage,
        *,
        pool: aioredis.BlockingConnectionPool | None = None,
        retry_seconds: float = RETRY_SECONDS,
        primary_errors: tuple[type[Exception], ...] = (OSError,),
        primary_name: str = "Redis",
        fallback_says: str = "rate limits fall back to in-process counting",
    ) -> None:
        super().__init__()
        self.primary_errors = primary_errors
        self.primary_name = primary_name
        """Who the log lines name: Redis, or the host's failed-login file."""
        self.fallback_says = fallback_says
        """What the outage's log line says happens meanwhile."""
        self.primary = primary
        self.fallback = fallback
        self.pool = pool
        self.retry_seconds = retry_seconds
        self.down_since: float | None = None
        self.last_error: str | None = None
        self._retry_at = 0.0

    @property
    def base_exceptions(self) -> type[Exception] | tuple[type[Exception], ...]:
        return ValueError

    @property
    def using_fallback(self) -> bool:
        return self.primary is None or self.down_since is not None

    def _mark_down(self, exc: Exception) -> None:
        self._retry_at = time.monotonic() + self.retry_seconds
        self.last_error = f"{type(exc).__name__}: {exc}"[:200]
        if self.down_since is None:
            self.down_since = time.time()
            logger.warning(
                "%s is unreachable (%s); %s",
                self.primary_name,
                self.last_error,
                self.fallback_says,
            )

    def _mark_up(self) -> None:
        if self.down_since is not None:
            logger.warning(
                "%s is reachable again after %.1f s; shared rate limits resumed",
                self.primary_name,
                time.time() - self.down_since,
            )
            self.down_since = None
            self.last_error = None

    async def _call(self, operation: Callable[[Storage], Awaitable[T]]) -> T:
        primary = self.primary
        if primary is not None and (self.down_since is None or time.monotonic() >= self._retry_at):
            try:
                result = await operation(primary)
            except self.primary_errors as exc:
                self._mark_down(exc)
            else:
                self._mark_up()
                return result
        return await operation(self.fallback)

    async def incr(self, key: str, expiry: int, amount: int = 1) -> int:
        return await self._call(lambda storage: storage.incr(key, expiry, amount))

    async def get(self, key: str) -> int:
        return await self._call(lambda storage: storage.get(key))

    async def get_expiry(self, key: str) -> float:
        return await self._call(lambda storage: storage.get_expiry(key))

    async def clear(self, key: str) -> None:
        await self._call(lambda storage: storage.clear(key))

    async def reset(self) -> int | None:
        return await self._call(lambda storage: storage.reset())

    async def check(self) -> bool:
        """Ping Redis (without waiting for the retry delay); True when it answers."""
        if self.primary is None:
            return True
        try:
            healthy = await self.primary.check()
        except self.primary_errors as exc:
            self._mark_down(exc)
            return False
        if healthy:
            self._mark_up()
        else:
            self._mark_down(ConnectionError("PING failed"))
        return healthy

    async def acquire_entry(self, key: str, limit: int, expiry: int, amount: int = 1) -> bool:
        async def acquire(storage: Storage) -> bool:
            assert isinstance(storage, MovingWindowSupport)
            return await storage.acquire_entry(key, limit, expiry, amount)

        return await self._call(acquire)

    async def get_moving_window(self, key: str, limit: int, expiry: int) -> tuple[float, int]:
        async def window(storage: Storage) -> tuple[float, int]:
            assert isinstance(storage, MovingWindowSupport)
            return await storage.get_moving_window(key, limit, expiry)

        return await self._call(window)

    async def acquire_with_window(
        self, key: str, limit: int, expiry: int, amount: int = 1
    ) -> tuple[bool, float, int]:
        """`acquire_entry`, then `get_moving_window`: whether the entry went in, and the
        window's oldest entry and count after it. One transaction on the host's file;
        two calls elsewhere."""
        return await self._call(
            lambda storage: _acquire_with_window(storage, key, limit, expiry, amount)
        )

    async def aclose(self) -> None:
        """Close the Redis pool (when this storage has its own) or the host's file, and
        stop the in-memory storage's expiry task."""
        if self.pool is not None:
            await self.pool.aclose()
        if isinstance(self.primary, HostStorage):
            await self.primary.aclose()
        if isinstance(self.fallback, FallbackStorage):
            await self.fallback.aclose()
            return
        timer = self.fallback.timer
        if timer is not None and not timer.done():
            timer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await timer


async def _acquire_with_window(
    storage: Storage, key: str, limit: int, expiry: int, amount: int
) -> tuple[bool, float, int]:
    if isinstance(storage, HostStorage | FallbackStorage):
        return await storage.acquire_with_window(key, limit, expiry, amount)
    assert isinstance(storage, MovingWindowSupport)
    allowed = await storage.acquire_entry(key, limit, expiry, amount)
    oldest, count = await storage.get_moving_window(key, limit, expiry)
    return allowed, oldest, count


class LocalStorage(MemoryStorage):
    """limits' in-memory storage with one race closed. Its expiry pass (a task, started by
    the next hit once the last pass ended) lists the keys, then for each awaits a thread and
    reads `events[key]`; a `clear` meanwhile (a successful login resets its failures)
    removed the key, so a KeyError ended the pass, logged with a traceback as a task
    exception nobody retrieved. A cleared key's events are emptied instead, its lock kept:
    the next pass drops both."""

    async def clear(self, key: str) -> None:
        self.storage.pop(key, None)
        self.expirations.pop(key, None)
        if key in self.events:
            self.events[key] = []


def host_storage(data_dir: Path, file_name: str = FILE_NAME) -> FallbackStorage:
    """Without Redis: the host's file in DATA_DIR (the failed-login throttle's, or with
    `REQUESTS_FILE_NAME` the request rate limiter's), in memory while it cannot be used."""
    what = "failed-login" if file_name == FILE_NAME else "rate-limit"
    return FallbackStorage(
        HostStorage(data_dir / file_name),
        LocalStorage(),
        primary_errors=(sqlite3.Error, OSError),
        primary_name=f"the {what} file {file_name}",
    )


def failed_login_storage(shared: FallbackStorage, data_dir: Path) -> FallbackStorage:
    """With REDIS_URL, for the failed-login throttle: the shared storage's Redis (its pool
    stays the rate limiter's to close), falling back to the host's file rather than to
    memory while Redis is unreachable."""
    return FallbackStorage(
        shared.primary,
        host_storage(data_dir),
        primary_errors=shared.primary_errors,
        fallback_says=f"failed logins are counted in the host's file {FILE_NAME}",
    )


def build_storage(redis_url: str | None, host_dir: Path | None = None) -> FallbackStorage:
    """The shared storage: Redis (redis-py asyncio) when `redis_url` is set, falling back
    while it is unreachable to the host's file in `host_dir` when one is given (WORKERS > 1:
    the processes of this host still count together), else to memory. Without Redis, the
    host's file or memory.

    Nothing connects here; the first rate-limit check (or health probe) does.
    """
    host = host_storage(host_dir, REQUESTS_FILE_NAME) if host_dir is not None else None
    if not redis_url:
        return host if host is not None else FallbackStorage(None, LocalStorage())
    # Imported only when configured: redis-py costs ~6 MB of memory at import.
    import redis.asyncio as aioredis
    from redis.exceptions import RedisError

    pool = aioredis.BlockingConnectionPool.from_url(
        redis_url,
        max_connections=POOL_MAX_CONNECTIONS,
        timeout=POOL_WAIT_SECONDS,
        **connection_options(),
    )
    # The pool carries the real URL (any scheme redis-py knows, unix sockets included); the
    # storage's own URI only selects the Redis flavour.
    primary = RedisStorage(
        "async+redis://",
        implementation="redispy",
        key_prefix=KEY_PREFIX,
        connection_pool=pool,  # type: ignore[arg-type]  # passed through to redis-py
    )
    says = (
        f"rate limits are counted in the host's file {REQUESTS_FILE_NAME}"
        if host is not None
        else "rate limits fall back to in-process counting"
    )
    return FallbackStorage(
        primary,
        host if host is not None else LocalStorage(),
        pool=pool,
        primary_errors=(RedisError, OSError),
        fallback_says=says,
    )
