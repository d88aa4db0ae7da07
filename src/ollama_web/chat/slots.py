"""A user's generation slots, shared by every server process through Redis (with REDIS_URL).

MAX_CONCURRENT_GENERATIONS_PER_USER bounds the answers a user has running. Each process
counts its own (the registry's reservations); with several workers or instances a user could
run that many in each. With Redis, every slot is also a member of the user's sorted set
`ollama-web:slots:<user id>`, scored with Redis's own clock (hosts' clocks may differ):

- taking one is one script: drop the members not refreshed for `stale_seconds` (their
  process is gone), count the rest, add this one if there is room (or if it is there
  already: redis-py sent the take again, its connection having dropped before the answer);
- at every lease heartbeat (see `leases`) the process writes every slot it holds, anew: a
  Redis that restarted empty gets them back, and so does one that was unreachable when the
  slot was taken; the process gives a slot back when its answer ends.

While Redis is unreachable the processes of each host count together (`host_slots`, or
each process on its own where those cannot be used; logged once): a Redis outage never
stops chats. Within a heartbeat of Redis answering again, the
count is shared again; it may then exceed the limit (those answers are running), and takes
are refused until it drops.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from ollama_web.core.redis_client import connection_options

if TYPE_CHECKING:
    import redis.asyncio as aioredis

logger = logging.getLogger("ollama_web.chat.slots")

KEY_PREFIX = "ollama-web:slots:"

_TAKE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local stale = tonumber(ARGV[2])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - stale)
if not redis.call('ZSCORE', KEYS[1], ARGV[3])
    and redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[1]) then
  return 0
end
redis.call('ZADD', KEYS[1], now, ARGV[3])
redis.call('EXPIRE', KEYS[1], math.ceil(stale) + 1)
return 1
"""

_REFRESH = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
for i, key in ipairs(KEYS) do
  redis.call('ZADD', key, now, ARGV[i + 1])
  redis.call('EXPIRE', key, ARGV[1])
end
return #KEYS
"""


class SharedSlots:
    def __init__(self, redis_url: str, stale_seconds: float) -> None:
        import redis.asyncio as aioredis

        self._redis: aioredis.Redis = aioredis.Redis.from_url(redis_url, **connection_options())
        self._stale = stale_seconds
        self._take = self._redis.register_script(_TAKE)
        self._refresh = self._redis.register_script(_REFRESH)
        self._reachable = True
        self._tasks: set[asyncio.Task[Any]] = set()

    def _failed(self, exc: Exception) -> None:
        if self._reachable:
            logger.warning(
                "Redis is unreachable (%s); generation limits count per host (the slot files "
                "in DATA_DIR), or per process where those cannot be used",
                exc,
            )
        self._reachable = False

    def _ok(self) -> None:
        if not self._reachable:
            logger.warning("Redis is reachable again; generation limits are shared")
        self._reachable = True

    async def take(self, user_id: str, slot_id: str, limit: int) -> bool | None:
        """True: taken; False: the user's `limit` slots are in use; None: Redis failed."""
        from redis.exceptions import RedisError

        try:
            taken = await self._take(
                keys=[KEY_PREFIX + user_id], args=[limit, self._stale, slot_id]
            )
        except (RedisError, OSError) as exc:
            self._failed(exc)
            return None
        self._ok()
        return bool(taken)

    def give_back(self, user_id: str, slot_id: str) -> None:
        """Free a slot (in the background: it is called when an answer ends)."""
        task = asyncio.get_running_loop().create_task(self._remove(user_id, slot_id))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _remove(self, user_id: str, slot_id: str) -> None:
        from redis.exceptions import RedisError

        try:
            await self._redis.zrem(KEY_PREFIX + user_id, slot_id)
        except (RedisError, OSError) as exc:
            self._failed(exc)  # the slot lapses after `stale_seconds` anyway

    async def refresh(self, held: Iterable[tuple[str, str]]) -> bool:
        """Write the (user id, slot id) slots this process holds, adding those Redis lacks;
        True once Redis has them."""
        from redis.exceptions import RedisError

        pairs = list(held)
        if not pairs:
            return True
        keys = [KEY_PREFIX + user_id for user_id, _ in pairs]
        args: list[Any] = [math.ceil(self._stale) + 1, *(slot for _, slot in pairs)]
        try:
            await self._refresh(keys=keys, args=args)
        except (RedisError, OSError) as exc:
            self._failed(exc)
            return False
        self._ok()
        return True

    async def aclose(self) -> None:
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._redis.aclose()
