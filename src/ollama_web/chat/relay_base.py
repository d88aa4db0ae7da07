"""What stop and re-attach across server processes do whatever carries them: the owner's
side (stop the job, forward its events) and the asker's (wait for the stored message, fill
a `RemoteLog` with the forwarded events, ask again when the owner falls silent).

Two carriers: Redis pub/sub (`relay.GenerationRelay`, with REDIS_URL: every process of
every host) and Unix sockets in DATA_DIR (`host_relay.HostRelay`: the processes of one
host; without REDIS_URL, or when Redis finds no owner). Both speak the same answers, each
a bytes payload:

- `A`: acknowledged, this process generates the answer;
- `D` + the stored message as JSON: a stopped answer's end;
- `F<last event id>\\n<frames>`: events forwarded to a follower;
- `L<the final event>`: the final event for a follower placed past the answer's end;
- `E`: the end of the answer's events;
- `K`: keep-alive, sent when nothing was for SSE_KEEPALIVE_SECONDS.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, Protocol

from ollama_web.chat.generation import Generation
from ollama_web.chat.relay_wire import RemoteLog
from ollama_web.chat.sse import Follower
from ollama_web.core.redis_client import RESUBSCRIBE_SECONDS
from ollama_web.core.tasks import cancel_until_ended

if TYPE_CHECKING:
    from ollama_web.chat.registry import GenerationRegistry

logger = logging.getLogger("ollama_web.chat.relay")

STOP_WAIT_SECONDS = 10.0
SILENT_KEEPALIVES = 3
RETRY_SECONDS = RESUBSCRIBE_SECONDS
REFOLLOW_SECONDS = 5.0
"""How long a follower that lost the owner asks again, every RETRY_SECONDS: a listener
that lost Redis subscribes again RETRY_SECONDS after."""
DRAIN_SECONDS = 2.0

Send = Callable[[bytes], Awaitable[bool]]
"""Sends one answer to the asker; False once it is gone (nothing more reaches it)."""


class Reply(Protocol):
    """The asker's end: the answers of the owner that acknowledged a request."""

    async def receive(self, seconds: float) -> bytes | None:
        """The next answer within `seconds`, or None; raises the relay's errors when the
        carrier failed (the owner may be gone)."""

    async def aclose(self) -> None: ...


