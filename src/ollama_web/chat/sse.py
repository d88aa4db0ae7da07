"""Server-sent events: framing, the replayable event log, and a lean ASGI response.

An `EventLog` holds one generation's events as ready-to-send frames; event ids are integers
counting from 1 (the frame at index i has id i + 1). Any number of `SSEResponse`s follow a
log: each replays the frames after its `Last-Event-ID`, then sends new ones as they come,
coalescing whatever accumulated while it was writing into one body chunk, and ends with
the log's `done` or `error` event, written with the end of the body (one placed past it by
its `Last-Event-ID` is sent that event when the log finishes). A keep-alive comment goes
out when nothing was written for SSE_KEEPALIVE_SECONDS.

The response is a plain ASGI callable (no task group, no per-event allocation beyond the
frame): one task listens for the client's disconnect, one timer handles keep-alives, one
task follows the log. New frames do not wake that task: while it is idle, they are written
at once from the code that emitted them (`_Stream.push`, from the upstream connection's
callback for a generation's tokens), and the task only takes over what must wait (the
client's socket is full) or end. Body chunks go straight to the server's own `send`
(`SERVER_SEND`): every layer between only looks at a response's start, and the end of the
body still goes through them all.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable, Coroutine, Generator, Mapping
from types import CoroutineType
from typing import Any

from starlette.background import BackgroundTask
from starlette.responses import Response
from starlette.types import Message, Receive, Scope, Send

KEEPALIVE_FRAME = b": keep-alive\n\n"
FINAL_EVENTS = frozenset({"done", "error"})
MEDIA_TYPE = "text/event-stream"
SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
_json_string = json.encoder.encode_basestring_ascii
SERVER_SEND = "ollama_web.server_send"
"""A scope key: the ASGI server's own `send`, put there by the app before any middleware
wraps it (`app.OllamaWebApp`)."""


def encode_event(event_id: int, event: str, data: Mapping[str, Any]) -> bytes:
    """`id:`, `event:` and one `data:` line of compact JSON (ASCII-escaped, so never a raw
    newline or an unencodable character)."""
    payload = json.dumps(data, separators=(",", ":"))
    return f"id: {event_id}\nevent: {event}\ndata: {payload}\n\n".encode()


def encode_text_event(event_id: int, event: str, text: str) -> bytes:
    """`{"content": text}` events (tokens, thinking): the hot path, formatted directly (the
    string as `json.dumps` writes it, by the C function it calls)."""
    return f'id: {event_id}\nevent: {event}\ndata: {{"content":{_json_string(text)}}}\n\n'.encode()


class Follower:
    """One attached stream: woken by new events, its keep-alive timer, or a disconnect."""

    __slots__ = ("_future", "disconnected", "ticked")

    def __init__(self) -> None:
        self._future: asyncio.Future[None] | None = None
        self.disconnected = False
        self.ticked = False

    def notify(self) -> None:
        """New frames in the log."""
        self.wake()

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

    def _notify_all(self) -> None:
        for follower in self._followers:
            follower.notify()

    def emit(self, event: str, data: Mapping[str, Any]) -> None:
        frame = encode_event(self.last_id + 1, event, data)
        if event in FINAL_EVENTS:
            self.final_frame = frame
        self.frames.append(frame)
        self._notify_all()

    def emit_text(self, event: str, text: str) -> None:
        self.frames.append(encode_text_event(self.last_id + 1, event, text))
        self._notify_all()

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
        loop = asyncio.get_running_loop()
        stream = _Stream(log, log.position_after(self._after), scope.get(SERVER_SEND, send), loop)
        listener = loop.create_task(listen_for_disconnect(receive, stream))
        log.attach(stream)
        # The frames already there (`start`, at least) go now, with the response's head
        # (core/http_guard.py writes the head with the first body chunk).
        stream.push()
        # Followed in a task of its own: woken when a frame must wait or the log ends, it
        # resumes two frames, not the ~25 of every middleware and router in between.
        follow = loop.create_task(self._follow(stream))
        try:
            await follow
        except asyncio.CancelledError:
            follow.cancel()
            raise
        finally:
            listener.cancel()
            log.detach(stream)
        if not stream.disconnected:  # what is left (the final event) and the end, at once
            await _send_body(send, stream.rest(), more=False)

    async def _follow(self, stream: _Stream) -> None:
        log, loop = stream.log, stream.loop
        stream.last_write = loop.time()
        timer = loop.call_at(stream.last_write + self._keepalive, stream.tick)
        try:
            while not stream.disconnected:
                if stream.sending is not None:  # a push the client's socket made wait
                    sending, stream.sending = stream.sending, None
                    stream.disconnected = not await _completed(sending)
                    continue
                if log.finished:
                    return  # what is left goes with the end of the body (`rest`)
                if stream.position < len(log.frames) and log.final_frame is None:
                    stream.disconnected = not await _send_body(stream.send, stream.take())
                    stream.last_write = loop.time()
                    continue
                if stream.ticked:
                    stream.ticked = False
                    if loop.time() - stream.last_write >= self._keepalive:
                        stream.disconnected = not await _send_body(stream.send, KEEPALIVE_FRAME)
                        stream.last_write = loop.time()
                    timer = loop.call_at(stream.last_write + self._keepalive, stream.tick)
                    continue
                stream.idle = True
                try:
                    await stream.wait()
                finally:
                    stream.idle = False
        finally:
            timer.cancel()


class SSEHead(Response):
    """The head an `SSEResponse` starts with, and no body: a HEAD's answer. It follows no
    log (see `middleware.head`)."""

    media_type = MEDIA_TYPE

    def __init__(self) -> None:
        self.status_code = 200
        self.background: BackgroundTask | None = None
        self.init_headers(dict(SSE_HEADERS))  # as an SSEResponse's: no length

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await send(
            {"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers}
        )
        await send({"type": "http.response.body", "body": b"", "more_body": False})


class _Stream(Follower):
    """An `SSEResponse` following its log: where it is, and how it writes."""

    __slots__ = ("idle", "last_write", "log", "loop", "position", "send", "sending")

    def __init__(
        self, log: EventLog, position: int, send: Send, loop: asyncio.AbstractEventLoop
    ) -> None:
        super().__init__()
        self.log = log
        self.position = position
        """Index of the next frame to send (it may lie past the frames)."""
        self.send = send
        self.loop = loop
        self.last_write = 0.0
        self.sending: Awaitable[None] | None = None
        """A push that could not complete at once, for the task to finish first."""
        self.idle = False
        """True while the response's task waits with nothing under way (see `push`)."""

    def notify(self) -> None:
        if self.idle:
            if self.push():
                return
            self.idle = False  # what `push` left is the task's now
        self.wake()

    def take(self) -> bytes:
        """The frames not sent yet, as one body chunk (the caller checked there are some)."""
        frames, position = self.log.frames, self.position
        self.position = len(frames)
        return frames[position] if position + 1 == len(frames) else b"".join(frames[position:])

    def rest(self) -> bytes:
        """What is left to send once the log finished: the frames not sent yet, or, for a
        stream placed past the end by a Last-Event-ID the answer never reached, its final
        event all the same (under its own id), so that this stream too ends with `done` or
        `error`."""
        frames, final = self.log.frames, self.log.final_frame
        if self.position < len(frames):
            return self.take()
        if self.position > len(frames) and final is not None:
            return final
        return b""

    def push(self) -> bool:
        """Write the new frames now, from the emitter's stack, if that can be done without
        waiting; False: the response's task must be woken to do it (as for the final event,
        which goes with the end of the body)."""
        if self.position >= len(self.log.frames):
            return True
        if self.disconnected or self.log.final_frame is not None:
            return False
        message: Message = {"type": "http.response.body", "body": self.take(), "more_body": True}
        sending = self.send(message)
        if not isinstance(sending, CoroutineType):  # an awaitable of another kind
            self.sending = sending
            return False
        try:
            awaited = sending.send(None)
        except StopIteration:
            self.last_write = self.loop.time()
            return True
        except OSError:  # the client is gone
            self.disconnected = True
            return False
        except Exception as exc:  # raised in the task, as an awaited send would be
            self.sending = _Raise(exc)
            return False
        # It waits (the socket is full, say): the task goes on with it from there.
        self.sending = _Resumed(sending, awaited)
        return False


