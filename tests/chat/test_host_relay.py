"""Stop and re-attach between the processes of one host without Redis (chat/host_relay.py):
what the Unix-socket carrier meets that Redis does not (a dead process's socket, a directory
it cannot use, a path too long for a socket, a request that is not one), and `serve
--workers 2` for real, the emulator as Ollama. What both carriers do is in test_relay.py."""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import stat
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from ollama_web.chat.host_relay import DIRECTORY_NAME, HostRelay
from ollama_web.core.host_sockets import HOST_TAG, HostSockets
from ollama_web.emulator import OllamaEmulator
from tests.chat.conftest import EventReader, chat_body, conversation_with_unfinished_answers
from tests.chat.test_relay import _elsewhere_both_ways, new_chat, two_processes
from tests.conftest import TEST_SECRET, asgi_client
from tests.fixtures.auth import create_test_user
from tests.fixtures.ports import free_port

pytestmark = pytest.mark.skipif(not HostSockets.supported(), reason="no Unix sockets here")


def _relay(app: FastAPI) -> HostRelay:
    relay = app.state.generations.relay
    assert isinstance(relay, HostRelay)
    return relay


def _dead_socket(directory: Path, name: str) -> Path:
    """The socket file a process leaves when it is killed: there, refusing connections."""
    descriptor = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)  # a path of any length
    try:
        with socket.socket(socket.AF_UNIX) as sock:
            sock.bind(f"/proc/self/fd/{descriptor}/{name}")
    finally:
        os.close(descriptor)
    return directory / name


async def test_a_dead_process_s_socket_is_removed_and_the_answer_is_elsewhere_at_once(
    app_factory: Callable[..., Any],
    chat_settings: Callable[..., Any],
    live_server: Callable[[FastAPI], Any],
) -> None:
    """A fresh unfinished answer whose process was killed (its socket file left behind):
    stop and re-attach answer 409 at once, and the dead socket is cleared away."""
    async with two_processes(app_factory, chat_settings, live_server, carrier="host") as (
        user,
        apps,
        (_, b),
    ):
        directory = _relay(apps[0]).sockets.directory
        dead = _dead_socket(directory, f"{HOST_TAG}-1-deadbeef0000.sock")
        await conversation_with_unfinished_answers(apps[1], user, {"c" * 32: 0.0})
        took = await _elsewhere_both_ways(b, user, "c" * 32)
        assert not dead.exists()
        assert sorted(os.listdir(directory)) == sorted(_relay(app).sockets.name for app in apps)
    assert max(took) < 0.5, took


async def test_a_starting_process_clears_the_sockets_killed_processes_left(
    app_factory: Callable[..., Any], chat_settings: Callable[..., Any]
) -> None:
    """A killed worker's sockets stay until something meets them: the next process to
    start connects to each once. A live process's socket stays, and the probe, closed
    unused, is no malformed request to it (nothing logged); another host's socket (its
    name begins with that host's boot id) is not this host's to judge."""
    settings = chat_settings()
    first = await app_factory(settings)
    directories = [settings.data_dir / DIRECTORY_NAME, settings.data_dir / "pull-cancels"]
    dead = [_dead_socket(directory, f"{HOST_TAG}-1-deadbeef0000.sock") for directory in directories]
    # Another host's, in a DATA_DIR shared over the network: it refuses too, and is kept.
    elsewhere = _dead_socket(directories[0], "0123456789ab-1-deadbeef0000.sock")
    sockets_logger = logging.getLogger("ollama_web.host_sockets")
    said: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = said.append  # type: ignore[method-assign]
    sockets_logger.addHandler(handler)
    try:
        second = await app_factory(settings)
        deadline = time.monotonic() + 5
        while any(path.exists() for path in dead):
            assert time.monotonic() < deadline, "the dead sockets were not cleared"
            await asyncio.sleep(0.02)
        await asyncio.sleep(0.3)  # what the live process would log of the probe
    finally:
        sockets_logger.removeHandler(handler)
    live = sorted(_relay(app).sockets.name for app in (first, second))
    assert sorted(os.listdir(directories[0])) == sorted([*live, elsewhere.name])
    assert len(os.listdir(directories[1])) == 2
    assert said == []


async def test_the_relay_is_the_server_user_s_alone_and_leaves_with_its_process(
    app_factory: Callable[..., Any], chat_settings: Callable[..., Any]
) -> None:
    settings = chat_settings()
    app = await app_factory(settings)
    relay = _relay(app)
    directory = settings.data_dir / DIRECTORY_NAME
    socket_path = directory / relay.sockets.name
    assert stat.S_IMODE(directory.stat().st_mode) == 0o700
    assert stat.S_ISSOCK(socket_path.stat().st_mode)
    assert stat.S_IMODE(socket_path.stat().st_mode) == 0o600
    await relay.aclose()
    assert not socket_path.exists()


