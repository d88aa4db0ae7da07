"""Loopback servers for gateway tests: `serving` any handler, and faulty "nodes": a closed
port, a server that accepts and never answers, and a blackholed address whose TCP connect
never completes."""

from __future__ import annotations

import asyncio
import json
import socket
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping
from contextlib import asynccontextmanager, contextmanager, suppress
from typing import Any

from ollama_web.emulator.server import close_server
from tests.fixtures.ports import free_port


def closed_port_url() -> str:
    """A loopback URL nothing listens on: connections are refused at once."""
    return f"http://127.0.0.1:{free_port()}"


Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


@asynccontextmanager
async def serving(
    handler: Handler, ssl_context: ssl.SSLContext | None = None, unix_path: str | None = None
) -> AsyncIterator[int]:
    """Serve `handler` on a loopback port (yielded), or on `unix_path` (0 is yielded); every
    connection still open at the end is aborted, one accepted as it ends too, so nothing
    outlives the test."""
    writers: list[asyncio.StreamWriter] = []
    stopped = False

    async def track(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if stopped:
            writer.transport.abort()
            return
        writers.append(writer)
        await handler(reader, writer)

    if unix_path is not None:
        server = await asyncio.start_unix_server(track, unix_path)
    else:
        server = await asyncio.start_server(track, "127.0.0.1", 0, ssl=ssl_context)
    try:
        yield 0 if unix_path is not None else server.sockets[0].getsockname()[1]
    finally:
        stopped = True
        await close_server(server, lambda: _abort(writers))


def _abort(writers: list[asyncio.StreamWriter]) -> None:
    for writer in writers:
        writer.transport.abort()


def json_node(
    answers: Mapping[bytes, tuple[int, Any]],
    headers: bytes = b"",
    stall_on: tuple[bytes, bytes] | None = None,
) -> Handler:
    """A node answering `METHOD /path` (keys like b"GET /api/tags") with (status, JSON) on
    kept-alive connections, with `headers` (CRLF-terminated lines) added; request bodies
    are read and ignored. `stall_on=(request, raw)`: that request is answered `raw` bytes,
    then nothing more, ever."""

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while not reader.at_eof():
            try:
                head = await reader.readuntil(b"\r\n\r\n")
            except asyncio.IncompleteReadError:
                return
            for line in head.lower().split(b"\r\n"):
                if line.startswith(b"content-length:"):
                    await reader.readexactly(int(line.split(b":")[1]))
            request = b" ".join(head.split(b" ")[:2])
            if stall_on is not None and request == stall_on[0]:
                writer.write(stall_on[1])
                await reader.read()  # until the client leaves
                return
            status, payload = answers[request]
            body = json.dumps(payload).encode()
            writer.write(
                b"HTTP/1.1 %d X\r\nContent-Type: application/json\r\nContent-Length: %d\r\n"
                b"%s\r\n%s" % (status, len(body), headers, body)
            )

    return answer


class HangingServer:
    """Accepts connections and reads requests, but never sends a byte back."""

    def __init__(self) -> None:
        self.connections = 0
        self.url = ""

    async def _on_connect(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        while await reader.read(65536):
            pass


@asynccontextmanager
async def hanging_server() -> AsyncIterator[HangingServer]:
    hanging = HangingServer()
    async with serving(hanging._on_connect) as port:
        hanging.url = f"http://127.0.0.1:{port}"
        yield hanging


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