class RelayBase:
    """Stop and re-attach through the process generating an answer; a carrier implements
    `_ask` and `aclose`, and serves the requests it receives with `_stop_for` and
    `_forward`."""

    errors: tuple[type[BaseException], ...] = (OSError,)
    """What a failing carrier raises: a relay that meets one gives up or asks again."""

    def __init__(self, registry: GenerationRegistry, keepalive_seconds: float) -> None:
        self._registry = registry
        self._keepalive = keepalive_seconds
        self._tasks: set[asyncio.Task[Any]] = set()
        self._serving: set[asyncio.Task[Any]] = set()
        self._follows: dict[RemoteLog, asyncio.Task[None]] = {}
        """The answers of other processes this one relays to its clients, and their pumps."""
        self.listening = asyncio.Event()
        """Set while this process can be reached by the others."""

    async def aclose(self) -> None:
        raise NotImplementedError

    async def _ask(self, request: dict[str, Any]) -> Reply | None:
        """Send `request` to the other processes; the owner's reply once it acknowledged,
        else None (no process generates the answer, or none could be asked)."""
        raise NotImplementedError

    async def nobody_on_host_holds(self, message_id: str) -> bool:
        """True when no process of this host holds the answer (every other one said so, or
        is gone); False when one does, or the carrier cannot tell (see `host_relay`)."""
        return False

    def _spawn(self, coroutine: Any, *, serving: bool = False) -> asyncio.Task[Any]:
        """A task of the relay's; `serving` marks the owner side (a forward or a stop for
        another process), which a closing relay lets finish."""
        task = asyncio.get_running_loop().create_task(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        if serving:
            self._serving.add(task)
            task.add_done_callback(self._serving.discard)
        return task

    async def _drain_and_cancel(self) -> None:
        """Give the forwards and stops under way DRAIN_SECONDS to send what they have
        (after a shutdown, the answers' last events), then cancel the rest."""
        if self._serving:
            await asyncio.wait(set(self._serving), timeout=DRAIN_SECONDS)
        await cancel_until_ended(self._tasks, "relay tasks", DRAIN_SECONDS, logger)

    # ------------------------------------------------------------- owner side

    async def _stop_for(self, generation: Generation, send: Send) -> None:
        await send(b"A")
        generation.stop()
        await generation.wait()
        if generation.result is not None:
            await send(b"D" + generation.result.model_dump_json().encode())

    async def _forward(
        self, generation: Generation, after: int, send: Send, follower: Follower | None = None
    ) -> None:
        """Forward the answer's events after `after` until its end or until the asker is
        gone: `send` said so, or the carrier marked `follower` disconnected (and woke it)."""
        log = generation.log
        follower = follower if follower is not None else Follower()
        log.attach(follower)
        position = log.position_after(after)
        # An asker that is gone means the remote client is: the follower counts as
        # disconnected, so its leaving can abandon the answer (with
        # CHAT_CONTINUE_ON_DISCONNECT=false) like a local client's.
        try:
            delivered = await send(b"A")
            while delivered and not follower.disconnected:
                frames = log.frames
                if position < len(frames):
                    chunk = b"".join(frames[position:])
                    position = len(frames)
                    header = b"F%d\n" % (log.base + position)
                    delivered = await send(header + chunk)
                elif log.finished:
                    if position > len(frames) and log.final_frame is not None:
                        # A follower placed past the end: the final event all the same,
                        # under its own id, as a local one gets it (sse.SSEResponse).
                        await send(b"L" + log.final_frame)
                    await send(b"E")
                    return
                else:
                    try:
                        await asyncio.wait_for(follower.wait(), self._keepalive)
                    except TimeoutError:
                        delivered = await send(b"K")
            follower.disconnected = True
        finally:
            log.detach(follower)

    # ----------------------------------------------------------- caller side

    async def stop(self, message_id: str) -> dict[str, Any] | None:
        """Have the owner stop the answer; the stored message, or None if no owner."""
        reply = await self._ask({"op": "stop", "id": message_id})
        if reply is None:
            return None
        loop = asyncio.get_running_loop()
        deadline = loop.time() + STOP_WAIT_SECONDS
        try:
            answer = await reply.receive(STOP_WAIT_SECONDS)
            while answer is not None and answer.startswith(b"N"):  # another listener's, late
                answer = await reply.receive(deadline - loop.time())
        except self.errors as exc:
            logger.warning("could not relay stop: %s", exc)
            return None
        finally:
            await reply.aclose()
        if answer is None or not answer.startswith(b"D"):
            return None
        stored: dict[str, Any] = json.loads(answer[1:])
        return stored

    async def follow(self, message_id: str, after: int) -> RemoteLog | None:
        """The owner's events after `after`, as they come; None if no owner answers."""
        reply = await self._ask({"op": "follow", "id": message_id, "after": after})
        if reply is None:
            return None
        log = RemoteLog(after)
        pump = self._spawn(self._pump(reply, log, message_id))

        def abandoned() -> None:
            pump.cancel()  # the client left: let go of the reply, the owner stops forwarding

        log.on_abandoned = abandoned
        self._follows[log] = pump
        pump.add_done_callback(lambda _: self._follows.pop(log, None))
        return log

    def end_follows(self, message: str) -> None:
        """End every stream following another process's answer, with an error event under
        the last id it got (`RemoteLog.lost`): its client can resume elsewhere."""
        for log, pump in list(self._follows.items()):
            pump.cancel()
            if not log.finished:
                log.lost(message)

    async def _pump(self, reply: Reply, log: RemoteLog, message_id: str) -> None:
        loop = asyncio.get_running_loop()
        while not await self._forwarded(reply, log):
            give_up = loop.time() + REFOLLOW_SECONDS
            while True:
                again = await self._ask({"op": "follow", "id": message_id, "after": log.last_id})
                if again is not None:
                    reply = again
                    break
                if loop.time() >= give_up:
                    log.lost()
                    return
                await asyncio.sleep(RETRY_SECONDS)

    async def _forwarded(self, reply: Reply, log: RemoteLog) -> bool:
        """Copy what the owner forwards into `log`; True once it ended, False when the owner
        fell silent or the carrier failed (closes `reply` either way)."""
        silence = self._keepalive * SILENT_KEEPALIVES
        broken: tuple[type[BaseException], ...] = (*self.errors, ValueError)
        try:
            while True:
                data = await reply.receive(silence)
                if data is None:
                    return False
                kind = data[:1]
                if kind == b"F":
                    header, _, frames = data[1:].partition(b"\n")
                    last_id = int(header)
                    if last_id > log.last_id:  # else an answer sent twice
                        log.extend(last_id, frames)
                elif kind == b"L":  # past the answer's end: its final event, own id
                    log.extend(log.last_id, data[1:])
                elif kind == b"E":
                    log.finish()
                    return True
        except broken as exc:
            logger.warning("relayed stream broke off: %s", exc)
            return False
        finally:
            await reply.aclose()
