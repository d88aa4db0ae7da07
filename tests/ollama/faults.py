"""Faulty "nodes" for gateway tests: a closed port, a server that accepts and never answers,
and a blackholed address whose TCP connect never completes."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager, suppress


def closed_port_url() -> str:
    """A loopback URL nothing listens on: connections are refused at once."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}"


class HangingServer:
    """Accepts connections and reads requests, but never sends a byte back."""

    def __init__(self) -> None:
        self.connections = 0
        self.url = ""
        self._writers: list[asyncio.StreamWriter] = []

    async def _on_connect(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self._writers.append(writer)
        while await reader.read(65536):
            pass


@asynccontextmanager
async def hanging_server() -> AsyncIterator[HangingServer]:
    hanging = HangingServer()
    server = await asyncio.start_server(hanging._on_connect, "127.0.0.1", 0)
    hanging.url = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"
    try:
        yield hanging
    finally:
        server.close()
        for writer in hanging._writers:
            writer.transport.abort()
        await server.wait_closed()


@contextmanager
def blackhole() -> Iterator[str]:
    """A listening socket with a full accept queue and no accept(): further SYNs are dropped,
    so a connect hangs until the client's connect timeout, like an unreachable host."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(0)
    port = server.getsockname()[1]
    fillers = []
    for _ in range(3):
        filler = socket.socket()
        filler.setblocking(False)
        with suppress(BlockingIOError):
            filler.connect(("127.0.0.1", port))
        fillers.append(filler)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        for filler in fillers:
            filler.close()
        server.close()
