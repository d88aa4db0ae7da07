"""The tests' event loop (tests/fixtures/loops.py) fails the test that leaves a connection
open, and closes it, so that no later test hears of it from the garbage collector."""

from __future__ import annotations

import asyncio

import pytest

from tests.fixtures.loops import LeakCheckingLoop


async def _connect() -> tuple[asyncio.Server, asyncio.StreamWriter, list[asyncio.StreamWriter]]:
    accepted: list[asyncio.StreamWriter] = []

    async def accept(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        accepted.append(writer)

    server = await asyncio.start_server(accept, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    _, writer = await asyncio.open_connection("127.0.0.1", port)
    while not accepted:
        await asyncio.sleep(0.01)
    return server, writer, accepted


def test_a_connection_left_open_fails_its_test_and_is_closed() -> None:
    loop = LeakCheckingLoop()
    server, writer, accepted = loop.run_until_complete(_connect())
    server.close()  # its listening socket only (Python 3.11 leaves what it accepted)
    with pytest.raises(AssertionError) as raised:
        loop.close()
    message = str(raised.value)
    assert message.startswith("connections left open when the test's event loop closed: ")
    assert message.count("asyncio.streams.StreamReaderProtocol") == 2  # both ends
    assert str(writer.get_extra_info("sockname")) in message
    for end in (writer, accepted[0]):
        assert end.get_extra_info("socket").fileno() == -1  # closed: nothing for the GC
    assert loop.is_closed()


def test_connections_closed_in_time_pass() -> None:
    loop = LeakCheckingLoop()

    async def connect_and_close() -> None:
        server, writer, accepted = await _connect()
        for end in (writer, accepted[0]):
            end.close()
            await end.wait_closed()
        server.close()
        await server.wait_closed()

    loop.run_until_complete(connect_and_close())
    loop.close()
    assert loop.is_closed()


async def test_async_tests_run_on_it() -> None:
    assert isinstance(asyncio.get_running_loop(), LeakCheckingLoop)
