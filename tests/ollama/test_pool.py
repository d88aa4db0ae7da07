"""The upstream connection pool (httpcore's, with linear bookkeeping) against a real
keep-alive HTTP server on loopback."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpcore
import pytest

from ollama_web.ollama.netstream import AsyncioBackend
from ollama_web.ollama.transport import ConnectionPool
from tests.ollama.faults import serving

RESPONSE = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"


class HoldingServer:
    """Answers every request `ok` on a kept-alive connection, once `release` is set."""

    def __init__(self) -> None:
        self.release = asyncio.Event()
        self.connections = 0
        self.port = 0

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            while await reader.readuntil(b"\r\n\r\n"):
                await self.release.wait()
                writer.write(RESPONSE)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            writer.close()


@asynccontextmanager
async def holding_server() -> AsyncIterator[HoldingServer]:
    state = HoldingServer()
    async with serving(state.handle) as port:
        state.port = port
        yield state


def pool(**limits: Any) -> ConnectionPool:
    return ConnectionPool(network_backend=AsyncioBackend(), **limits)


async def get(connections: ConnectionPool, port: int, **extensions: Any) -> bytes:
    response = await connections.request("GET", f"http://127.0.0.1:{port}/", extensions=extensions)
    return response.content


async def test_connections_are_reused_kept_and_capped() -> None:
    async with holding_server() as server, pool(max_connections=4) as connections:
        server.release.set()
        for _ in range(3):
            assert await get(connections, server.port) == b"ok"
        assert server.connections == 1  # one kept-alive connection, reused

        server.release.clear()
        waiting = [asyncio.ensure_future(get(connections, server.port)) for _ in range(6)]
        await asyncio.sleep(0.1)
        assert len(connections.connections) == 4  # max_connections
        assert server.connections == 4
        server.release.set()
        assert await asyncio.gather(*waiting) == [b"ok"] * 6
        assert server.connections == 4  # the two queued requests reused them


async def test_idle_connections_beyond_the_keepalive_limit_are_closed() -> None:
    async with (
        holding_server() as server,
        pool(max_connections=10, max_keepalive_connections=2) as connections,
    ):
        waiting = [asyncio.ensure_future(get(connections, server.port)) for _ in range(5)]
        await asyncio.sleep(0.1)
        server.release.set()
        await asyncio.gather(*waiting)
        await get(connections, server.port)  # bookkeeping runs at each request
        assert len(connections.connections) <= 2


async def test_expired_connections_are_replaced() -> None:
    async with holding_server() as server, pool(keepalive_expiry=0.05) as connections:
        server.release.set()
        await get(connections, server.port)
        await asyncio.sleep(0.1)
        await get(connections, server.port)
        assert server.connections == 2


async def test_a_full_pool_times_out_waiting() -> None:
    async with holding_server() as server, pool(max_connections=1) as connections:
        first = asyncio.ensure_future(get(connections, server.port))
        await asyncio.sleep(0.05)
        with pytest.raises(httpcore.PoolTimeout):
            await get(connections, server.port, timeout={"pool": 0.1})
        server.release.set()
        assert await first == b"ok"


async def test_bookkeeping_is_linear_in_the_pool_size(monkeypatch: pytest.MonkeyPatch) -> None:
    """httpcore 1.0 recounted the pool for every idle connection: with 300 idle ones a single
    request made ~90 000 `is_idle` calls. Here it is a few per connection."""
    calls = 0
    is_idle = httpcore.AsyncHTTPConnection.is_idle

    def counting(self: httpcore.AsyncHTTPConnection) -> bool:
        nonlocal calls
        calls += 1
        return is_idle(self)

    async with holding_server() as server, pool(max_connections=400) as connections:
        waiting = [asyncio.ensure_future(get(connections, server.port)) for _ in range(300)]
        await asyncio.sleep(0.3)
        server.release.set()
        await asyncio.gather(*waiting)
        assert len(connections.connections) == 300
        monkeypatch.setattr(httpcore.AsyncHTTPConnection, "is_idle", counting)
        await get(connections, server.port)
    assert calls <= 3 * 300
