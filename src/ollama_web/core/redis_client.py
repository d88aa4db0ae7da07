"""How every Redis client of the app connects: the rate-limit storage and its /health probe
(`ratelimit.storage`), the per-user generation slots (`chat.slots`) and the stop/re-attach
relay (`chat.relay`).

A Redis that restarts leaves every pool holding connections that died with it, and redis-py
does not notice before it uses one (speaking RESP3, its default, it skips its check for a
closed pooled connection): the next command on each fails with "Connection closed by
server." So a command that fails with a connection error is sent once more, at once, on a
fresh connection. While Redis is down that costs nothing: its refused connection fails
again at once. Timeouts are not retried: they are what an unreachable Redis looks like,
and a second try would double the wait of every call while it lasts.
"""

from __future__ import annotations

from typing import Any

CONNECT_TIMEOUT_SECONDS = 2.0
SOCKET_TIMEOUT_SECONDS = 2.0
"""A reply's timeout; pub/sub's blocking reads (`listen()`) are not bound by it."""


def connection_options(*, retry: bool = True) -> dict[str, Any]:
    """Keyword arguments for redis-py's `Redis.from_url` or `ConnectionPool.from_url`.

    `retry=False` is for a subscriber that must hear of a dropped connection itself: with a
    retry, redis-py would subscribe again on a fresh connection, silently, and what was
    published in between would be missed.
    """
    # Imported only when Redis is configured: redis-py costs ~6 MB of memory at import.
    from redis.asyncio.retry import Retry
    from redis.backoff import NoBackoff
    from redis.exceptions import ConnectionError as RedisConnectionError

    return {
        "socket_connect_timeout": CONNECT_TIMEOUT_SECONDS,
        "socket_timeout": SOCKET_TIMEOUT_SECONDS,
        "retry": Retry(NoBackoff(), 1 if retry else 0, supported_errors=(RedisConnectionError,)),
    }
