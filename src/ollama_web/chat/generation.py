"""Durable generations: one server-side job per answer, independent of any HTTP connection.

A `Generation` relays one streamed `/api/chat` into an `EventLog` (which any number of SSE
responses follow and replay) and into the database: the growing answer is checkpointed at
most once per GENERATION_CHECKPOINT_SECONDS from its own task (never per token, never on
the relay path), and stored once more when the job ends:

- upstream `done`                      -> `complete`, then a `done` event;
- `stop()` (the user)                  -> the upstream is closed at once, `stopped`, `done`;
- an error line / an end without done /
  a dropped connection / a failure to
  open the stream                      -> the partial text with `error`, an `error` event;
- server shutdown                      -> the partial text with `interrupted`, `error` event;
- the final write refused              -> tried again (`done` once stored), at last an `error`
                                          event (ANSWER_NOT_STORED) with the text;
- no node reachable before the request
  was written (a node that died within
  the health cache)                     -> the answer's row is deleted, nothing emitted:
                                          `reached()` is False, the request answers 503.

`GenerationRegistry` (one per process, built by the chat lifespan) starts jobs, bounds them
per user (MAX_CONCURRENT_GENERATIONS_PER_USER), finds them for re-attach and stop, keeps
finished ones for a while so late re-attaches can replay, and stops them all at shutdown.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from typing import Any, Protocol

from ollama_web.chat.answer_row import AnswerRow, done_metrics
from ollama_web.chat.errors import AnswerNotStored, GenerationInterrupted, error_body
from ollama_web.chat.sse import EventLog
from ollama_web.conversations.schemas import MessagePublic
from ollama_web.conversations.writes import Writes
from ollama_web.core.errors import AppError, InternalError
from ollama_web.db.base import utcnow
from ollama_web.db.models import MessageStatus
from ollama_web.metrics import chat as chat_metrics
from ollama_web.ollama.chunks import ChatChunk
from ollama_web.ollama.errors import OllamaUnavailableError

logger = logging.getLogger("ollama_web.chat")

STREAMING = MessageStatus.STREAMING.value
COMPLETE = MessageStatus.COMPLETE.value
STOPPED = MessageStatus.STOPPED.value
ERROR = MessageStatus.ERROR.value
INTERRUPTED = MessageStatus.INTERRUPTED.value


class ChatStreamLike(Protocol):
    @property
    def node_url(self) -> str | None: ...
    async def relay(self, on_chunk: Callable[[ChatChunk], None]) -> None: ...


class ChatOpener(Protocol):
    """What a generation needs from the gateway (`OllamaGateway` satisfies it)."""

    def open_chat(
        self,
        model: str,
        messages: list[dict[str, Any]],
        *,
        options: dict[str, Any] | None = None,
        think: bool | str | None = None,
        on_sent: Callable[[], None] | None = None,
    ) -> AbstractAsyncContextManager[ChatStreamLike]: ...


@dataclass(frozen=True, slots=True)
class GenerationSpec:
    """Everything a job needs, fixed before it starts (the messages are committed)."""

    user_id: str
    conversation_id: str
    user_message_id: str
    message: MessagePublic
    """The assistant message as stored (status pending); the job fills it in."""
    model: str
    messages: list[dict[str, Any]]
    options: dict[str, Any] | None = None
    think: bool | None = None
    title_source: str | None = None
    """The first message of a conversation whose title is still to be written."""
    leaf_before: str | None = None
    """The conversation's leaf again if the answer is withdrawn (no node reached): the
    question, or for a regenerate the leaf shown before it (None: the question)."""

    @property
    def message_id(self) -> str:
        return self.message.id


class Generation:
    """One answer being generated (see the module docstring)."""

    def __init__(
        self,
        spec: GenerationSpec,
        gateway: ChatOpener,
        writes: Writes,
        checkpoint_seconds: float,
    ) -> None:
        self.spec = spec
        self.log = EventLog()
        self.status = spec.message.status
        self.result: MessagePublic | None = None
        self.error: AppError | None = None
        self.finished = asyncio.Event()
        self.withdrawn = False
        """No node was reachable: the answer's row is deleted (see `reached`)."""
        self._reached: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self._gateway = gateway
        self._row = AnswerRow(writes, spec.message_id)
        self._checkpoint_seconds = checkpoint_seconds
        self._content: list[str] = []
        self._thinking: list[str] = []
        self._done: ChatChunk | None = None
        self._tokens = 0
        self._node_url: str | None = None
        self._stop_status: str | None = None
        self._relaying = False
        self._finishing = False
        self._task: asyncio.Task[None] | None = None
        self._checkpoint: asyncio.Task[None] | None = None
        self._abandon_timer: asyncio.TimerHandle | None = None
        self._next_checkpoint = 0.0
        self._on_first_output: Callable[[Generation], None] | None = None
        self.log.emit(
            "start",
            {
                "conversation_id": spec.conversation_id,
                "user_message_id": spec.user_message_id,
                "assistant_message_id": spec.message_id,
                "model": spec.model,
            },
        )

    @property
    def id(self) -> str:
        return self.spec.message_id

    @property
    def running(self) -> bool:
        return not self.finished.is_set()

    def start(
        self,
        on_finished: Callable[[Generation], None],
        on_first_output: Callable[[Generation], None] | None = None,
    ) -> None:
        """Run the job; `on_first_output` is called when the first token (or thinking) came."""
        loop = asyncio.get_running_loop()
        self._next_checkpoint = loop.time() + self._checkpoint_seconds
        self._on_first_output = on_first_output
        self._task = loop.create_task(self._run(on_finished), name=f"generation-{self.id}")

    def stop(self, status: str = STOPPED) -> bool:
        """Close the upstream at once and end with `status`; False if already ending."""
        if self._finishing or self._stop_status is not None:
            return False
        self._stop_status = status
        if self._relaying and self._task is not None:
            self._task.cancel()
        return True

    def cancel(self) -> None:
        """End the job's task outright, wherever it is (shutdown, after its grace)."""
        if self._task is not None:
            self._task.cancel()

    def abandon(self, grace: float = 0.0) -> None:
        """The last attached client left (CHAT_CONTINUE_ON_DISCONNECT=false): stop, unless
        a client is attached again `grace` seconds later (a page reload re-attaches; so does
        a follower in another process after a Redis blip)."""
        if self._abandon_timer is not None:
            self._abandon_timer.cancel()
            self._abandon_timer = None
        if grace <= 0:
            self.stop(STOPPED)
            return
        loop = asyncio.get_running_loop()
        self._abandon_timer = loop.call_later(grace, self._stop_if_unfollowed)

    def _stop_if_unfollowed(self) -> None:
        self._abandon_timer = None
        if not self.log.followers:
            self.stop(STOPPED)

    async def wait(self) -> None:
        await self.finished.wait()

    async def reached(self) -> bool:
        """Whether the answer has started: True once its request is written to a node (or
        the job ended any other way). False when no node could be reached before that: the
        answer's row is deleted, `error` says why, and the request answers 503 with the
        user's message kept (API-CONTRACT "Chat"), as when the health cache knew."""
        return await asyncio.shield(self._reached)

    def _mark_reached(self) -> None:
        if not self._reached.done():
            self._reached.set_result(True)

    async def _run(self, on_finished: Callable[[Generation], None]) -> None:
        chat_metrics.generation_started()
        try:
            if self._stop_status is None:
                await self._relay_until_stopped()
            self._finishing = True
            if not (self._unreached() and await self._withdraw()):
                self._mark_reached()
                await self._finish()
        finally:
            self._mark_reached()
            # The conversation sent to Ollama (with its images, megabytes maybe) is not
            # kept while the ended answer is (RETAIN_SECONDS, for late re-attaches).
            self.spec = dataclasses.replace(self.spec, messages=[])
            if self._abandon_timer is not None:
                self._abandon_timer.cancel()
            if not self.finished.is_set():  # never leave a follower waiting
                self.log.finish()
                self.finished.set()
            chat_metrics.generation_finished()
            on_finished(self)

    async def _relay_until_stopped(self) -> None:
        self._relaying = True
        try:
            await self._relay()
        except asyncio.CancelledError:
            if self._stop_status is None:
                raise
            task = asyncio.current_task()
            if task is not None:
                task.uncancel()
        except AppError as exc:
            self.error = exc
            if self._node_url is not None:
                chat_metrics.upstream_error(self._node_url)
        except Exception:  # a job boundary: an unexpected failure must still end the answer
            logger.exception("generation %s failed", self.id)
            self.error = InternalError("The answer could not be generated.")
        finally:
            self._relaying = False

    async def _relay(self) -> None:
        spec = self.spec
        loop = asyncio.get_running_loop()
        started = loop.time()
        opened = self._gateway.open_chat(
            spec.model,
            spec.messages,
            options=spec.options,
            think=spec.think,
            on_sent=self._mark_reached,
        )
        log = self.log

        def on_chunk(chunk: ChatChunk) -> None:
            # Called as each chunk arrives, from the upstream connection's callback.
            if self._stop_status is not None:
                return  # stopped: nothing more is relayed while this task is cancelled
            if chunk.thinking:
                self._thinking.append(chunk.thinking)
                log.emit_text("thinking", chunk.thinking)
                self._relayed(loop, started)
            if chunk.content:
                self._content.append(chunk.content)
                log.emit_text("token", chunk.content)
                self._relayed(loop, started)
            if chunk.done:
                self._done = chunk
            if loop.time() >= self._next_checkpoint:
                self._schedule_checkpoint(loop)

        async with opened as stream:
            self._mark_reached()  # another transport than ours: its answer's head came
            self._node_url = stream.node_url
            self.status = STREAMING
            await stream.relay(on_chunk)

    def _relayed(self, loop: asyncio.AbstractEventLoop, started: float) -> None:
        if not self._tokens:
            chat_metrics.time_to_first_token(loop.time() - started)
            if self._on_first_output is not None:
                self._on_first_output(self)
        self._tokens += 1
        chat_metrics.tokens_relayed(1)

    # ------------------------------------------------------------ persistence

    def _unreached(self) -> bool:
        return (
            not self._reached.done()
            and self._stop_status is None
            and isinstance(self.error, OllamaUnavailableError)
        )

    async def _withdraw(self) -> bool:
        """Delete the answer no one has seen; False (logged) when the database refused: it
        is then stored as an error, as a failure after the start is."""
        leaf = self.spec.leaf_before or self.spec.user_message_id
        if not await self._row.withdraw(self.spec.conversation_id, leaf):
            return False
        self.withdrawn = True
        self._reached.set_result(False)
        return True

    def _text(self) -> tuple[str, str | None]:
        content = "".join(self._content)
        self._content[:] = [content]
        thinking = "".join(self._thinking)
        self._thinking[:] = [thinking]
        return content, thinking or None

    def _schedule_checkpoint(self, loop: asyncio.AbstractEventLoop) -> None:
        self._next_checkpoint = loop.time() + self._checkpoint_seconds
        if self._checkpoint is None or self._checkpoint.done():
            self._checkpoint = loop.create_task(self._write_checkpoint())

    async def _write_checkpoint(self) -> None:
        content, thinking = self._text()
        values = {"content": content, "thinking": thinking, "status": STREAMING}
        await self._row.write(values)

    async def heartbeat(self, interval: float) -> None:
        """Called once every `interval` seconds: write `updated_at` when nothing else wrote
        the row for half of it (say, while a model loads), so that no row goes unwritten
        much longer than `interval`; it tells other processes this answer is alive (see
        `leases`). Skipping a write made a little under `interval` ago would leave nearly
        two intervals until the next."""
        if self._finishing or self.finished.is_set():
            return
        if asyncio.get_running_loop().time() - self._row.last_write >= interval / 2:
            await self._row.write({})

    def _final_status(self) -> str:
        if self._stop_status is not None:
            return self._stop_status
        if self.error is not None:
            return ERROR
        return COMPLETE

    def _final_message(self, status: str) -> MessagePublic:
        content, thinking = self._text()
        done = self._done if status == COMPLETE else None
        error = self.error
        if status == INTERRUPTED:
            error = GenerationInterrupted("The server stopped while the answer was generated.")
            self.error = error
        metrics = done_metrics(done) if done is not None else {}
        return self.spec.message.model_copy(
            update={
                "content": content,
                "thinking": thinking,
                "status": status,
                "error": error_body(error) if error is not None else None,
                "completed_at": utcnow(),
                **metrics,
            }
        )

    async def _finish(self) -> None:
        if self._checkpoint is not None:
            await asyncio.wait([self._checkpoint])
        status = self._final_status()
        message = self._final_message(status)
        self.status = status
        # Its final event (done or error, below) is the log's next one.
        stored = await self._row.write_final(message, self.log.last_id + 1)
        self.result = message
        payload = message.model_dump(mode="json")
        if not stored and self.error is None:
            self.error = AnswerNotStored(
                "The answer could not be saved; its text is in details.assistant_message."
            )
        if self.error is not None:
            body = error_body(self.error)
            body["details"] = {**body["details"], "assistant_message": payload}
            self.log.emit("error", body)
        else:
            self.log.emit("done", {"message": payload})
        self.log.finish()
        self.finished.set()
