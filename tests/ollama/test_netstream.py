"""The asyncio network backend under the upstream client, against real loopback sockets."""

from __future__ import annotations

import asyncio
import shutil
import ssl
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import httpcore
import pytest
import uvloop

from ollama_web.core.config import Settings
from ollama_web.ollama.netstream import HIGH_WATER, AsyncioBackend, AsyncioStream
from ollama_web.ollama.transport import ConnectionPool, build_client
from tests.ollama.faults import blackhole, closed_port_url, serving


async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    while data := await reader.read(65536):
        writer.write(data)
        await writer.drain()
    writer.close()


async def connect(port: int) -> AsyncioStream:
    stream = await AsyncioBackend().connect_tcp("127.0.0.1", port, timeout=2.0)
    assert isinstance(stream, AsyncioStream)
    return stream


async def read_exactly(stream: httpcore.AsyncNetworkStream, size: int) -> bytes:
    received = bytearray()
    while len(received) < size:
        data = await stream.read(65536, timeout=5.0)
        assert data, "end of stream before all bytes arrived"
        received += data
    return bytes(received)


async def test_round_trip_and_end_of_stream() -> None:
    async with serving(echo) as port:
        stream = await connect(port)
        await stream.write(b"hello ", timeout=1.0)
        await stream.write(b"world", timeout=1.0)
        assert await read_exactly(stream, 11) == b"hello world"
        assert stream.get_extra_info("is_readable") is False
        assert stream.get_extra_info("server_addr") == ("127.0.0.1", port)
        assert stream.get_extra_info("socket") is not None
        await stream.aclose()


