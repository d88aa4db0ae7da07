"""With REDIS_URL: a pull cancelled through one process is cancelled in every process.

A pull runs in the process that took its request (`pull.PullManager`), and admins on other
processes pulling the same model join pulls of their own (Ollama shares the download
between them, and cancels it only when every client of it has left). So a cancel is
published on the channel `ollama-web:pulls:db<N>` (named after REDIS_URL's database, as the
generation relay's is), and each process's listener ends its own pulls of that model.
Redis failures never reach the pulls: a cancel that cannot be published still ends this
process's pulls, and the listener subscribes again a second after losing Redis.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ollama_web.core.redis_client import connection_options, listen_forever
from ollama_web.core.tasks import cancel_until_ended

if TYPE_CHECKING:
    import redis.asyncio as aioredis

logger = logging.getLogger("ollama_web.ollama.pulls")

CLOSE_SECONDS = 2.0

Cancel = Callable[[str, str | None], int]
"""(model key, node URL or None) -> how many pulls of this process were ended."""


class PullCancels:
    def __init__(self, redis_url: str, cancel: Cancel) -> None:
        import redis.asyncio as aioredis

        self._redis: aioredis.Redis = aioredis.Redis.from_url(redis_url, **connection_options())
        db = self._redis.connection_pool.connection_kwargs.get("db", 0)
        self.channel = f"ollama-web:pulls:db{db}"
        self._cancel = cancel
        self._listener: asyncio.Task[None] | None = None
        self.listening = asyncio.Event()
        """Set while this process is subscribed."""

    def start(self) -> None:
        self._listener = asyncio.get_running_loop().create_task(self._listen(), name="pull-cancels")

    async def publish(self, key: str, node_url: str | None) -> int:
        """Tell every process (this one included) to end its pulls of `key`; how many
        processes heard it (0 when Redis failed: logged)."""
        from redis.exceptions import RedisError

        payload = json.dumps({"model": key, "node": node_url})
        try:
            return int(await self._redis.publish(self.channel, payload))
        except (RedisError, OSError) as exc:
            logger.warning("could not tell the other processes to cancel a pull: %s", exc)
            return 0

    async def aclose(self) -> None:
        from redis.exceptions import RedisError

        if self._listener is not None:
            await cancel_until_ended([self._listener], "the pull cancels' listener", 1.0, logger)
        try:
            async with asyncio.timeout(CLOSE_SECONDS):
                await self._redis.aclose()
        except (TimeoutError, RedisError, OSError) as exc:
            logger.warning("the Redis client of pull cancels failed to close: %s", exc)

    async def _listen(self) -> None:
        await listen_forever(
            self._redis, self.channel, self._on_message, self.listening, "pull cancels", logger
        )

    def _on_message(self, data: Any) -> None:
        try:
            request = json.loads(data)
            key, node_url = str(request["model"]), request.get("node")
        except (ValueError, KeyError, TypeError):
            logger.warning("ignored a malformed pull cancel")
            return
        ended = self._cancel(key, node_url if isinstance(node_url, str) else None)
        if ended:
            logger.info("cancelled %d pull(s) of %s, as another process asked", ended, key)
