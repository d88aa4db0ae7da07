"""Server-sent events: framing, the replayable event log, and a lean ASGI response.

An `EventLog` holds one generation's events as ready-to-send frames; event ids are integers
counting from 1 (the frame at index i has id i + 1). Any number of `SSEResponse`s follow a
log: each replays the frames after its `Last-Event-ID`, then sends new ones as they come,
coalescing whatever accumulated while it was writing into one body chunk, and ends with
the log's `done` or `error` event (one placed past it by its `Last-Event-ID` is sent that
event when the log finishes). A keep-alive comment goes out when nothing was written for
SSE_KEEPALIVE_SECONDS.

The response is a plain ASGI callable (no task group, no per-event allocation beyond the
frame): one task listens for the client's disconnect, one timer handles keep-alives.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Mapping
from typing import Any

from starlette.background import BackgroundTask
from starlette.responses import Response
from starlette.types import Message, Receive, Scope, Send

KEEPALIVE_FRAME = b": keep-alive\n\n"
FINAL_EVENTS = frozenset({"done", "error"})
MEDIA_TYPE = "text/event-stream"
SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


def encode_event(event_id: int, event: str, data: Mapping[str, Any]) -> bytes:
    """`id:`, `event:` and one `data:` line of compact JSON (ASCII-escaped, so never a raw
    newline or an unencodable character)."""
    payload = json.dumps(data, separators=(",", ":"))
    return f"id: {event_id}\nevent: {event}\ndata: {payload}\n\n".encode()


def encode_text_event(event_id: int, event: str, text: str) -> bytes:
    """`{"content": text}` events (tokens, thinking): the hot path, formatted directly."""
    return f'id: {event_id}\nevent: {event}\ndata: {{"content":{json.dumps(text)}}}\n\n'.encode()


class Follower:
    """One attached stream: woken by new events, its keep-alive timer, or a disconnect."""

    __slots__ = ("_future", "disconnected", "ticked")

    def __init__(self) -> None:
        self._future: asyncio.Future[None] | None = None
        self.disconnected = False
        self.ticked = False

    def wake(self) -> None:
        future = self._future
        if future is not None and not future.done():
            future.set_result(None)

    def tick(self) -> None:
        self.ticked = True
        self.wake()

    async def wait(self) -> None:
        self._future = asyncio.get_running_loop().create_future()
        try:
            await self._future
        finally:
            self._future = None


class EventLog:
    """The frames of one generation, and the streams following it."""

    def __init__(self, base: int = 0) -> None:
        self.base = base
        """Ids of this log start at base + 1 (a log rebuilt from the database continues the
        numbering the client already saw)."""
        self.frames: list[bytes] = []
        self.finished = False
        self.final_frame: bytes | None = None
        """The `done` or `error` event, once emitted."""
        self._followers: set[Follower] = set()
        self.on_abandoned: Callable[[], None] | None = None
        """Called when the last follower disconnects before the log finished."""

    @property
    def last_id(self) -> int:
        return self.base + len(self.frames)

    def position_after(self, event_id: int) -> int:
        """Index of the first frame after event `event_id`. It may lie past the frames: a
        client that names an event not sent yet is sent only the events after it."""
        return max(event_id - self.base, 0)

    @property
    def followers(self) -> int:
        return len(self._followers)

    def _wake_all(self) -> None:
        for follower in self._followers:
            follower.wake()

    def emit(self, event: str, data: Mapping[str, Any]) -> None:
        frame = encode_event(self.last_id + 1, event, data)
        if event in FINAL_EVENTS:
            self.final_frame = frame
        self.frames.append(frame)
        self._wake_all()

    def emit_text(self, event: str, text: str) -> None:
        self.frames.append(encode_text_event(self.last_id + 1, event, text))
        self._wake_all()

    def finish(self) -> None:
        self.finished = True
        self._wake_all()

    def attach(self, follower: Follower) -> None:
        self._followers.add(follower)

    def detach(self, follower: Follower) -> None:
        self._followers.discard(follower)
        if follower.disconnected and not self._followers and not self.finished:
            callback = self.on_abandoned
            if callback is not None:
                callback()


async def listen_for_disconnect(receive: Receive, follower: Follower) -> None:
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            follower.disconnected = True
            follower.wake()
            return


class SSEResponse(Response):
    """Follows the `EventLog` returned by `open_log` (called when the response starts), from
    event `after` on."""

    media_type = MEDIA_TYPE

    def __init__(
        self,
        open_log: Callable[[], EventLog],
        *,
        after: int = 0,
        keepalive_seconds: float = 15.0,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        self.status_code = 200
        self.background: BackgroundTask | None = None
        self._open_log = open_log
        self._after = after
        self._keepalive = keepalive_seconds
        self.init_headers({**SSE_HEADERS, **(headers or {})})

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        log = self._open_log()
        await send(
            {"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers}
        )
        follower = Follower()
        listener = asyncio.get_running_loop().create_task(listen_for_disconnect(receive, follower))
        log.attach(follower)
        # Followed in a task of its own: woken once per event, it resumes two frames, not
        # the ~25 of every middleware and router between uvicorn and this response.
        follow = asyncio.get_running_loop().create_task(self._follow(log, follower, send))
        try:
            await follow
        except asyncio.CancelledError:
            follow.cancel()
            raise
        finally:
            listener.cancel()
            log.detach(follower)
        if not follower.disconnected:
            await _send_body(send, b"", more=False)

    async def _follow(self, log: EventLog, follower: Follower, send: Send) -> None:
        loop = asyncio.get_running_loop()
        position = log.position_after(self._after)
        last_write = loop.time()
        timer = loop.call_at(last_write + self._keepalive, follower.tick)
        try:
            while not follower.disconnected:
                frames = log.frames
                if position < len(frames):
                    chunk = b"".join(frames[position:])
                    position = len(frames)
                    follower.disconnected = not await _send_body(send, chunk)
                    last_write = loop.time()
                    continue
                if log.finished:
                    if position > len(frames) and log.final_frame is not None:
                        # Placed past the end by a Last-Event-ID the answer never reached:
                        # its final event all the same (under its own id), so that this
                        # stream too ends with `done` or `error`.
                        follower.disconnected = not await _send_body(send, log.final_frame)
                    return
                if follower.ticked:
                    follower.ticked = False
                    if loop.time() - last_write >= self._keepalive:
                        follower.disconnected = not await _send_body(send, KEEPALIVE_FRAME)
                        last_write = loop.time()
                    timer = loop.call_at(last_write + self._keepalive, follower.tick)
                    continue
                await follower.wait()
        finally:
            timer.cancel()


async def _send_body(send: Send, body: bytes, *, more: bool = True) -> bool:
    """Send a body chunk; False when the client is gone."""
    message: Message = {"type": "http.response.body", "body": body, "more_body": more}
    try:
        await send(message)
    except OSError:
        return False
    return True
