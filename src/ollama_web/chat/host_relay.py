"""Stop and re-attach between the processes of one host, without Redis: Unix sockets in
DATA_DIR.

`serve --workers N` on the embedded default, or servers side by side on one DATA_DIR: the
kernel hands each connection to any worker, so a stop or a re-attach often reaches a
process other than the one generating the answer. Each process listens on a socket of its
own in `DATA_DIR/generation-relay/` (see `core.host_sockets`: only the server's user can
connect). A process asked for an answer it does not hold connects to every other socket
there and sends the request, `{"op": "stop"|"follow", "id", "after"}`. Each answers on its
connection in frames (`relay_base`'s answers): `N` and the end of the connection from a
process that does not hold the answer; `A` and then the answer's end (stop) or its events
(follow) from the one that does. The first `A` wins; once each process said `N`, there is
no owner (at once: 409 GENERATION_ELSEWHERE, or the stored answer). A live process is
waited for up to LISTENERS_WAIT_SECONDS however busy it is; a dead one's socket refuses the
connection at once and its file is removed. `{"op": "has", "id"}` only asks: `A` or `N`
(`nobody_on_host_holds`, for the answers of a process that died: see `leases`).

A follower's connection stays open while it follows: its end tells the owner the client
left (no keep-alive needed to learn it), and the owner's end (a crash) tells the follower
to ask again, as over Redis. With REDIS_URL, Redis reaches every process of every host
first; these sockets are asked when it finds no owner (see `relay`), so that a host's
workers still reach each other while Redis is down.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ollama_web.chat.relay_base import SILENT_KEEPALIVES, RelayBase, Reply, Send
from ollama_web.chat.relay_wire import LISTENERS_WAIT_SECONDS
from ollama_web.chat.sse import Follower
from ollama_web.core.host_sockets import REQUEST_BYTES, HostSockets, close, frame, read_frame

if TYPE_CHECKING:
    from ollama_web.chat.registry import GenerationRegistry

logger = logging.getLogger("ollama_web.chat.relay")

DIRECTORY_NAME = "generation-relay"


class _SocketReply:
    """The owner's connection, as the asker reads it."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._reader = reader
        self._writer = writer

    async def receive(self, seconds: float) -> bytes | None:
        try:
            async with asyncio.timeout(max(seconds, 0.0)):
                return await read_frame(self._reader)
        except TimeoutError:
            return None

    async def aclose(self) -> None:
        close(self._writer)


