"""How an SSE response writes a log's new frames: at once from the emitter while it is idle,
through the server's own `send`; by its task when a write must wait, fails, or ends."""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import Callable
from functools import partial
from typing import Any

import pytest
from fastapi import FastAPI
from starlette.types import ASGIApp, Receive, Scope, Send
from starlette.types import Message as ASGIMessage

from ollama_web.chat import sse as sse_module
from ollama_web.chat.sse import SERVER_SEND, EventLog, SSEResponse, encode_text_event
from ollama_web.emulator import OllamaEmulator
from tests.chat.conftest import chat_body, parse_events, streamed_chat, text_of
from tests.fixtures.auth import TestUser
from tests.fixtures.servers import recording_protocol, serve_app


class Client:
    """An SSEResponse run as a task, with a server `send` and a wrapped one (what the
    middleware would pass down) recorded apart, each with the task that called it."""

    def __init__(self, log: EventLog, server_send: Send | None = None) -> None:
        self.log = log
        self.server: list[tuple[ASGIMessage, asyncio.Task[Any] | None]] = []
        self.wrapped: list[ASGIMessage] = []
        self.gone = asyncio.Event()
        scope: dict[str, Any] = {"type": "http", SERVER_SEND: server_send or self.server_send}
        self.task = asyncio.create_task(
            SSEResponse(lambda: log, keepalive_seconds=60)(scope, self.receive, self.send)
        )

    async def receive(self) -> ASGIMessage:
        await self.gone.wait()
        return {"type": "http.disconnect"}

    async def send(self, message: ASGIMessage) -> None:
        self.wrapped.append(message)

    async def server_send(self, message: ASGIMessage) -> None:
        self.server.append((message, asyncio.current_task()))

    def bodies(self) -> list[bytes]:
        return [message["body"] for message, _ in self.server]


def new_log() -> EventLog:
    """A log with its `start` event, which a response replays from its task."""
    log = EventLog()
    log.emit("start", {"assistant_message_id": "m"})
    return log


def failing_after_the_start(log: EventLog, error: Exception) -> Send:
    """A server `send` that raises `error` for every frame after the log's first."""

    async def server_send(message: ASGIMessage) -> None:
        if message["body"] != log.frames[0]:
            raise error

    return server_send


async def idle(client: Client) -> None:
    """Until the response has started, replayed the log, and waits for frames."""
    for _ in range(100):
        await asyncio.sleep(0)
    assert client.wrapped[0]["type"] == "http.response.start"


async def test_a_frame_is_written_at_once_by_its_emitter_while_the_stream_is_idle() -> None:
    log = new_log()
    client = Client(log)
    await idle(client)
    for text in ("a", "b", "c"):
        log.emit_text("token", text)
        # Written before emit_text returned, by this very task, through the server's send.
        assert client.server[-1] == (
            {"type": "http.response.body", "body": encode_text_event(log.last_id, "token", text),
             "more_body": True},
            asyncio.current_task(),
        )  # fmt: skip
    log.finish()
    await client.task
    assert client.bodies() == log.frames
    # The start and the end go through the layers; the tokens did not.
    assert [m["type"] for m in client.wrapped] == ["http.response.start", "http.response.body"]
    assert (client.wrapped[1]["body"], client.wrapped[1]["more_body"]) == (b"", False)


async def test_the_frames_there_at_the_start_are_written_in_the_step_of_the_start() -> None:
    """By the response's own task right after its start (the server writes the head with
    them: core/http_guard.py), not a step later by the task that follows the log."""
    log = new_log()
    log.emit_text("token", "early")
    client = Client(log)
    await idle(client)
    assert client.server[0] == (
        {"type": "http.response.body", "body": log.frames[0] + log.frames[1], "more_body": True},
        client.task,
    )


async def test_the_final_event_is_written_with_the_end_of_the_body() -> None:
    log = new_log()
    client = Client(log)
    await idle(client)
    log.emit_text("token", "a")
    log.emit("done", {"message": {}})
    log.finish()
    await client.task
    assert client.bodies() == log.frames[:2]  # the start and the token, pushed
    assert client.wrapped[-1] == {
        "type": "http.response.body",
        "body": log.final_frame,
        "more_body": False,
    }


async def test_a_write_that_must_wait_is_finished_by_the_task_in_order() -> None:
    log = new_log()
    gate = asyncio.Event()
    written: list[bytes] = []
    waited: list[bool] = []

    async def server_send(message: ASGIMessage) -> None:
        if len(written) == 2 and not gate.is_set():  # the socket is full at the 2nd token
            waited.append(True)
            await gate.wait()
        written.append(message["body"])

    client = Client(log, server_send)
    await idle(client)
    log.emit_text("token", "1")
    log.emit_text("token", "2")  # waits for the gate
    log.emit_text("token", "3")
    log.emit_text("token", "4")
    await asyncio.sleep(0.02)
    assert written == log.frames[:2]  # the start and 1; nothing passed the waiting 2
    gate.set()
    await asyncio.sleep(0.02)
    log.emit_text("token", "5")  # idle again: pushed at once
    assert written[-1] == log.frames[5]
    log.finish()
    await client.task
    assert waited == [True]
    # Every frame once, in order: 3 and 4 went together once 2 was written.
    assert b"".join(written) == b"".join(log.frames)
    frames = log.frames
    assert written == [frames[0], frames[1], frames[2], frames[3] + frames[4], frames[5]]


