"""Stop and re-attach across server processes, over Redis pub/sub (when REDIS_URL is set;
without it, `host_relay` carries them between the processes of one host). What the owner
and the asker do with the answers is `relay_base`'s.

A running answer is a job inside the one process generating it (see `generation`). With
several workers or instances, a stop or a re-attach can reach another process. With Redis,
every process listens on one control channel, and the process that holds the job acts. The
asking process subscribes to a fresh reply channel, then publishes its request on the
control channel:

- stop: `{"op": "stop", "id", "reply"}`; the owner answers `A` (acknowledged) on the reply
  channel, stops the job (its upstream is closed at once) and answers `D` + the stored
  message as JSON;
- follow: `{"op": "follow", "id", "after", "reply"}`; the owner answers `A`, then forwards
  the frames after event `after` as they come (`F<last event id>\\n<frames>`), and `E` at
  the end (preceded by `L<the final event>` when `after` lies past the answer's end, so that
  this follower too ends with it). A `K` keep-alive goes out when nothing did for
  SSE_KEEPALIVE_SECONDS: when it reaches no subscriber (the follower left), the owner stops
  forwarding. When the follower hears nothing for three keep-alive intervals, or Redis fails
  under it, it asks again from the last event it has (the owner may be alive: a Redis blip),
  for REFOLLOW_SECONDS; when no owner answers, the stream ends with an error event under
  that same last id, so that a client reconnecting with `Last-Event-ID` misses none of the
  owner's events.

Every other listening process, the asker's own included, answers `N<its relay id>` (no
such answer here), so that the asker knows there is no owner as soon as they all did: it
counts them from PUBLISH's answer, which is the number of processes subscribed to the
control channel (a process whose listener is not subscribed at that moment, in a Redis
blip, is not counted, and cannot hear the request either). The asker waits until it has an
`A`, or an `N` from each of them (no owner: at once), or LISTENERS_WAIT_SECONDS: a live
owner is never taken for absent however long its `A` takes under load. Each process beats
in the channel's `alive` set every BEAT_SECONDS: once every process that beat lately said
`N`, the silent rest (a host gone without closing its connections, whose subscription Redis
keeps for minutes) is waited for GONE_WAIT_SECONDS, not the whole wait. The ids make a
request that redis-py sent twice (a retried publish) count each process once.

When Redis finds no owner (nobody is generating the answer any more, or Redis is down),
the request goes to the processes of this host through their sockets (`fallback`, the
`host_relay` every process also listens on): with Redis down, a host's workers still stop
and re-attach each other's answers. With no owner there either, the caller answers 409
GENERATION_ELSEWHERE as it does without Redis, or the answer as stored (see the callers in
`router`). A finished answer still in its process's memory (see
`registry`) counts as held there: its owner acknowledges and forwards it to its end.
Redis failures never reach the generation itself.

Pub/sub ignores Redis's database number: the control channel is named after the database
of REDIS_URL, so that deployments on different databases of one Redis neither count nor
hear each other. (Its name changed with the `N` answers: a process of the version before,
whose asker took any first answer for the owner's, is not reached, as without Redis.)

Publishes and the control channel's listener go through a client that replaces a dead
connection at once (see `core.redis_client`), so the first relay after a Redis restart
works. A reply channel's subscription does not: a follower must learn that its connection
dropped (the owner's forwards meanwhile reached nobody, and it stopped) to ask again at once.
"""

from __future__ import annotations

import asyncio
import json
import logging
import uuid
from typing import TYPE_CHECKING, Any

from ollama_web.chat.generation import Generation
from ollama_web.chat.host_relay import HostRelay
from ollama_web.chat.relay_base import (
    DRAIN_SECONDS,
    RETRY_SECONDS,
    SILENT_KEEPALIVES,
    RelayBase,
    Reply,
)
from ollama_web.chat.relay_wire import (
    LISTENERS_WAIT_SECONDS,
    Liveness,
    control_channel,
    next_message,
    owner_answered,
    reply_channel,
)
from ollama_web.core.redis_client import connection_options, listen_forever
from ollama_web.core.tasks import cancel_until_ended

if TYPE_CHECKING:
    import redis.asyncio as aioredis

    from ollama_web.chat.registry import GenerationRegistry

