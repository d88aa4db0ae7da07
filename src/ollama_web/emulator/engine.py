"""The token loop shared by /api/chat and /api/generate: timing, faults, metrics."""

from __future__ import annotations

import asyncio
import copy
import math
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, Protocol

from ollama_web.emulator.config import BUSY_ERROR, EmulatorConfig, ModelSpec
from ollama_web.emulator.http11 import ChunkedStream, PeerGone, Responder, wait_unless_gone
from ollama_web.emulator.wire import ApiError, rfc3339_utc

if TYPE_CHECKING:
    from ollama_web.emulator.server import OllamaEmulator

Outcome = Literal["completed", "failed"]


@dataclass
class Event:
    """One generated token (or one chunk of whole tool calls)."""

    kind: Literal["thinking", "content", "tools"]
    text: str = ""
    tool_calls: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class Plan:
    """What one chat/generate request will produce."""

    api: Literal["chat", "generate"]
    model: str
    """The model name exactly as the client sent it (echoed in every chunk)."""
    spec: ModelSpec
    stream: bool
    events: list[Event]
    done_reason: str
    prompt_tokens: int
    keep_alive: float
    context_length: int
    raw: bool = False
    arrived: float = field(default_factory=time.monotonic)


def chunk(plan: Plan, ev: Event) -> dict[str, Any]:
    """A ``done:false`` line in Go field order."""
    content = ev.text if ev.kind == "content" else ""
    head: dict[str, Any] = {"model": plan.model, "created_at": rfc3339_utc()}
    if plan.api == "generate":
        head["response"] = content
        if ev.kind == "thinking":
            head["thinking"] = ev.text
    else:
        message: dict[str, Any] = {"role": "assistant", "content": content}
        if ev.kind == "thinking":
            message["thinking"] = ev.text
        if ev.tool_calls:
            message["tool_calls"] = ev.tool_calls
        head["message"] = message
    head["done"] = False
    return head


def final(
    plan: Plan, collected: list[Event], metrics: dict[str, int], done_text: str
) -> dict[str, Any]:
    """The ``done:true`` object; ``collected`` holds the events it carries (stream:false)."""
    content = "".join(e.text for e in collected if e.kind == "content") + done_text
    thinking = "".join(e.text for e in collected if e.kind == "thinking")
    tool_calls = [call for e in collected for call in e.tool_calls]
    out: dict[str, Any] = {"model": plan.model, "created_at": rfc3339_utc()}
    if plan.api == "generate":
        out["response"] = content
        if thinking:
            out["thinking"] = thinking
    else:
        message: dict[str, Any] = {"role": "assistant", "content": content}
        if thinking:
            message["thinking"] = thinking
        if tool_calls:
            message["tool_calls"] = tool_calls
        out["message"] = message
    out["done"] = True
    out["done_reason"] = plan.done_reason
    if plan.api == "generate" and not plan.raw:
        size = plan.prompt_tokens + metrics.get("eval_count", 0)
        out["context"] = [(i * 7919 + 128000) % 128256 for i in range(size)]
    out.update(metrics)
    return out


class Sink(Protocol):
    async def token(self, ev: Event) -> None: ...
    async def error(self, message: str) -> None: ...
    async def done(self, metrics: dict[str, int], done_text: str) -> None: ...


class StreamSink:
    def __init__(self, resp: Responder, plan: Plan, split: bool) -> None:
        self.resp = resp
        self.plan = plan
        self.stream: ChunkedStream = resp.stream(split)

    async def token(self, ev: Event) -> None:
        await self.stream.write_line(chunk(self.plan, ev))

    async def error(self, message: str) -> None:
        if not self.stream.started:
            await self.resp.error(500, message)
            return
        await self.stream.write_line({"error": message})
        await self.stream.finish()

    async def done(self, metrics: dict[str, int], done_text: str) -> None:
        await self.stream.write_line(final(self.plan, [], metrics, done_text))
        await self.stream.finish()


class CollectSink:
    def __init__(self, resp: Responder, plan: Plan) -> None:
        self.resp = resp
        self.plan = plan
        self.events: list[Event] = []

    async def token(self, ev: Event) -> None:
        self.events.append(ev)

    async def error(self, message: str) -> None:
        await self.resp.error(500, message)

    async def done(self, metrics: dict[str, int], done_text: str) -> None:
        await self.resp.json(200, final(self.plan, self.events, metrics, done_text))


def _ns(seconds: float) -> int:
    return max(1, int(seconds * 1_000_000_000))