async def test_an_unusable_relay_directory_leaves_each_process_its_own_answers(
    app_factory: Callable[..., Any],
    chat_settings: Callable[..., Any],
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A file where the directory should be: the server starts and serves, says once that
    stop and re-attach reach only the process generating an answer, and answers 409 for
    another's, as without the relay."""
    settings = chat_settings()
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    (settings.data_dir / DIRECTORY_NAME).write_text("not a directory")
    relay_logger = logging.getLogger("ollama_web.chat.relay")
    relay_logger.addHandler(caplog.handler)  # the app's logging does not propagate to root
    try:
        app = await app_factory(settings)
    finally:
        relay_logger.removeHandler(caplog.handler)
    assert app.state.generations.relay is None
    records = {id(r): r for r in caplog.records}.values()  # once, however it propagated
    (warning,) = [r for r in records if "cannot reach the other processes" in r.getMessage()]
    assert "REDIS_URL" in warning.getMessage()
    other = await app_factory(settings)
    user = await create_test_user(app)
    await conversation_with_unfinished_answers(other, user, {"e" * 32: 0.0})
    async with asgi_client(app) as client:
        await _elsewhere_both_ways(client, user, "e" * 32)


async def test_a_data_dir_too_long_for_a_socket_path_is_reached_through_its_descriptor(
    app_factory: Callable[..., Any],
    chat_settings: Callable[..., Any],
    live_server: Callable[[FastAPI], Any],
    tmp_path: Path,
    ollama_emulator: OllamaEmulator,
) -> None:
    """A Unix socket's path is at most 107 bytes; DATA_DIR may be longer (a service's
    deep directory): the sockets are bound and reached through /proc/self/fd."""
    ollama_emulator.config.reply_tokens = 500
    ollama_emulator.config.tokens_per_second = 50
    deep = tmp_path / ("d" * 60) / ("e" * 60) / "data"
    async with (
        two_processes(app_factory, chat_settings, live_server, carrier="host", data_dir=deep) as (
            user,
            apps,
            (a, b),
        ),
        new_chat(a, user) as response,
    ):
        sockets = _relay(apps[0]).sockets
        assert len(str(sockets.directory / sockets.name)) > 108
        reader = EventReader(response)
        answer_id = (await reader.next()).data["assistant_message_id"]
        stopped = await b.post(f"/api/chat/{answer_id}/stop", headers=user.headers)
        assert stopped.status_code == 200, stopped.text
        assert stopped.json()["message"]["status"] == "stopped"
        assert (await reader.rest())[-1].data["message"]["status"] == "stopped"


@pytest.mark.parametrize(
    "request_line",
    [b"not json\n", b"[1, 2]\n", b"x" * 10_000 + b"\n", b""],
    ids=["not-json", "not-an-object", "too-long", "nothing"],
)
async def test_a_connection_that_sends_no_request_is_closed_and_the_relay_serves_on(
    app_factory: Callable[..., Any],
    chat_settings: Callable[..., Any],
    request_line: bytes,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Not JSON, not an object, over 4 KiB, or nothing before the wait ends: closed
    unanswered, said in a warning (no unhandled error), and the next request is served."""
    from ollama_web.core import host_sockets

    monkeypatch.setattr(host_sockets, "REQUEST_WAIT_SECONDS", 0.3)
    app = await app_factory(chat_settings())
    sockets = _relay(app).sockets
    sockets_logger = logging.getLogger("ollama_web.host_sockets")
    sockets_logger.addHandler(caplog.handler)  # the app's logging does not propagate to root
    try:
        reader, writer = await asyncio.open_unix_connection(sockets.address(sockets.name))
        writer.write(request_line)
        await writer.drain()
        assert await asyncio.wait_for(reader.read(), 5) == b""  # closed, nothing said
        writer.close()
        reader, writer = await asyncio.open_unix_connection(sockets.address(sockets.name))
        writer.write(b'{"op": "stop", "id": "unknown"}\n')
        assert await asyncio.wait_for(reader.read(), 5) == b"\x00\x00\x00\x01N"
        writer.close()
    finally:
        sockets_logger.removeHandler(caplog.handler)
    records = {id(r): r for r in caplog.records}.values()  # once, however it propagated
    said = [(r.levelname, r.getMessage()) for r in records if r.levelno >= logging.WARNING]
    assert len(said) == 1, said
    assert said[0][0] == "WARNING"
    assert said[0][1].startswith("ignored a malformed request between processes")


@pytest.mark.slow
async def test_serve_with_two_workers_stops_and_re_attaches_whichever_worker_is_reached(
    tmp_path: Path, ollama_emulator: OllamaEmulator
) -> None:
    """`serve --workers 2` on the embedded default, no Redis: each stop and re-attach on a
    new connection (the kernel hands it to either worker) reaches the answer's process.
    Before this carrier, those that landed on the other worker answered 409."""
    ollama_emulator.config.reply_tokens = 2000
    ollama_emulator.config.tokens_per_second = 40
    env = {
        **{k: v for k, v in os.environ.items() if k not in {"DATABASE_URL", "REDIS_URL"}},
        "SECRET_KEY": TEST_SECRET,
        "DATA_DIR": str(tmp_path / "data"),
        "LOG_DIR": str(tmp_path / "logs"),
        "BACKUP_DIR": str(tmp_path / "backups"),
        "OLLAMA_URL": ollama_emulator.url,
        "BACKUP_ENABLED": "false",
        "RATE_LIMIT_ENABLED": "false",
    }
    port = free_port()
    args = [sys.executable, "-m", "ollama_web", "serve", "--workers", "2", "--port", str(port)]
    server = subprocess.Popen(args, env=env, cwd=tmp_path, stderr=subprocess.PIPE, text=True)
    # No keep-alive: every request is a new connection the kernel hands to either worker.
    fresh = httpx.Limits(max_keepalive_connections=0)
    base_url = f"http://127.0.0.1:{port}"
    try:
        async with httpx.AsyncClient(base_url=base_url, limits=fresh, timeout=20) as client:
            deadline = time.monotonic() + 60
            while True:
                assert server.poll() is None, server.communicate()[1]
                assert time.monotonic() < deadline, "the server did not start"
                try:
                    if len(os.listdir(tmp_path / "data" / DIRECTORY_NAME)) == 2:
                        await client.get("/health/live")
                        break
                except (httpx.TransportError, FileNotFoundError):
                    pass
                await asyncio.sleep(0.1)
            admin = {"username": "admin", "password": "a long enough password 1"}
            setup = await client.post("/api/auth/setup", json=admin)
            assert setup.status_code in (200, 201), setup.text
            headers = {"Authorization": f"Bearer {setup.json()['api_key']}"}
            for answer in range(4):
                await _stop_and_follow_from_fresh_connections(client, headers, answer)
    finally:
        server.terminate()
        _, errors = server.communicate(timeout=30)
    assert server.returncode == 0, errors
    assert "GENERATION_ELSEWHERE" not in errors


async def _stop_and_follow_from_fresh_connections(
    client: httpx.AsyncClient, headers: dict[str, str], answer: int
) -> None:
    """An answer streamed on one connection; five re-attaches and then a stop, each on a
    connection of its own: every re-attach follows it live, the stop stops it."""
    body = chat_body(content=f"question {answer}")
    async with client.stream("POST", "/api/chat/stream", json=body, headers=headers) as first:
        reader = EventReader(first)
        answer_id = (await reader.next()).data["assistant_message_id"]
        path = f"/api/chat/stream/{answer_id}"
        for _ in range(5):
            async with client.stream("GET", path, headers=headers) as resumed:
                assert resumed.status_code == 200, await resumed.aread()
                followed = EventReader(resumed)
                assert (await followed.next()).event == "start"
                assert (await followed.next()).event == "token"
        stopped = await client.post(f"/api/chat/{answer_id}/stop", headers=headers)
        assert stopped.status_code == 200, stopped.text
        assert stopped.json()["message"]["status"] == "stopped"
        final = (await reader.rest())[-1]
    assert (final.event, final.data["message"]["status"]) == ("done", "stopped")


async def test_a_request_cancelled_while_it_is_sent_closes_its_connection(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The asks an owner's answer made moot are cancelled, some while they still send: their
    connections close then (the other process sees the end), not when collected."""
    ended = asyncio.Event()

    async def handler(request: dict[str, Any], reader: asyncio.StreamReader, _: Any) -> None:
        await reader.read()  # the asker sends nothing more: its end
        ended.set()

    listening, asking = HostSockets(tmp_path / "s"), HostSockets(tmp_path / "s")
    await listening.listen(handler)
    await asking.listen(handler)  # as every process does (and holds the directory open)
    try:

        async def never(_: asyncio.StreamWriter) -> None:
            await asyncio.Event().wait()

        monkeypatch.setattr(asyncio.StreamWriter, "drain", never)
        ask = asyncio.ensure_future(asking.request(listening.name, {"op": "follow"}))
        await asyncio.sleep(0.2)
        ask.cancel()
        await asyncio.wait_for(ended.wait(), 5)
    finally:
        listening.close()
        asking.close()
