"""A stop signal with answers (or a model pull) streaming: `ollama-web serve` in a process of
its own, the emulator in this one. Answers and pulls get SHUTDOWN_GRACE_SECONDS to end; then
answers are stored `interrupted`, every stream ends with an error event, and the server
exits then, without waiting out uvicorn's own grace or cancelling anything (no traceback).
And a server killed (kill -9) beside another on one DATA_DIR: the other settles its answers."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from uvicorn.config import STARTUP_FAILURE

from ollama_web.chat.leases import stale_seconds, unclaimed_seconds
from ollama_web.emulator import OllamaEmulator
from tests.chat.conftest import Event, EventReader, parse_events
from tests.conftest import require_redis
from tests.fixtures.ports import free_port

pytestmark = pytest.mark.slow


@dataclass
class Served:
    process: asyncio.subprocess.Process
    client: httpx.AsyncClient
    headers: dict[str, str]
    database: Path

    async def exit_status(self, limit: float) -> tuple[int, str]:
        _, stderr = await asyncio.wait_for(self.process.communicate(), limit)
        assert self.process.returncode is not None
        return self.process.returncode, stderr.decode()


def _server_env(tmp_path: Path, **settings: str) -> dict[str, str]:
    """This environment with a fresh DATA_DIR and LOG_DIR (its own database), plus `settings`."""
    return {
        **{k: v for k, v in os.environ.items() if k not in {"SECRET_KEY", "DATABASE_URL"}},
        "DATA_DIR": str(tmp_path / "data"),
        "LOG_DIR": str(tmp_path / "logs"),
        "BACKUP_ENABLED": "false",
        **settings,
    }


def _serve_command(port: int) -> list[str]:
    return ["-m", "ollama_web", "serve", "--host", "127.0.0.1", "--port", str(port)]


@asynccontextmanager
async def serving(
    tmp_path: Path,
    emulator: OllamaEmulator,
    grace: float,
    *,
    set_up: bool = True,
    **settings: str,
) -> AsyncIterator[Served]:
    """`ollama-web serve` on DATA_DIR `tmp_path`/data, with `settings`; `set_up`: its first
    admin made (their API key in `headers`), else started beside a server that did."""
    port = free_port()
    env = _server_env(
        tmp_path,
        OLLAMA_URL=emulator.url,
        PASSWORD_HASH_TIME_COST="1",
        PASSWORD_HASH_MEMORY_KIB="64",
        SHUTDOWN_GRACE_SECONDS=str(grace),
        **settings,
    )
    process = await asyncio.create_subprocess_exec(
        sys.executable, *_serve_command(port), env=env, cwd=tmp_path, stderr=asyncio.subprocess.PIPE
    )
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=30) as client:
            deadline = time.monotonic() + 30
            while True:
                try:
                    if set_up:
                        started = await client.post(
                            "/api/auth/setup", json={"username": "admin", "password": "p" * 12}
                        )
                    else:
                        started = await client.get("/health/live")
                    break
                except httpx.TransportError:
                    assert time.monotonic() < deadline, "the server did not start"
                    await asyncio.sleep(0.05)
            assert started.status_code == (201 if set_up else 200), started.text
            headers = {"Authorization": f"Bearer {started.json()['api_key']}"} if set_up else {}
            yield Served(process, client, headers, tmp_path / "data" / "ollama_web.db")
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()


def _stored(database: Path, message_id: str) -> tuple[str, str]:
    with sqlite3.connect(database) as connection:
        row = connection.execute(
            "SELECT status, content FROM messages WHERE id = ?", (message_id,)
        ).fetchone()
    return row[0], row[1]


def _text(events: list[Event]) -> str:
    return "".join(e.data["content"] for e in events if e.event == "token")


async def _stream_until_tokens(served: Served, reader_out: list[EventReader], count: int) -> Any:
    """Open a chat stream, read `count` tokens; returns the response's context manager."""
    stream = served.client.stream(
        "POST",
        "/api/chat/stream",
        json={"model": "llama3.2", "content": "Tell me a long story."},
        headers=served.headers,
    )
    response = await stream.__aenter__()
    assert response.status_code == 200, await response.aread()
    reader = EventReader(response)
    reader_out.append(reader)
    for _ in range(count):
        await reader.until("token")
    return stream


