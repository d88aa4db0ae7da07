"""Stop and re-attach between the processes of one host, without Redis: Unix sockets in
DATA_DIR.

`serve --workers N` on the embedded default, or servers side by side on one DATA_DIR: the
kernel hands each connection to any worker, so a stop or a re-attach often reaches a
process other than the one generating the answer. Each process listens on a socket of its
own in `DATA_DIR/generation-relay/` (the directory 0700, as DATA_DIR: only the server's
user can connect). A process asked for an answer it does not hold connects to every other
socket there and sends the request as one JSON line, `{"op": "stop"|"follow", "id",
"after"}`. Each answers on its connection in frames of a 4-byte big-endian length and a
payload (`relay_base`'s answers): `N` and the end of the connection from a process that
does not hold the answer; `A` and then the answer's end (stop) or its events (follow) from
the one that does. The first `A` wins; once each process said `N`, there is no owner (at
once: 409 GENERATION_ELSEWHERE, or the stored answer). A live process is waited for up to
LISTENERS_WAIT_SECONDS however busy it is; a dead one's socket refuses the connection at
once and its file is removed.

A follower's connection stays open while it follows: its end tells the owner the client
left (no keep-alive needed to learn it), and the owner's end (a crash) tells the follower
to ask again, as over Redis. With REDIS_URL this carrier is not used: Redis reaches every
process of every host.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import socket
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ollama_web.chat.relay_base import SILENT_KEEPALIVES, RelayBase, Reply, Send
from ollama_web.chat.relay_wire import LISTENERS_WAIT_SECONDS
from ollama_web.chat.sse import Follower

if TYPE_CHECKING:
    from ollama_web.chat.registry import GenerationRegistry

logger = logging.getLogger("ollama_web.chat.relay")

DIRECTORY_NAME = "generation-relay"
SUFFIX = ".sock"
BACKLOG = 1024
"""Connections waiting for a busy process's accept: a storm of re-attaches asks each
process once per re-attach."""
REQUEST_BYTES = 4096
REQUEST_WAIT_SECONDS = 5.0
"""How long a process waits for the request line of a connection it accepted."""
MAX_ANSWER_BYTES = 1 << 30
"""Larger is no answer of ours (an answer's forwarded events are bounded by its text and
their framing): the connection is taken for broken."""
CONNECT_RETRY_SECONDS = 0.05
_PATH_MAX = 100
"""A Unix socket's path is at most 107 bytes (Linux): a longer one is reached through
/proc/self/fd and the directory's descriptor."""


def _frame(payload: bytes) -> bytes:
    return len(payload).to_bytes(4, "big") + payload


async def _read_frame(reader: asyncio.StreamReader) -> bytes:
    """The next answer; EOFError (asyncio.IncompleteReadError) at the connection's end."""
    size = int.from_bytes(await reader.readexactly(4), "big")
    if size > MAX_ANSWER_BYTES:
        raise ValueError(f"relay answer of {size} bytes")
    return await reader.readexactly(size)


def _close(writer: asyncio.StreamWriter) -> None:
    with contextlib.suppress(OSError, RuntimeError):  # RuntimeError: its loop is closed
        writer.close()