class Generation:
    """Runs one plan against a response, honouring the config's timing and fault knobs."""

    def __init__(
        self, emu: OllamaEmulator, resp: Responder, plan: Plan, gone: asyncio.Task[None]
    ) -> None:
        self.emu = emu
        self.resp = resp
        self.plan = plan
        self.gone = gone
        self.cfg: EmulatorConfig = copy.copy(emu.config)
        self.sink: Sink = (
            StreamSink(resp, plan, self.cfg.split_utf8) if plan.stream else CollectSink(resp, plan)
        )
        self.cold = True
        self.started = time.monotonic()
        self.first_at: float | None = None

    async def _wait(self, due: float) -> None:
        """Sleep until ``due`` (monotonic), waking at once if the client goes away."""
        delay = due - time.monotonic()
        if delay > 0:
            await asyncio.wait({self.gone}, timeout=delay)
        else:
            await asyncio.sleep(0)
        if self.gone.done():
            raise PeerGone

    def _due(self, index: int) -> float:
        tps = self.cfg.tokens_per_second
        interval = 1.0 / tps if tps > 0 else 0.0
        first = self.started + self.cfg.first_token_delay
        if index == 0 or not (interval and self.cfg.batched_decode):
            return first + index * interval
        # The model's steps: the first one after this generation's first token is its second.
        origin = self.emu.decode_origins.setdefault(self.plan.spec.name, self.started)
        step = math.floor((first - origin) / interval) + index
        return origin + step * interval

    async def produce(self) -> Outcome:
        plan, cfg = self.plan, self.cfg
        self.cold = not self.emu.mark_loaded(plan.spec, plan.keep_alive, plan.context_length)
        for index in range(len(plan.events) + 1):
            await self._wait(self._due(index))
            if index == cfg.error_after_tokens:
                await self.sink.error(cfg.error_message)
                return "failed"
            if index == cfg.drop_after_tokens:
                self.resp.conn.abort()
                return "failed"
            if index == len(plan.events):
                break
            if self.first_at is None:
                self.first_at = time.monotonic()
            await self.sink.token(plan.events[index])
            self.emu.tokens_sent += 1
        await self.sink.done(self._metrics(), cfg.done_text)
        if plan.keep_alive == 0:
            self.emu.unload(plan.spec.name)
        return "completed"

    def _metrics(self) -> dict[str, int]:
        now = time.monotonic()
        first = self.first_at if self.first_at is not None else now
        before = first - self.plan.arrived
        load = before * (0.6 if self.cold else 0.05)
        eval_count = len(self.plan.events) + (1 if self.cfg.done_text else 0)
        metrics = {
            "total_duration": _ns(now - self.plan.arrived),
            "load_duration": _ns(load),
            "prompt_eval_count": self.plan.prompt_tokens,
            "prompt_eval_duration": _ns(before - load),
            "eval_count": eval_count,
            "eval_duration": _ns(now - first),
        }
        return {key: value for key, value in metrics.items() if value}


async def _acquire_slot(emu: OllamaEmulator, model: str, gone: asyncio.Task[None]) -> None:
    """Wait for a free parallel slot of ``model`` (``num_parallel`` per model, as Ollama's
    per-runner semaphore); beyond ``max_queue`` waiting, all models together (Ollama's
    pending queue is the server's), Ollama's 503."""
    cfg, waiting = emu.config, emu.slots_waiting
    if 0 < cfg.num_parallel <= emu.slots_used.get(model, 0):
        if 0 < cfg.max_queue <= sum(waiting.values()):
            raise ApiError(503, BUSY_ERROR)
        waiting[model] = waiting.get(model, 0) + 1
        try:
            while 0 < cfg.num_parallel <= emu.slots_used.get(model, 0):
                event = emu.slot_freed
                if event is None:
                    break
                event.clear()
                await wait_unless_gone(event, gone)
        finally:
            waiting[model] -= 1
    emu.slots_used[model] = emu.slots_used.get(model, 0) + 1


def _release_slot(emu: OllamaEmulator, model: str) -> None:
    emu.slots_used[model] -= 1
    if emu.slot_freed is not None:
        emu.slot_freed.set()


async def run(emu: OllamaEmulator, resp: Responder, plan: Plan) -> None:
    """Produce ``plan`` on ``resp`` and keep the emulator's counters."""
    conn = resp.conn
    gone = conn.start_watch()
    try:
        await _acquire_slot(emu, plan.spec.name, gone)
    except ApiError:
        await conn.stop_watch()
        raise
    except PeerGone:
        emu.queue_cancelled += 1
        emu.note_cancelled()
        conn.abort()
        await conn.stop_watch()
        return
    emu.generations_started += 1
    emu.active_generations += 1
    outcome: Outcome | Literal["cancelled"] = "failed"
    try:
        outcome = await Generation(emu, resp, plan, gone).produce()
    except PeerGone:
        outcome = "cancelled"
        emu.note_cancelled()
        conn.abort()
    finally:
        emu.active_generations -= 1
        _release_slot(emu, plan.spec.name)
        await conn.stop_watch()
        if outcome == "completed":
            emu.generations_completed += 1
        elif outcome == "cancelled":
            emu.generations_cancelled += 1
        else:
            emu.generations_failed += 1