logger = logging.getLogger("ollama_web.chat.relay")

PUBLISH_CONNECTIONS = 50
"""Publishes in flight at once; more wait their turn, in order (see `_send`)."""
PUBLISH_WAIT_SECONDS = LISTENERS_WAIT_SECONDS
"""The longest wait for a publish's turn: an `A` later than that finds no asker waiting."""
REPLY_CONNECTIONS = 100_000
"""No cap of the client's own: each follow and stop in flight subscribes on a connection."""


class _PubSubReply:
    """A reply channel's subscription, as the asker reads it."""

    def __init__(self, pubsub: Any) -> None:
        self._pubsub = pubsub

    async def receive(self, seconds: float) -> bytes | None:
        return await next_message(self._pubsub, seconds)

    async def aclose(self) -> None:
        await self._pubsub.aclose()


class GenerationRelay(RelayBase):
    def __init__(
        self, redis_url: str, registry: GenerationRegistry, keepalive_seconds: float
    ) -> None:
        import redis.asyncio as aioredis
        from redis.exceptions import RedisError

        super().__init__(registry, keepalive_seconds)
        self.errors = (RedisError, *HostRelay.errors)  # OSError, and a fallback reply's
        self.fallback: HostRelay | None = None
        """The host's sockets, asked when Redis finds no owner (see the module's text)."""
        # redis-py caps a pool at 100 connections and fails past that, which a storm of
        # re-attaches or stops reached: publishes wait for their turn instead, and reply
        # channels are capped only by Redis (its maxclients).
        commands = aioredis.BlockingConnectionPool.from_url(
            redis_url,
            max_connections=PUBLISH_CONNECTIONS + 1,  # and the control channel's listener
            timeout=PUBLISH_WAIT_SECONDS,
            **connection_options(),
        )
        self._turns = asyncio.Semaphore(PUBLISH_CONNECTIONS)
        self._redis: aioredis.Redis = aioredis.Redis.from_pool(commands)
        self._replies: aioredis.Redis = aioredis.Redis.from_url(
            redis_url, max_connections=REPLY_CONNECTIONS, **connection_options(retry=False)
        )
        """For reply channels only, one connection each (a follow holds it while the answer
        runs). A closed pub/sub disconnects its connection before it goes back to the pool,
        so none here is ever reused, dead or alive."""
        self.control_channel = control_channel(commands.connection_kwargs.get("db", 0))
        self._id = uuid.uuid4().hex.encode()
        """Signs this process's `N` answers."""
        self._liveness = Liveness(self._redis, self.control_channel, self._id)
        self._listener: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._listener = asyncio.get_running_loop().create_task(
            self._listen(), name="generation-relay"
        )

    async def aclose(self) -> None:
        """Stop taking requests, give the forwards and stops under way DRAIN_SECONDS to send
        what they have (after a shutdown, the answers' last events), then cancel the rest."""
        if self._listener is not None:
            await cancel_until_ended(
                [self._listener], "the control channel's listener", DRAIN_SECONDS, logger
            )
            await self._liveness.leave(DRAIN_SECONDS)
        if self.fallback is not None:
            await asyncio.gather(self._drain_and_cancel(), self.fallback.aclose())
        else:
            await self._drain_and_cancel()
        from redis.exceptions import RedisError

        for client in (self._redis, self._replies):
            try:
                async with asyncio.timeout(DRAIN_SECONDS):
                    await client.aclose()
            except TimeoutError:
                logger.warning("a Redis client of the relay did not close in time; left")
            except (RedisError, OSError) as exc:  # redis-py's own TimeoutError is one
                logger.warning("a Redis client of the relay failed to close: %s", exc)

    # ------------------------------------------------------------- owner side

    async def _listen(self) -> None:
        await listen_forever(
            self._redis,
            self.control_channel,
            self._on_control,
            self.listening,
            "generation relay",
            logger,
            # Alive before it can be counted (see `owner_answered`), while it listens.
            while_subscribed=self._liveness.kept,
        )

    def _on_control(self, data: bytes) -> None:
        try:
            request = json.loads(data)
            message_id, reply = str(request["id"]), str(request["reply"])
            op = request["op"]
        except (ValueError, KeyError, TypeError):
            logger.warning("ignored a malformed relay request")
            return
        generation = self._registry.get(message_id)
        if generation is None:  # another process's answer (or nobody's)
            self._spawn(self._publish(reply, b"N" + self._id), serving=True)
            return
        if op == "stop":
            self._spawn(self._stop_to(generation, reply), serving=True)
        elif op == "follow":
            after = request.get("after")
            after = after if isinstance(after, int) else 0
            self._spawn(self._forward_to(generation, after, reply), serving=True)

    async def _publish(self, channel: str, payload: bytes) -> int | None:
        """Subscribers reached; None when Redis failed (logged)."""
        from redis.exceptions import RedisError

        try:
            return await self._send(channel, payload)
        except (RedisError, OSError) as exc:
            logger.warning("generation relay could not publish: %s", exc)
            return None

    async def _deliver(self, channel: str, payload: bytes) -> bool:
        """Publish to a remote follower; False once it is gone: the publish reached nobody,
        or Redis kept failing for as long as the follower waits before it asks again
        (SILENT_KEEPALIVES keep-alives). A failed publish (a Redis stall) is tried again; a
        frame that arrives twice is dropped by its id."""
        loop = asyncio.get_running_loop()
        give_up = loop.time() + SILENT_KEEPALIVES * self._keepalive
        pause = min(RETRY_SECONDS, self._keepalive / 2)
        while (reached := await self._publish(channel, payload)) is None:
            if loop.time() + pause > give_up:
                return False
            await asyncio.sleep(pause)
        return reached > 0

    async def _send(self, channel: str, payload: bytes) -> int:
        """PUBLISH, in turn: redis-py's blocking pool lets a task that gives a connection
        back take it again at once, ahead of those waiting. Owners forwarding to a storm
        of followers, each publishing again at once, kept the pool to themselves, and
        their own acknowledgements failed after the pool's wait ("No connection
        available"): refused 409 while the answer ran. An asyncio semaphore serves in
        order."""
        async with asyncio.timeout(PUBLISH_WAIT_SECONDS):
            await self._turns.acquire()
        try:
            return int(await self._redis.publish(channel, payload))
        finally:
            self._turns.release()

    async def _stop_to(self, generation: Generation, reply: str) -> None:
        async def publish(payload: bytes) -> bool:
            return bool(await self._publish(reply, payload))

        await self._stop_for(generation, publish)

    async def _forward_to(self, generation: Generation, after: int, reply: str) -> None:
        # A publish that reached nobody means the remote client is gone (`_deliver`).
        await self._forward(generation, after, lambda payload: self._deliver(reply, payload))

    # ----------------------------------------------------------- caller side

    async def nobody_on_host_holds(self, message_id: str) -> bool:
        """The host's processes are asked through their sockets: Redis's silence says
        nothing of a process that lost it."""
        return self.fallback is not None and await self.fallback.nobody_on_host_holds(message_id)

    async def _ask(self, request: dict[str, Any]) -> Reply | None:
        """Publish `request` with a fresh reply channel; the subscribed pubsub once an owner
        acknowledged it. Else (every listener said it is not the owner, or some were silent
        for LISTENERS_WAIT_SECONDS, or Redis failed) the host's processes are asked, and
        None when none is the owner either."""
        from redis.exceptions import RedisError

        reply = reply_channel()
        pubsub: Any = self._replies.pubsub()
        try:
            await pubsub.subscribe(reply)
            body = json.dumps({**request, "reply": reply})
            listeners = await self._send(self.control_channel, body.encode())
            alive = await self._liveness.alive()
            acknowledged = await owner_answered(pubsub, listeners, request["op"], alive)
        except (RedisError, OSError) as exc:
            logger.warning("could not relay %s: %s", request["op"], exc)
            acknowledged = False
        except BaseException:
            # Cancelled (the client left while we asked): unsubscribe all the same, or the
            # owner keeps reaching a subscriber and forwarding to nobody.
            await asyncio.shield(pubsub.aclose())
            raise
        if acknowledged:
            return _PubSubReply(pubsub)
        await pubsub.aclose()
        return None if self.fallback is None else await self.fallback._ask(request)