class HostRelay(RelayBase):
    errors = (OSError, EOFError)

    def __init__(
        self, directory: Path, registry: GenerationRegistry, keepalive_seconds: float
    ) -> None:
        super().__init__(registry, keepalive_seconds)
        self.sockets = HostSockets(directory)
        self._silent_until: dict[str, float] = {}
        """Processes that did not answer a request within LISTENERS_WAIT_SECONDS: until
        when (loop time) `nobody_on_host_holds` takes them for still silent."""

    @classmethod
    async def open(
        cls, directory: Path, registry: GenerationRegistry, keepalive_seconds: float
    ) -> HostRelay | None:
        """The relay of this process, listening; None (logged) when the directory or its
        socket cannot be used: stop and re-attach then reach this process only."""
        if not HostSockets.supported():
            return None
        relay = cls(directory, registry, keepalive_seconds)
        try:
            await relay.sockets.listen(relay._serve)
        except OSError as exc:
            logger.warning(
                "stop and re-attach cannot reach the other processes of this host through "
                "%s (%s): each process answers only for its own answers unless REDIS_URL "
                "reaches the others",
                directory,
                exc,
            )
            relay.sockets.close()
            return None
        relay.listening.set()
        return relay

    async def aclose(self) -> None:
        """Stop taking requests and remove this process's socket; give the forwards and
        stops under way DRAIN_SECONDS to send what they have, then cancel the rest."""
        self.listening.clear()
        self.sockets.close()
        await self._drain_and_cancel()

    # ------------------------------------------------------------- owner side

    async def _serve(
        self, request: dict[str, Any], reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        task = asyncio.current_task()
        if task is not None:  # drained and cancelled with the relay's own
            self._tasks.add(task)
            self._serving.add(task)
        try:
            generation = self._registry.get(str(request.get("id")))
            send = self._sender(writer)
            op = request.get("op")
            if generation is None:  # another process's answer (or nobody's)
                await send(b"N")
            elif op == "stop":
                await self._stop_for(generation, send)
            elif op == "has":
                await send(b"A")
            elif op == "follow":
                after = request.get("after")
                follower = Follower()
                left = asyncio.get_running_loop().create_task(self._until_left(reader, follower))
                try:
                    after = after if isinstance(after, int) else 0
                    await self._forward(generation, after, send, follower)
                finally:
                    left.cancel()
        finally:
            if task is not None:
                self._tasks.discard(task)
                self._serving.discard(task)

    def _sender(self, writer: asyncio.StreamWriter) -> Send:
        patience = SILENT_KEEPALIVES * self._keepalive

        async def send(payload: bytes) -> bool:
            """False once the asker is gone, or has read nothing for as long as it waits
            before it asks again."""
            if writer.is_closing():
                return False
            try:
                writer.write(frame(payload))
                async with asyncio.timeout(patience):
                    await writer.drain()
            except (OSError, TimeoutError):
                return False
            return True

        return send

    @staticmethod
    async def _until_left(reader: asyncio.StreamReader, follower: Follower) -> None:
        """The asker sends nothing after its request: the end of its side is its client
        leaving (or its process ending)."""
        with contextlib.suppress(OSError):
            while await reader.read(REQUEST_BYTES):
                pass
        follower.disconnected = True
        follower.wake()

    # ----------------------------------------------------------- caller side

    async def _ask(self, request: dict[str, Any]) -> Reply | None:
        """Ask every other process of the host at once; the owner's reply once it
        acknowledged, else None (each said no, or the rest were silent for
        LISTENERS_WAIT_SECONDS)."""
        peers = self.sockets.peers()
        if not peers:
            return None
        loop = asyncio.get_running_loop()
        asks = [loop.create_task(self._ask_one(name, request)) for name in peers]
        owner: _SocketReply | None = None
        try:
            for done in asyncio.as_completed(asks, timeout=LISTENERS_WAIT_SECONDS):
                owner = await done
                if owner is not None:
                    return owner
        except TimeoutError:
            silent = [name for name, ask in zip(peers, asks, strict=True) if not ask.done()]
            self._mark_silent(silent)
            logger.warning(
                "%d of %d processes did not answer a relayed %s within %.0f s",
                len(silent),
                len(asks),
                request["op"],
                LISTENERS_WAIT_SECONDS,
            )
        finally:
            for ask in asks:
                ask.cancel()
            others = await asyncio.gather(*asks, return_exceptions=True)
            for other in others:  # a second acknowledgement: not the one kept
                if isinstance(other, _SocketReply) and other is not owner:
                    await other.aclose()
        return None

    def _mark_silent(self, names: list[str]) -> None:
        now = asyncio.get_running_loop().time()
        self._silent_until = {n: t for n, t in self._silent_until.items() if t > now}
        self._silent_until.update(dict.fromkeys(names, now + LISTENERS_WAIT_SECONDS))

    async def nobody_on_host_holds(self, message_id: str) -> bool:
        """True when no other process of this host holds the answer: each said so (`has`),
        or is gone (its socket refused the connection and was removed); False when one
        holds it, or did not say within LISTENERS_WAIT_SECONDS (alive, but too busy or
        stopped to tell), or could not be asked. A process that did not answer the
        request just before (the stop or re-attach that found no owner) is not waited
        for a second time: False at once."""
        peers = self.sockets.peers()
        loop = asyncio.get_running_loop()
        if not peers:
            return True
        if any(self._silent_until.get(name, 0.0) > loop.time() for name in peers):
            return False

        async def holds(name: str) -> bool | None:
            connection = await self.sockets.request(name, {"op": "has", "id": message_id})
            if connection is None:  # gone (its socket removed), or not reached
                return None if (self.sockets.directory / name).exists() else False
            reader, writer = connection
            try:
                answer = await read_frame(reader)
            except (OSError, EOFError, ValueError):  # an older version ends unknown ops so
                return None
            finally:
                close(writer)
            return {b"N": False, b"A": True}.get(answer)

        asks = [loop.create_task(holds(name)) for name in peers]
        try:
            done, pending = await asyncio.wait(asks, timeout=LISTENERS_WAIT_SECONDS)
        finally:
            for ask in asks:
                ask.cancel()
            await asyncio.gather(*asks, return_exceptions=True)
        if pending:
            self._mark_silent(
                [name for name, ask in zip(peers, asks, strict=True) if ask in pending]
            )
            return False
        return all(ask.result() is False for ask in done)

    async def _ask_one(self, name: str, request: dict[str, Any]) -> _SocketReply | None:
        """The process's connection if it generates the answer, else None."""
        connection = await self.sockets.request(name, request)
        if connection is None:
            return None
        reader, writer = connection
        try:
            first = await read_frame(reader)
        except (OSError, EOFError, ValueError):
            close(writer)
            return None
        except BaseException:
            close(writer)
            raise
        if first == b"A":
            return _SocketReply(reader, writer)
        close(writer)
        return None
