"""Model pulls with fan-out: every admin pulling the same model onto the same node shares ONE
upstream `/api/pull` stream.

A `PullJob` runs as a background task owned by the `PullManager`; subscribers replay from the
latest event and then follow. A job keeps running when its subscribers leave (a pull is a
long admin operation: pulling again re-attaches) and is cancelled when an administrator
cancels it (`cancel`, `POST /api/models/pull/cancel`; in every process with REDIS_URL, see
`pull_cancels`), when the gateway closes, or SHUTDOWN_GRACE_SECONDS after a stop signal
(`interrupt_all`), so that its streams end.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncGenerator, Callable
from dataclasses import dataclass
from typing import Any, Literal

import httpx

from ollama_web.core.errors import AppError
from ollama_web.ollama.chunks import PullProgress
from ollama_web.ollama.errors import (
    ModelNotFoundError,
    OllamaStreamError,
    OllamaUnavailableError,
    PullCancelledError,
    describe_decoding_error,
    describe_transport_error,
)
from ollama_web.ollama.names import ModelName
from ollama_web.ollama.ndjson import iter_ndjson
from ollama_web.ollama.nodes import Node
from ollama_web.ollama.transport import Upstream

EventKind = Literal["progress", "done", "error"]
_MISSING_IN_REGISTRY = ("file does not exist", "not found")


@dataclass(frozen=True, slots=True)
class PullEvent:
    kind: EventKind
    data: dict[str, Any]


def _error_event(error: AppError) -> PullEvent:
    body = {"error": error.code, "message": error.message, "details": error.details}
    return PullEvent("error", body)


def _stream_failure(exc: OllamaStreamError, requested: str) -> AppError:
    """An error line naming a missing manifest means the registry lacks the model."""
    message = exc.upstream_message.lower()
    if exc.kind == "upstream_error" and any(marker in message for marker in _MISSING_IN_REGISTRY):
        return ModelNotFoundError(requested, f"Model {requested} not found in the registry")
    return exc


class PullJob:
    def __init__(
        self,
        node: Node,
        name: ModelName,
        requested: str,
        on_finished: Callable[[PullJob], None],
    ) -> None:
        self.node = node
        self._on_finished = on_finished
        self.name = name
        self.requested = requested
        self.events: list[PullEvent] = []
        self.finished = False
        self.subscribers = 0
        self._changed = asyncio.Event()
        self._started: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.task: asyncio.Task[None] | None = None
        self._interruption: AppError | None = None

    def interrupt(self, error: AppError) -> None:
        """End the pull now with `error`: its upstream closes, which cancels it in Ollama
        (what it downloaded stays there; pulling again resumes)."""
        if not self.finished and self._interruption is None and self.task is not None:
            self._interruption = error  # once: a second cancel would cut the upstream's close
            self.task.cancel()

    @property
    def interrupted(self) -> bool:
        """Being ended by `interrupt` (a cancel, a shutdown)."""
        return self._interruption is not None

    def _publish(self, event: PullEvent) -> None:
        if event.kind != "progress":
            # Before anyone sees the end: a listing right after `done` must be fresh.
            self.finished = True
            self._on_finished(self)
        self.events.append(event)
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()

    def _fail_start(self, error: AppError) -> None:
        if not self._started.done():
            self._started.set_exception(error)
            self._started.exception()  # retrieved here: no "never retrieved" log if unawaited
        if not self.finished:
            self._publish(_error_event(error))

    async def run(self, upstream: Upstream) -> None:
        body = {"model": self.requested, "stream": True}
        try:
            response = await upstream.open_stream(self.node, "/api/pull", body, quick_head=True)
        except AppError as exc:
            self._fail_start(exc)
            return
        except asyncio.CancelledError:
            cancelled = OllamaUnavailableError("The pull was cancelled.")
            self._fail_start(self._interruption or cancelled)
            raise
        self._started.set_result(None)
        try:
            await self._relay(response)
        finally:
            await response.aclose()
            if not self.finished:
                error = self._interruption or OllamaStreamError("disconnected", "pull cancelled")
                self._publish(_error_event(error))

    async def _relay(self, response: httpx.Response) -> None:
        try:
            async for obj in iter_ndjson(response.aiter_bytes()):
                progress = PullProgress.from_object(obj)
                if progress.status == "success":
                    self._publish(PullEvent("done", {"status": "success"}))
                    return
                self._publish(PullEvent("progress", progress.as_event()))
        except OllamaStreamError as exc:
            self._publish(_error_event(_stream_failure(exc, self.requested)))
            return
        except httpx.TransportError as exc:
            failure = OllamaStreamError("disconnected", describe_transport_error(exc))
            self._publish(_error_event(failure))
            return
        except httpx.DecodingError as exc:
            failure = OllamaStreamError("upstream_error", describe_decoding_error(exc))
            self._publish(_error_event(failure))
            return
        self._publish(_error_event(OllamaStreamError("incomplete", "no success line")))

    async def started(self) -> None:
        """Wait for the upstream headers; raises the translated error if the pull failed first."""
        await asyncio.shield(self._started)

    async def follow(
        self, start_index: int = 0, heartbeat_seconds: float | None = None
    ) -> AsyncGenerator[PullEvent | None, None]:
        """Events from `start_index` on, ending with `done` or `error`; `None` whenever
        `heartbeat_seconds` pass without an event (for keep-alive comments)."""
        index = start_index
        self.subscribers += 1
        try:
            while True:
                changed = self._changed
                while index < len(self.events):
                    yield self.events[index]
                    index += 1
                if self.finished:
                    return
                try:
                    await asyncio.wait_for(changed.wait(), heartbeat_seconds)
                except TimeoutError:
                    yield None
        finally:
            self.subscribers -= 1


@dataclass(frozen=True, slots=True)
class PullSubscription:
    """One admin's view of a (possibly shared) pull: whoever started it sees every event,
    whoever joined later starts at the latest one."""

    job: PullJob
    start_index: int

    def events(self, heartbeat_seconds: float | None = None) -> AsyncGenerator[PullEvent | None]:
        return self.job.follow(self.start_index, heartbeat_seconds)


class PullManager:
    def __init__(self, upstream: Upstream, on_finished: Callable[[PullJob], None]) -> None:
        self.upstream = upstream
        self.on_finished = on_finished
        self.jobs: dict[tuple[str, str], PullJob] = {}

    async def start(self, node: Node, name: ModelName, requested: str) -> PullSubscription:
        """Join the running pull of this model on this node, or start one."""
        key = (node.url, name.key)
        job = self.jobs.get(key)
        start_index = 0
        if job is None:
            job = PullJob(node, name, requested, self._finished)
            self.jobs[key] = job
            job.task = asyncio.get_running_loop().create_task(job.run(self.upstream))
        else:
            start_index = max(0, len(job.events) - 1)
        await job.started()
        return PullSubscription(job, start_index)

    def interrupt_all(self, error: AppError) -> None:
        for job in list(self.jobs.values()):
            job.interrupt(error)

    def cancel(self, key: str, node_url: str | None = None) -> int:
        """End this process's pulls of the model `key` (on `node_url`, or on every node):
        their upstreams close, which cancels them in Ollama. How many there were."""
        jobs = [
            job
            for (url, job_key), job in self.jobs.items()
            if job_key == key
            and (node_url is None or url == node_url)
            and not (job.finished or job.interrupted)
        ]
        for job in jobs:
            job.interrupt(
                PullCancelledError(
                    "An administrator cancelled the pull; pulling again resumes it.",
                    details={"model_name": job.requested, "node": job.node.url},
                )
            )
        return len(jobs)

    def _finished(self, job: PullJob) -> None:
        key = (job.node.url, job.name.key)
        if self.jobs.get(key) is job:
            del self.jobs[key]
        self.on_finished(job)

    async def close(self) -> None:
        tasks = [job.task for job in self.jobs.values() if job.task is not None]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
