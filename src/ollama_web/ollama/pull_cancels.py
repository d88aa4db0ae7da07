"""A pull cancelled through one process is cancelled in every process: with REDIS_URL,
every process of every host (`PullCancels`); without it, or while Redis is unreachable,
the processes of this host that share DATA_DIR (`HostPullCancels`, over
`core.host_sockets` in DATA_DIR/pull-cancels/).

A pull runs in the process that took its request (`pull.PullManager`), and admins on other
processes pulling the same model join pulls of their own (Ollama shares the download
between them, and cancels it only when every client of it has left). So a cancel is
published on the channel `ollama-web:pulls:db<N>` (named after REDIS_URL's database, as the
generation relay's is), and each process's listener ends its own pulls of that model.
Redis failures never reach the pulls: a cancel that cannot be published still ends this
process's pulls, and goes to the other processes of this host through their sockets (with
REDIS_URL every process also listens there: `PullCancels.fallback`); the listener
subscribes again a second after losing Redis.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ollama_web.core.host_sockets import HostSockets, close, frame, read_frame
from ollama_web.core.redis_client import connection_options, listen_forever
from ollama_web.core.tasks import cancel_until_ended

if TYPE_CHECKING:
    from pathlib import Path

    import redis.asyncio as aioredis

logger = logging.getLogger("ollama_web.ollama.pulls")

CLOSE_SECONDS = 2.0
HOST_DIRECTORY_NAME = "pull-cancels"
TELL_WAIT_SECONDS = 10.0
"""How long a cancel waits for another process of the host, however busy, to end its pulls."""

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
        self.fallback: HostPullCancels | None = None
        """The host's processes, told when Redis cannot be."""

    def start(self) -> None:
        self._listener = asyncio.get_running_loop().create_task(self._listen(), name="pull-cancels")

    async def publish(self, key: str, node_url: str | None) -> int:
        """Tell every process (this one included) to end its pulls of `key`; how many
        processes heard it. When Redis failed (logged), those of this host are told
        through their sockets instead (0 where those cannot be used)."""
        from redis.exceptions import RedisError

        payload = json.dumps({"model": key, "node": node_url})
        try:
            return int(await self._redis.publish(self.channel, payload))
        except (RedisError, OSError) as exc:
            logger.warning("could not tell the other processes to cancel a pull: %s", exc)
        return 0 if self.fallback is None else await self.fallback.publish(key, node_url)

    async def aclose(self) -> None:
        from redis.exceptions import RedisError

        if self._listener is not None:
            await cancel_until_ended([self._listener], "the pull cancels' listener", 1.0, logger)
        try:
            async with asyncio.timeout(CLOSE_SECONDS):
                await self._redis.aclose()
        except (TimeoutError, RedisError, OSError) as exc:
            logger.warning("the Redis client of pull cancels failed to close: %s", exc)
        if self.fallback is not None:
            await self.fallback.aclose()

    async def _listen(self) -> None:
        await listen_forever(
            self._redis, self.channel, self._on_message, self.listening, "pull cancels", logger
        )

    def _on_message(self, data: Any) -> None:
        try:
            request = json.loads(data)
        except ValueError:
            request = None
        _cancel_as_asked(self._cancel, request)


def _cancel_as_asked(cancel: Cancel, request: Any) -> int | None:
    """End this process's pulls another process asked about; how many, or None for a
    request that is not one (logged)."""
    key = request.get("model") if isinstance(request, dict) else None
    if not isinstance(key, str):
        logger.warning("ignored a malformed pull cancel")
        return None
    node_url = request.get("node")
    ended = cancel(key, node_url if isinstance(node_url, str) else None)
    if ended:
        logger.info("cancelled %d pull(s) of %s, as another process asked", ended, key)
    return ended


class HostPullCancels:
    """Cancels told to the other processes of this host (without REDIS_URL, or while Redis
    is unreachable), each over its socket in DATA_DIR/pull-cancels/; each answers once it
    has ended its pulls."""

    def __init__(self, directory: Path, cancel: Cancel) -> None:
        self.sockets = HostSockets(directory)
        self._cancel = cancel

    @classmethod
    async def open(cls, directory: Path, cancel: Cancel) -> HostPullCancels | None:
        """Listening; None (logged) when the directory or its socket cannot be used."""
        if not HostSockets.supported():
            return None
        cancels = cls(directory, cancel)
        try:
            await cancels.sockets.listen(cancels._serve)
        except OSError as exc:
            logger.warning(
                "a pull cancelled through one process cannot reach the other processes of "
                "this host through %s (%s), unless REDIS_URL reaches them",
                directory,
                exc,
            )
            cancels.sockets.close()
            return None
        return cancels

    async def publish(self, key: str, node_url: str | None) -> int:
        """Tell every other process of this host to end its pulls of `key`; how many
        processes heard it, this one included (as Redis counts them)."""
        peers = self.sockets.peers()
        told = await asyncio.gather(*(self._tell(name, key, node_url) for name in peers))
        return 1 + sum(told)

    async def _tell(self, name: str, key: str, node_url: str | None) -> bool:
        connection = await self.sockets.request(name, {"model": key, "node": node_url})
        if connection is None:
            return False
        reader, writer = connection
        try:
            async with asyncio.timeout(TELL_WAIT_SECONDS):
                await read_frame(reader)
        except (OSError, EOFError, ValueError, TimeoutError) as exc:
            logger.warning("a process of this host did not confirm a pull cancel: %r", exc)
            return False
        finally:
            close(writer)
        return True

    async def _serve(
        self, request: dict[str, Any], reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        ended = _cancel_as_asked(self._cancel, request)
        if ended is not None:
            writer.write(frame(b"%d" % ended))
            with contextlib.suppress(OSError):
                await writer.drain()

    async def aclose(self) -> None:
        self.sockets.close()
