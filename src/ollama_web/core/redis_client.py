"""How every Redis client of the app connects: the rate-limit storage and its /health probe
(`ratelimit.storage`), the per-user generation slots (`chat.slots`), the stop/re-attach
relay (`chat.relay`) and pull cancels (`ollama.pull_cancels`); and how the last two listen
to their channel (`listen_forever`).

A Redis that restarts leaves every pool holding connections that died with it, and redis-py
does not notice before it uses one (speaking RESP3, its default, it skips its check for a
closed pooled connection): the next command on each fails with "Connection closed by
server." So a command that fails with a connection error is sent once more, at once, on a
fresh connection. While Redis is down that costs nothing: its refused connection fails
again at once. Timeouts are not retried: they are what an unreachable Redis looks like,
and a second try would double the wait of every call while it lasts.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
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


RESUBSCRIBE_SECONDS = 1.0


async def listen_forever(
    redis: Any,
    channel: str,
    on_message: Callable[[Any], None],
    listening: asyncio.Event,
    what: str,
    logger: logging.Logger,
    while_subscribed: Callable[[], AbstractAsyncContextManager[Any]] | None = None,
) -> None:
    """Hand each message published on `channel` to `on_message`, until cancelled. A
    subscription Redis dropped is made again RESUBSCRIBE_SECONDS later; `listening` is set
    while subscribed. `while_subscribed` is entered before each subscription and left
    when it ends (the relay's liveness beats)."""
    from redis.exceptions import RedisError

    while True:
        try:
            async with contextlib.AsyncExitStack() as stack:
                if while_subscribed is not None:
                    await stack.enter_async_context(while_subscribed())
                pubsub = await stack.enter_async_context(
                    redis.pubsub(ignore_subscribe_messages=True)
                )
                await pubsub.subscribe(channel)
                listening.set()
                async for message in pubsub.listen():
                    if message.get("type") == "message":
                        on_message(message["data"])
        except (RedisError, OSError) as exc:
            if listening.is_set():
                logger.warning("%s lost Redis (%s); retrying", what, exc)
            listening.clear()
            await asyncio.sleep(RESUBSCRIBE_SECONDS)