class _SocketReply:
    """The owner's connection, as the asker reads it."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._reader = reader
        self._writer = writer

    async def receive(self, seconds: float) -> bytes | None:
        try:
            async with asyncio.timeout(max(seconds, 0.0)):
                return await _read_frame(self._reader)
        except TimeoutError:
            return None

    async def aclose(self) -> None:
        _close(self._writer)


class HostRelay(RelayBase):
    errors = (OSError, EOFError)

    def __init__(
        self, directory: Path, registry: GenerationRegistry, keepalive_seconds: float
    ) -> None:
        super().__init__(registry, keepalive_seconds)
        self.directory = directory.absolute()
        self.name = f"{os.getpid()}-{uuid.uuid4().hex[:12]}{SUFFIX}"
        self._dir_fd: int | None = None
        self._server: asyncio.AbstractServer | None = None

    @staticmethod
    def supported() -> bool:
        return hasattr(socket, "AF_UNIX")

    @classmethod
    async def open(
        cls, directory: Path, registry: GenerationRegistry, keepalive_seconds: float
    ) -> HostRelay | None:
        """The relay of this process, listening; None (logged) when the directory or its
        socket cannot be used: stop and re-attach then reach this process only."""
        if not cls.supported():
            return None
        relay = cls(directory, registry, keepalive_seconds)
        try:
            await relay._listen()
        except OSError as exc:
            logger.warning(
                "stop and re-attach cannot reach the other processes of this host through "
                "%s (%s): each process answers only for its own answers (set REDIS_URL to "
                "share them)",
                directory,
                exc,
            )
            await relay.aclose()
            return None
        return relay

    def _address(self, name: str) -> str:
        path = str(self.directory / name)
        if len(path.encode()) <= _PATH_MAX or self._dir_fd is None:
            return path
        return f"/proc/self/fd/{self._dir_fd}/{name}"

    def _prepare(self) -> str:
        """The directory made (0700) and held open; the address to listen on."""
        self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        self._dir_fd = os.open(self.directory, os.O_RDONLY | os.O_DIRECTORY)
        address = self._address(self.name)
        if len(address.encode()) > _PATH_MAX and not os.path.isdir("/proc/self/fd"):
            raise OSError(f"the socket's path is longer than {_PATH_MAX} bytes")
        return address

    async def _listen(self) -> None:
        self._server = await asyncio.start_unix_server(
            self._serve, self._prepare(), backlog=BACKLOG, limit=REQUEST_BYTES
        )
        os.chmod(self.directory / self.name, 0o600)
        self.listening.set()

    async def aclose(self) -> None:
        """Stop taking requests and remove this process's socket; give the forwards and
        stops under way DRAIN_SECONDS to send what they have, then cancel the rest."""
        self.listening.clear()
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(OSError):
                (self.directory / self.name).unlink()
        await self._drain_and_cancel()
        if self._dir_fd is not None:
            os.close(self._dir_fd)
            self._dir_fd = None

    # ------------------------------------------------------------- owner side

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is not None:  # drained and cancelled with the relay's own
            self._tasks.add(task)
            self._serving.add(task)
        try:
            request = await self._request(reader)
            if request is None:
                return
            op, message_id, after = request
            generation = self._registry.get(message_id)
            send = self._sender(writer)
            if generation is None:  # another process's answer (or nobody's)
                await send(b"N")
            elif op == "stop":
                await self._stop_for(generation, send)
            elif op == "follow":
                follower = Follower()
                left = asyncio.get_running_loop().create_task(self._until_left(reader, follower))
                try:
                    await self._forward(generation, after, send, follower)
                finally:
                    left.cancel()
        finally:
            _close(writer)
            if task is not None:
                self._tasks.discard(task)
                self._serving.discard(task)

    @staticmethod
    async def _request(reader: asyncio.StreamReader) -> tuple[str, str, int] | None:
        try:
            async with asyncio.timeout(REQUEST_WAIT_SECONDS):
                line = await reader.readuntil(b"\n")
            request = json.loads(line)
            op, message_id = str(request["op"]), str(request["id"])
        except (OSError, EOFError, TimeoutError, ValueError, KeyError, TypeError) as exc:
            # ValueError: a line over REQUEST_BYTES (LimitOverrunError) or not JSON
            logger.warning("ignored a malformed relay request: %s", type(exc).__name__)
            return None
        after = request.get("after")
        return op, message_id, after if isinstance(after, int) else 0

    def _sender(self, writer: asyncio.StreamWriter) -> Send:
        patience = SILENT_KEEPALIVES * self._keepalive

        async def send(payload: bytes) -> bool:
            """False once the asker is gone, or has read nothing for as long as it waits
            before it asks again."""
            if writer.is_closing():
                return False
            try:
                writer.write(_frame(payload))
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

    def _peers(self) -> list[str]:
        try:
            names = os.listdir(self.directory)
        except OSError as exc:
            logger.warning("could not list the relay's sockets: %s", exc)
            return []
        return [name for name in names if name.endswith(SUFFIX) and name != self.name]

    async def _ask(self, request: dict[str, Any]) -> Reply | None:
        """Ask every other process of the host at once; the owner's reply once it
        acknowledged, else None (each said no, or the rest were silent for
        LISTENERS_WAIT_SECONDS)."""
        peers = self._peers()
        if not peers:
            return None
        line = json.dumps(request).encode() + b"\n"
        loop = asyncio.get_running_loop()
        asks = [loop.create_task(self._ask_one(name, line)) for name in peers]
        owner: _SocketReply | None = None
        try:
            for done in asyncio.as_completed(asks, timeout=LISTENERS_WAIT_SECONDS):
                owner = await done
                if owner is not None:
                    return owner
        except TimeoutError:
            logger.warning(
                "%d of %d processes did not answer a relayed %s within %.0f s",
                sum(not ask.done() for ask in asks),
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

    async def _ask_one(self, name: str, line: bytes) -> _SocketReply | None:
        """The process's connection if it generates the answer, else None."""
        address = self._address(name)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + LISTENERS_WAIT_SECONDS
        while True:
            try:
                reader, writer = await asyncio.open_unix_connection(address)
                break
            except ConnectionRefusedError:  # the socket of a process that ended
                with contextlib.suppress(OSError):
                    os.unlink(self.directory / name)
                return None
            except FileNotFoundError:  # it ended meanwhile, and removed it
                return None
            except BlockingIOError:  # its backlog is full: it lives, and is busy
                if loop.time() >= deadline:
                    return None
                await asyncio.sleep(CONNECT_RETRY_SECONDS)
            except OSError as exc:
                logger.warning("could not reach the relay socket %s: %s", name, exc)
                return None
        try:
            writer.write(line)
            await writer.drain()
            first = await _read_frame(reader)
        except (OSError, EOFError, ValueError):
            _close(writer)
            return None
        except BaseException:
            _close(writer)
            raise
        if first == b"A":
            return _SocketReply(reader, writer)
        _close(writer)
        return None