@pytest.mark.parametrize("signals", [1, 2], ids=["after-the-grace", "second-signal-at-once"])
async def test_a_stop_signal_ends_running_answers_as_interrupted_with_their_text(
    tmp_path: Path, ollama_emulator: OllamaEmulator, signals: int
) -> None:
    ollama_emulator.config.reply_tokens = 1000
    ollama_emulator.config.tokens_per_second = 20
    grace = 1.0 if signals == 1 else 60.0
    async with serving(tmp_path, ollama_emulator, grace) as served:
        readers: list[EventReader] = []
        stream = await _stream_until_tokens(served, readers, 3)
        reader = readers[0]
        signalled = time.monotonic()
        for _ in range(signals):
            served.process.send_signal(signal.SIGTERM)
            await asyncio.sleep(0.2)
        rest = await asyncio.wait_for(reader.rest(), 10)
        ended = time.monotonic() - signalled
        await stream.__aexit__(None, None, None)
        status, stderr = await served.exit_status(10)
        exited = time.monotonic() - signalled

    events = reader.seen
    final = events[-1]
    assert final.event == "error", rest
    assert final.data["error"] == "GENERATION_INTERRUPTED"
    answer = final.data["details"]["assistant_message"]
    assert answer["status"] == "interrupted"
    assert answer["content"] == _text(events) != ""
    assert _stored(served.database, answer["id"]) == ("interrupted", answer["content"])
    # The grace, not uvicorn's (grace + 5 s), and never 60 s on a second signal.
    assert grace - 0.1 <= ended < grace + 3 if signals == 1 else ended < 3, ended
    assert exited < ended + 4, (ended, exited)
    # uvicorn re-raises SIGTERM after a clean shutdown, so -SIGTERM is a graceful exit too.
    assert status in (0, -signal.SIGTERM), stderr
    assert "Traceback" not in stderr, stderr
    assert "Cancel" not in stderr, stderr


async def test_the_answer_of_a_killed_server_is_stopped_and_replayed_by_its_neighbour(
    tmp_path: Path, ollama_emulator: OllamaEmulator
) -> None:
    """Two servers on one DATA_DIR (SQLite); A is killed (kill -9) while it generates. Its
    answer stays `streaming` in the database, with its checkpointed text; B, asked to stop
    it or to replay it, finds no process of the host holding it: the answer is stored
    `interrupted` with that text at once, not 409 GENERATION_ELSEWHERE until the sweep."""
    ollama_emulator.config.reply_tokens = 1000
    ollama_emulator.config.tokens_per_second = 20
    checkpoint = 0.2  # its rows unwritten for 1.2 s: no process holds it; the sweep: 3 s
    settings = {"GENERATION_CHECKPOINT_SECONDS": str(checkpoint)}
    async with (
        serving(tmp_path, ollama_emulator, 1.0, **settings) as a,
        serving(tmp_path, ollama_emulator, 1.0, set_up=False, **settings) as b,
    ):
        readers: list[EventReader] = []
        stream = await _stream_until_tokens(a, readers, 3)
        answer_id = readers[0].seen[0].data["assistant_message_id"]
        await asyncio.sleep(1.5)  # a checkpoint of its text
        a.process.kill()
        await a.process.wait()
        with contextlib.suppress(httpx.HTTPError):
            await stream.__aexit__(None, None, None)
        await ollama_emulator.wait_until(lambda: ollama_emulator.generations_cancelled == 1)
        status, checkpointed = _stored(a.database, answer_id)
        assert status == "streaming"
        assert checkpointed != ""
        await asyncio.sleep(unclaimed_seconds(checkpoint) + 0.3)  # (fresher: test_relay.py)
        asked = time.monotonic()
        stop = await b.client.post(f"/api/chat/{answer_id}/stop", headers=a.headers)
        # Settled by the stop, not by a sweep (which waits for 3 s of silence).
        assert time.monotonic() - asked < stale_seconds(checkpoint) - unclaimed_seconds(checkpoint)
        replay = await b.client.get(f"/api/chat/stream/{answer_id}", headers=a.headers)
    assert stop.status_code == 200, stop.text
    message = stop.json()["message"]
    assert (message["status"], message["content"]) == ("interrupted", checkpointed)
    assert replay.status_code == 200, replay.text
    events = parse_events(replay.content)
    assert [e.event for e in events] == ["start", "token", "error"]
    assert events[1].data["content"] == checkpointed
    assert events[-1].data["error"] == "GENERATION_INTERRUPTED"
    assert _stored(a.database, answer_id) == ("interrupted", checkpointed)