async def test_reads_respect_max_bytes_and_keep_order() -> None:
    payload = bytes(range(256)) * 64  # 16 KiB

    async def burst(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        for offset in range(0, len(payload), 1000):
            writer.write(payload[offset : offset + 1000])
        await writer.drain()
        writer.close()

    async with serving(burst) as port:
        stream = await connect(port)
        await asyncio.sleep(0.05)  # let several chunks queue up
        received = bytearray()
        while data := await stream.read(3000, timeout=2.0):
            assert len(data) <= 3000
            received += data
        assert bytes(received) == payload
        assert await stream.read(3000, timeout=2.0) == b""  # stays at the end
        await stream.aclose()


async def test_an_idle_connection_closed_by_the_server_is_readable() -> None:
    """httpcore asks idle keep-alive connections `is_readable` to drop dead ones."""
    closing = asyncio.Event()

    async def close_when_told(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await closing.wait()
        writer.close()

    async with serving(close_when_told) as port:
        stream = await connect(port)
        assert stream.get_extra_info("is_readable") is False
        closing.set()
        for _ in range(100):
            if stream.get_extra_info("is_readable"):
                break
            await asyncio.sleep(0.01)
        assert stream.get_extra_info("is_readable") is True
        assert await stream.read(100, timeout=1.0) == b""
        await stream.aclose()


async def test_read_timeout() -> None:
    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read()

    async with serving(silent) as port:
        stream = await connect(port)
        with pytest.raises(httpcore.ReadTimeout):
            await stream.read(100, timeout=0.05)
        started = time.perf_counter()
        with pytest.raises(httpcore.ReadTimeout):
            await stream.read(100, timeout=0.1)
        assert 0.09 <= time.perf_counter() - started < 1.0
        await stream.aclose()


async def test_a_short_deadline_after_a_long_one_fires_on_time() -> None:
    async def one_then_silence(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"x")
        await writer.drain()
        await reader.read()

    async with serving(one_then_silence) as port:
        stream = await connect(port)
        assert await stream.read(10, timeout=60.0) == b"x"  # arms no timer: data was there
        task = asyncio.ensure_future(stream.read(10, timeout=60.0))
        await asyncio.sleep(0.02)
        task.cancel()  # a long wait that ends early leaves its timer armed
        with pytest.raises(asyncio.CancelledError):
            await task
        started = time.perf_counter()
        with pytest.raises(httpcore.ReadTimeout):
            await stream.read(10, timeout=0.1)
        assert time.perf_counter() - started < 1.0
        await stream.aclose()


async def test_a_slow_reader_pauses_the_socket_and_loses_nothing() -> None:
    payload = b"".join(i.to_bytes(4, "big") for i in range(300_000))  # 1.2 MB

    async def flood(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(payload)
        await writer.drain()
        writer.close()

    async with serving(flood) as port:
        stream = await connect(port)
        protocol = stream._protocol
        paused_seen = False
        for _ in range(200):
            await asyncio.sleep(0.005)
            paused_seen = paused_seen or protocol.reading_paused
            if paused_seen:
                break
        assert paused_seen, "the socket was never paused"
        assert protocol.buffered <= HIGH_WATER + 256 * 1024
        received = bytearray()
        while data := await stream.read(65536, timeout=5.0):
            received += data
        assert bytes(received) == payload
        await stream.aclose()


async def test_write_after_the_peer_is_gone_raises_write_error() -> None:
    async def hang_up(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.transport.abort()

    async with serving(hang_up) as port:
        stream = await connect(port)
        assert await stream.read(10, timeout=2.0) == b""
        with pytest.raises(httpcore.WriteError):
            await stream.write(b"anyone?", timeout=1.0)
        await stream.aclose()


async def test_connect_failures_map_to_httpcore_errors() -> None:
    backend = AsyncioBackend()
    host, port = closed_port_url().removeprefix("http://").split(":")
    with pytest.raises(httpcore.ConnectError):
        await backend.connect_tcp(host, int(port), timeout=2.0)
    with blackhole() as url:
        host, port = url.removeprefix("http://").split(":")
        started = time.perf_counter()
        with pytest.raises(httpcore.ConnectTimeout):
            await backend.connect_tcp(host, int(port), timeout=0.2)
        assert time.perf_counter() - started < 1.0


async def test_unix_socket(tmp_path: Path) -> None:
    path = str(tmp_path / "s.sock")
    async with serving(echo, unix_path=path):
        stream = await AsyncioBackend().connect_unix_socket(path, timeout=1.0)
        await stream.write(b"ping", timeout=1.0)
        assert await read_exactly(stream, 4) == b"ping"
        await stream.aclose()
    with pytest.raises(httpcore.ConnectError):
        await AsyncioBackend().connect_unix_socket(str(tmp_path / "none.sock"), timeout=1.0)


@pytest.fixture
def tls_pair(tmp_path: Path) -> tuple[ssl.SSLContext, ssl.SSLContext]:
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.skip("openssl is not installed (scripts/services.sh installs it)")
    key, cert = tmp_path / "key.pem", tmp_path / "cert.pem"
    subprocess.run(
        [openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
         "-subj", "/CN=localhost", "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1",
         "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True,
    )  # fmt: skip
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server.load_cert_chain(cert, key)
    client = ssl.create_default_context(cafile=str(cert))
    return server, client


async def test_tls_upgrade_and_httpx_over_it(
    tls_pair: tuple[ssl.SSLContext, ssl.SSLContext],
) -> None:
    server_context, client_context = tls_pair

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok")
        await writer.drain()
        writer.close()

    async with serving(echo, server_context) as port:
        plain = await connect(port)
        stream = await plain.start_tls(client_context, server_hostname="localhost", timeout=2.0)
        assert stream.get_extra_info("ssl_object") is not None
        await stream.write(b"secret", timeout=1.0)
        assert await read_exactly(stream, 6) == b"secret"
        await stream.aclose()

        plain = await connect(port)
        wrong = ssl.create_default_context()  # does not trust the self-signed certificate
        with pytest.raises(httpcore.ConnectError):
            await plain.start_tls(wrong, server_hostname="localhost", timeout=2.0)

    async with serving(answer, server_context) as port:
        pool = httpcore.AsyncConnectionPool(
            ssl_context=client_context, network_backend=AsyncioBackend()
        )
        async with pool:
            response = await pool.request("GET", f"https://localhost:{port}/")
        assert response.status == 200
        assert response.content == b"ok"


async def test_the_upstream_client_runs_on_this_backend(
    settings_factory: Callable[..., Settings],
) -> None:
    """httpx offers no public way to pass a network backend; if an upgrade changes how the
    transport holds its pool, this fails instead of silently going back to anyio."""
    settings = settings_factory(ollama_max_connections=37)
    client = build_client(settings)
    try:
        pool = client._transport._pool  # type: ignore[attr-defined]
        assert isinstance(pool, ConnectionPool)
        assert isinstance(pool._network_backend, AsyncioBackend)
        assert pool._max_connections == 37
    finally:
        await client.aclose()


def test_under_uvloop() -> None:
    """Production runs uvloop, whose transports are not asyncio.Transport subclasses."""

    async def main() -> bytes:
        async with serving(echo) as port:
            stream = await connect(port)
            await stream.write(b"uv", timeout=1.0)
            data = await read_exactly(stream, 2)
            with pytest.raises(httpcore.ReadTimeout):
                await stream.read(10, timeout=0.05)
            await stream.aclose()
            return data

    assert uvloop.run(main()) == b"uv"
