"""Requests between the processes of one host that share DATA_DIR, without Redis: a Unix
socket per process in a directory of DATA_DIR, and connections to the others'.

Used by the generation relay (`chat.host_relay`: stop and re-attach) and by pull cancels
(`ollama.pull_cancels`). Each gives its own directory (mode 0700, as DATA_DIR: only the
server's user can connect; the sockets 0600). A request is one JSON line; answers are
frames of a 4-byte big-endian length and a payload. A dead process's socket refuses a
connection at once and is removed by the process that met it, or by the next process to
start; a live one's, however busy, takes it into its backlog. Socket names begin with the
host's boot id: another host's sockets (a DATA_DIR shared over the network) are ignored. A
socket path is at most 107 bytes (Linux): a longer one is reached through /proc/self/fd and
the directory's descriptor.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import socket
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

logger = logging.getLogger("ollama_web.host_sockets")

SUFFIX = ".sock"
BACKLOG = 1024
"""Connections waiting for a busy process's accept: a storm of re-attaches asks each
process once per re-attach."""
REQUEST_BYTES = 4096
REQUEST_WAIT_SECONDS = 5.0
"""How long a process waits for the request line of a connection it accepted."""
MAX_FRAME_BYTES = 1 << 30
"""Larger is no answer of ours: the connection is taken for broken."""
CONNECT_WAIT_SECONDS = 10.0
CONNECT_RETRY_SECONDS = 0.05
_PATH_MAX = 100


def _host_tag() -> str:
    """This host's kernel, as its processes' socket names begin: the boot id, the same in
    every container of the host and different on every other host. A DATA_DIR shared over
    the network (NFS) shows other hosts' socket files, which refuse a connection as a dead
    process's would: without the tag they would be taken for dead, and removed."""
    try:
        with open("/proc/sys/kernel/random/boot_id") as boot_id:
            return boot_id.read().strip().replace("-", "")[:12] or "host"
    except OSError:
        return socket.gethostname().replace("-", "")[:32] or "host"


HOST_TAG = _host_tag()

Handler = Callable[[dict[str, Any], asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]
"""Serves one request (its JSON object) on its connection, which is closed after."""


def frame(payload: bytes) -> bytes:
    return len(payload).to_bytes(4, "big") + payload


async def read_frame(reader: asyncio.StreamReader) -> bytes:
    """The next answer; EOFError (asyncio.IncompleteReadError) at the connection's end."""
    size = int.from_bytes(await reader.readexactly(4), "big")
    if size > MAX_FRAME_BYTES:
        raise ValueError(f"an answer of {size} bytes")
    return await reader.readexactly(size)


def close(writer: asyncio.StreamWriter) -> None:
    with contextlib.suppress(OSError, RuntimeError):  # RuntimeError: its loop is closed
        writer.close()


class HostSockets:
    """This process's socket in `directory`, serving `handler`, and the other processes'."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory.absolute()
        self.name = f"{HOST_TAG}-{os.getpid()}-{uuid.uuid4().hex[:12]}{SUFFIX}"
        self._dir_fd: int | None = None
        self._server: asyncio.AbstractServer | None = None
        self._pruning: asyncio.Task[None] | None = None

    @staticmethod
    def supported() -> bool:
        return hasattr(socket, "AF_UNIX")

    def address(self, name: str) -> str:
        path = str(self.directory / name)
        if len(path.encode()) <= _PATH_MAX or self._dir_fd is None:
            return path
        return f"/proc/self/fd/{self._dir_fd}/{name}"

    def _prepare(self) -> str:
        """The directory made (0700) and held open; the address to listen on."""
        self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        self._dir_fd = os.open(self.directory, os.O_RDONLY | os.O_DIRECTORY)
        address = self.address(self.name)
        if len(address.encode()) > _PATH_MAX and not os.path.isdir("/proc/self/fd"):
            raise OSError(f"the socket's path is longer than {_PATH_MAX} bytes")
        return address

    async def listen(self, handler: Handler) -> None:
        """Serve `handler` on this process's socket; OSError when it cannot be made."""

        async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            try:
                request = await _request(reader)
                if request is not None:
                    await handler(request, reader, writer)
            finally:
                close(writer)

        self._server = await asyncio.start_unix_server(
            serve, self._prepare(), backlog=BACKLOG, limit=REQUEST_BYTES
        )
        os.chmod(self.directory / self.name, 0o600)
        self._pruning = asyncio.get_running_loop().create_task(self._prune())

    async def _prune(self) -> None:
        """Remove the sockets that processes killed before left here (a killed worker's
        stays until a request meets it): each is connected to once, and a live process
        takes a connection closed unused for what it is, a probe."""
        for name in self.peers():
            connection = await self.connect(name)
            if connection is not None:
                close(connection[1])

    def close(self) -> None:
        """Take no more connections, and remove this process's socket."""
        if self._pruning is not None:
            self._pruning.cancel()
            self._pruning = None
        if self._server is not None:
            self._server.close()
            self._server = None
            with contextlib.suppress(OSError):
                os.unlink(self.directory / self.name)
        if self._dir_fd is not None:
            os.close(self._dir_fd)
            self._dir_fd = None

    def peers(self) -> list[str]:
        """The sockets of the other processes of this host (and of dead ones not yet met);
        another host's, in a DATA_DIR shared over the network, are none of its business."""
        try:
            names = os.listdir(self.directory)
        except OSError as exc:
            logger.warning("could not list the sockets in %s: %s", self.directory, exc)
            return []
        ours = f"{HOST_TAG}-"
        return [
            name
            for name in names
            if name.startswith(ours) and name.endswith(SUFFIX) and name != self.name
        ]

    async def request(
        self, name: str, request: dict[str, Any]
    ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter] | None:
        """A connection to process `name` with `request` sent; None when that process is
        gone (a dead one's socket is removed) or cannot be reached (logged)."""
        connection = await self.connect(name)
        if connection is None:
            return None
        reader, writer = connection
        try:
            writer.write(json.dumps(request).encode() + b"\n")
            await writer.drain()
        except OSError:
            close(writer)
            return None
        except BaseException:  # cancelled: the asker's client left
            close(writer)
            raise
        return reader, writer

    async def connect(self, name: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter] | None:
        """A connection to process `name`; None when that process is gone (a dead one's
        socket is removed) or cannot be reached (logged)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + CONNECT_WAIT_SECONDS
        while True:
            try:
                reader, writer = await asyncio.open_unix_connection(self.address(name))
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
                logger.warning("could not reach the socket %s: %s", name, exc)
                return None
        return reader, writer


async def _request(reader: asyncio.StreamReader) -> dict[str, Any] | None:
    """The connection's request: one JSON object on a line; None (logged) for anything else
    (a line over REQUEST_BYTES, not JSON, none within REQUEST_WAIT_SECONDS), None unlogged
    for a connection closed unused (`HostSockets._prune`'s)."""
    try:
        async with asyncio.timeout(REQUEST_WAIT_SECONDS):
            line = await reader.readuntil(b"\n")
        request = json.loads(line)
    except (OSError, EOFError, TimeoutError, asyncio.LimitOverrunError, ValueError) as exc:
        if isinstance(exc, asyncio.IncompleteReadError) and not exc.partial:
            return None  # closed unused: a process starting made sure this one lives
        logger.warning("ignored a malformed request between processes: %s", type(exc).__name__)
        return None
    if not isinstance(request, dict):
        logger.warning("ignored a malformed request between processes: not an object")
        return None
    return request