class _Resumed:
    """A coroutine started outside any task that suspended on `awaited`: awaiting this goes
    on with it from there, as if it had been awaited from its start (PEP 380's `yield
    from`, by hand)."""

    __slots__ = ("_awaited", "_coroutine")

    def __init__(self, coroutine: Coroutine[Any, Any, None], awaited: Any) -> None:
        self._coroutine = coroutine
        self._awaited = awaited

    def __await__(self) -> Generator[Any, Any, None]:
        coroutine, value = self._coroutine, self._awaited
        while True:
            try:
                sent = yield value
            except GeneratorExit:
                coroutine.close()
                raise
            except BaseException as exc:  # thrown in by the task (a cancellation)
                try:
                    value = coroutine.throw(exc)
                except StopIteration:
                    return
            else:
                try:
                    value = coroutine.send(sent)
                except StopIteration:
                    return


class _Raise:
    """Awaiting this raises `exc` (and, never awaited, it leaves no warning behind)."""

    __slots__ = ("_exc",)

    def __init__(self, exc: Exception) -> None:
        self._exc = exc

    def __await__(self) -> Generator[Any, Any, None]:
        raise self._exc
        yield  # a generator: it raises when awaited, not when built


async def _completed(sending: Awaitable[None]) -> bool:
    """Wait for a send under way; False when the client is gone."""
    try:
        await sending
    except OSError:
        return False
    return True


async def _send_body(send: Send, body: bytes, *, more: bool = True) -> bool:
    """Send a body chunk; False when the client is gone."""
    return await _completed(send({"type": "http.response.body", "body": body, "more_body": more}))