async def test_an_answer_that_ends_within_the_grace_is_complete_and_the_server_exits_then(
    tmp_path: Path, ollama_emulator: OllamaEmulator
) -> None:
    ollama_emulator.config.reply_tokens = 12
    ollama_emulator.config.tokens_per_second = 10
    async with serving(tmp_path, ollama_emulator, grace=30) as served:
        readers: list[EventReader] = []
        stream = await _stream_until_tokens(served, readers, 1)
        reader = readers[0]
        signalled = time.monotonic()
        served.process.send_signal(signal.SIGTERM)
        await asyncio.wait_for(reader.rest(), 10)
        await stream.__aexit__(None, None, None)
        status, stderr = await served.exit_status(10)
        exited = time.monotonic() - signalled

    events = reader.seen
    assert events[-1].event == "done"
    answer = events[-1].data["message"]
    assert answer["status"] == "complete"
    assert answer["content"] == _text(events)
    assert len([e for e in events if e.event == "token"]) == 12
    assert _stored(served.database, answer["id"]) == ("complete", answer["content"])
    assert exited < 5, exited  # when the answer ended, not after the 30 s grace
    assert status in (0, -signal.SIGTERM), stderr
    assert "Traceback" not in stderr, stderr


async def test_a_pull_running_when_the_grace_ends_ends_its_stream_with_an_error_event(
    tmp_path: Path, ollama_emulator: OllamaEmulator
) -> None:
    ollama_emulator.config.pull_delay = 2.0  # per step: several seconds in all
    async with serving(tmp_path, ollama_emulator, grace=1) as served:
        async with served.client.stream(
            "POST", "/api/models/pull", json={"name": "mistral"}, headers=served.headers
        ) as response:
            assert response.status_code == 200, await response.aread()
            reader = EventReader(response)
            await reader.until("progress")
            signalled = time.monotonic()
            served.process.send_signal(signal.SIGTERM)
            await asyncio.wait_for(reader.rest(), 10)
            ended = time.monotonic() - signalled
        status, stderr = await served.exit_status(10)

    final = reader.seen[-1]
    assert (final.event, final.data["error"]) == ("error", "PULL_INTERRUPTED")
    assert "pull again" in final.data["message"]
    assert 0.9 <= ended < 4, ended
    assert status in (0, -signal.SIGTERM), stderr
    assert "Traceback" not in stderr, stderr


@pytest.mark.redis
def test_a_server_whose_port_is_taken_exits_at_once_with_redis(tmp_path: Path) -> None:
    """uvicorn cannot bind, so the app stops right after its start, its relay's listener
    still subscribing: the server exits at once with uvicorn's startup failure code, its
    listener ended (it hung for good at "Waiting for application shutdown." before)."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        env = _server_env(tmp_path, REDIS_URL=require_redis())
        command = _serve_command(taken.getsockname()[1])
        process = subprocess.Popen(
            [sys.executable, *command], env=env, cwd=tmp_path, stderr=subprocess.PIPE, text=True
        )
        try:
            _, stderr = process.communicate(timeout=15)
        finally:
            if process.returncode is None:
                process.kill()
                process.communicate()
    assert process.returncode == STARTUP_FAILURE, stderr
    assert "address already in use" in stderr, stderr
    assert "Application shutdown complete." in stderr, stderr  # it started, then stopped
    assert "did not end" not in stderr, stderr