async def test_a_client_gone_during_a_write_ends_its_stream() -> None:
    log = new_log()
    abandoned: list[bool] = []
    log.on_abandoned = lambda: abandoned.append(True)

    client = Client(log, failing_after_the_start(log, ConnectionResetError("hung up")))
    await idle(client)
    log.emit_text("token", "lost")
    await asyncio.wait_for(client.task, 2.0)
    assert log.followers == 0
    assert abandoned == [True]  # it counts as a client that left
    assert len(client.wrapped) == 1  # no end of body sent to a gone client


async def test_an_unexpected_failure_of_a_write_fails_the_response() -> None:
    log = new_log()

    client = Client(log, failing_after_the_start(log, RuntimeError("a bug below")))
    await idle(client)
    log.emit_text("token", "x")
    with pytest.raises(RuntimeError, match="a bug below"):
        await asyncio.wait_for(client.task, 2.0)


async def test_cancelling_the_response_while_a_write_waits_reaches_that_write() -> None:
    log = new_log()
    cancelled: list[bool] = []

    async def server_send(message: ASGIMessage) -> None:
        if message["body"] != log.frames[0]:
            try:
                await asyncio.Event().wait()
            except asyncio.CancelledError:
                cancelled.append(True)
                raise

    client = Client(log, server_send)
    await idle(client)
    log.emit_text("token", "x")
    await asyncio.sleep(0.02)
    client.task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await client.task
    assert cancelled == [True]


def recording(seen: list[ASGIMessage]) -> Callable[[ASGIApp], ASGIApp]:
    """A pure ASGI middleware that records every message sent through it."""

    def middleware(app: ASGIApp) -> ASGIApp:
        async def call(scope: Scope, receive: Receive, send: Send) -> None:
            async def recorded(message: ASGIMessage) -> None:
                seen.append(message)
                await send(message)

            await app(scope, receive, recorded if scope["type"] == "http" else send)

        return call

    return middleware


async def test_a_streamed_answer_s_tokens_skip_the_middleware_but_not_its_start_and_end(
    app: FastAPI, live_server: Callable[[FastAPI], Any], regular_user: TestUser
) -> None:
    seen: list[ASGIMessage] = []
    app.add_middleware(recording(seen))  # type: ignore[arg-type]
    async with streamed_chat(live_server, app, regular_user) as reader:
        events = await reader.rest()
    assert events[-1].event == "done"
    assert text_of(events)
    assert len(events) > 3
    assert [m["type"] for m in seen] == ["http.response.start", "http.response.body"]
    assert seen[1]["more_body"] is False


async def test_a_client_that_stops_reading_gets_every_event_once_it_reads_again(
    app: FastAPI,
    live_server: Callable[[FastAPI], Any],
    ollama_emulator: OllamaEmulator,
    regular_user: TestUser,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A real server, a client that reads nothing for a while: its socket fills up, the
    server's sends must wait, and the pushes are finished by the response's task."""
    reply = "".join(f" {i:05d}{'w' * 250}" for i in range(16_000))  # ~5 MB of frames
    ollama_emulator.config.reply = reply
    resumed: list[bool] = []

    class Counted(sse_module._Resumed):
        def __init__(self, *args: Any) -> None:
            resumed.append(True)
            super().__init__(*args)

    monkeypatch.setattr(sse_module, "_Resumed", Counted)
    async with live_server(app) as base_url:
        host, port = base_url.removeprefix("http://").split(":")
        # A small receive buffer, fixed (no autotuning: up to 32 MiB on some hosts), so that
        # the server's side fills with far less than the answer.
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
        sock.setblocking(False)
        await asyncio.get_running_loop().sock_connect(sock, (host, int(port)))
        reader, writer = await asyncio.open_connection(sock=sock)
        body = json.dumps(chat_body()).encode()
        head = (
            f"POST /api/chat/stream HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json"
            f"\r\nContent-Length: {len(body)}\r\n"
            + "".join(f"{name}: {value}\r\n" for name, value in regular_user.headers.items())
            + "Connection: close\r\n\r\n"
        )
        writer.write(head.encode() + body)
        await reader.readuntil(b"\r\n\r\n")
        for _ in range(600):  # reads nothing until the server had to wait (at most 30 s)
            if resumed:
                break
            await asyncio.sleep(0.05)
        raw = await asyncio.wait_for(reader.read(), 60)  # then everything, to the end
        writer.close()
    assert resumed, "the server never had to wait for this client"
    events = parse_events(_unchunked(raw))
    assert [e.id for e in events] == list(range(1, len(events) + 1))
    assert events[-1].event == "done"
    assert text_of(events) == reply


def _unchunked(raw: bytes) -> bytes:
    """A chunked HTTP/1.1 body, decoded."""
    body, position = bytearray(), 0
    while True:
        end = raw.index(b"\r\n", position)
        size = int(raw[position:end], 16)
        if size == 0:
            return bytes(body)
        body += raw[end + 2 : end + 2 + size]
        position = end + 2 + size + 2


async def test_a_streamed_answer_s_head_goes_with_its_start_and_its_end_with_its_done(
    app: FastAPI, regular_user: TestUser
) -> None:
    protocol, writes = recording_protocol()
    served = partial(serve_app, http=protocol)
    async with streamed_chat(served, app, regular_user) as reader:
        events = await reader.rest()
    assert (events[0].event, events[-1].event) == ("start", "done")
    head, _, body = writes[0].partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 OK\r\n")
    assert b"event: start" in body
    assert b"event: done" in writes[-1]
    assert writes[-1].endswith(b"\r\n0\r\n\r\n")  # the body's last chunk, in the same write
