"""/api/pull: the progress stream of server/images.go, against a fake registry.

As in Ollama, the pulls of one model running at the same time share one download, which is
cancelled when its last client leaves; the bytes it fetched stay (``emu.blobs``), so a later
pull resumes from them.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from ollama_web.emulator.catalog import layers
from ollama_web.emulator.config import EmulatorConfig, ModelSpec
from ollama_web.emulator.http11 import HttpRequest, PeerGone, Responder, wait_unless_gone
from ollama_web.emulator.wire import (
    ApiError,
    ModelName,
    decode_object,
    get_bool,
    get_str,
    parse_name,
)

if TYPE_CHECKING:
    from ollama_web.emulator.server import OllamaEmulator

NOT_FOUND = "pull model manifest: file does not exist"

Line = dict[str, Any]
Write = Callable[[Line], Awaitable[None]]


def layer_line(digest: str, total: int, completed: int) -> Line:
    """A ``pulling <12 hex>`` line; ``completed`` is omitempty, so missing before any byte."""
    line: Line = {"status": f"pulling {digest[7:19]}", "digest": digest, "total": total}
    if completed:
        line["completed"] = completed
    return line


class Download:
    """One model's download: its layers one after another, each from the bytes already on
    disk, in ``pull_steps`` steps ``pull_delay`` apart. Pulls follow its lines."""

    def __init__(self, emu: OllamaEmulator, spec: ModelSpec) -> None:
        self.emu = emu
        self.name = spec.name
        self.lines: list[Line] = []
        self.finished = False
        self.followers = 0
        self._changed = asyncio.Event()
        self.task = asyncio.get_running_loop().create_task(self._run(spec))

    def _publish(self, line: Line | None) -> None:
        if line is not None:
            self.lines.append(line)
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()

    async def _run(self, spec: ModelSpec) -> None:
        blobs, cfg = self.emu.blobs, self.emu.config
        steps = max(1, cfg.pull_steps)
        try:
            for digest, total in layers(spec):
                have = min(blobs.get(digest, 0), total)
                await asyncio.sleep(cfg.pull_delay)
                self._publish(layer_line(digest, total, have))
                for step in range(1, steps + 1) if have < total else ():
                    await asyncio.sleep(cfg.pull_delay)
                    blobs[digest] = have + (total - have) * step // steps
                    self._publish(layer_line(digest, total, blobs[digest]))
            self.finished = True
            self._publish(None)
        finally:
            if self.emu.downloads.get(self.name) is self:
                del self.emu.downloads[self.name]

    def joining(self) -> tuple[list[Line], int]:
        """Where a pull joining now starts: one whole line for each layer already fetched,
        then the latest line (the download's position, not zero)."""
        if not self.lines:
            return [], 0
        current = self.lines[-1]["digest"]
        done = {line["digest"]: line["total"] for line in self.lines if line["digest"] != current}
        return [layer_line(d, total, total) for d, total in done.items()], len(self.lines) - 1

    async def follow(self, write: Write, gone: asyncio.Task[None], index: int) -> None:
        """Write the lines from ``index`` on until the download ends; the last follower to
        leave cancels it."""
        self.followers += 1
        try:
            while True:
                changed = self._changed
                while index < len(self.lines):
                    await write(self.lines[index])
                    index += 1
                if self.finished:
                    return
                await wait_unless_gone(changed, gone)
        finally:
            self.followers -= 1
            if not self.followers and not self.finished:
                self.task.cancel()


class _EndedEarly(Exception):
    """``pull_end_after_lines`` ended the body cleanly before ``success``."""


class _Lines:
    """The NDJSON body of a streamed pull, with its fault switches."""

    def __init__(self, resp: Responder, cfg: EmulatorConfig) -> None:
        self.resp = resp
        self.cfg = cfg
        self.stream = resp.stream(cfg.split_utf8)
        self.count = 0

    async def write(self, line: Line) -> None:
        if self.count == self.cfg.pull_drop_after_lines:
            self.resp.conn.abort()
            raise PeerGone
        if self.count == self.cfg.pull_end_after_lines:
            await self.stream.finish()
            raise _EndedEarly
        await self.stream.write_line(line)
        self.count += 1


def registry_name(emu: OllamaEmulator, name: ModelName) -> str | None:
    """The registry's spelling of ``name``, or ``None`` if the registry lacks it."""
    for entry in emu.config.registry_models:
        parsed = parse_name(entry)
        if parsed is not None and parsed.key() == name.key():
            return parsed.short()
    return None


def install(emu: OllamaEmulator, spec: ModelSpec) -> None:
    """Add the pulled model (or refresh its modified time)."""
    spec.modified_at = time.time()
    if emu.find_model(spec.name) is None:
        emu.config.models.append(spec)


async def _pause(delay: float, gone: asyncio.Task[None]) -> None:
    if delay > 0:
        await asyncio.wait({gone}, timeout=delay)
    if gone.done():
        raise PeerGone


async def _layers(
    emu: OllamaEmulator, spec: ModelSpec, write: Write, gone: asyncio.Task[None]
) -> None:
    """The layer lines: one whole line each for an installed model, else the download's."""
    if emu.find_model(spec.name) is not None:
        for digest, total in layers(spec):
            await _pause(emu.config.pull_delay, gone)
            await write(layer_line(digest, total, total))
        return
    download = emu.downloads.get(spec.name)
    if download is None:
        download = emu.downloads[spec.name] = Download(emu, spec)
    fetched, index = download.joining()
    for line in fetched:
        await write(line)
    await download.follow(write, gone, index)


async def _stream(
    emu: OllamaEmulator, resp: Responder, spec: ModelSpec, exists: bool, gone: asyncio.Task[None]
) -> None:
    out = _Lines(resp, emu.config)
    try:
        await out.write({"status": "pulling manifest"})
        if not exists:
            await out.write({"error": NOT_FOUND})
            await out.stream.finish()
            return
        await _layers(emu, spec, out.write, gone)
        await _pause(emu.config.pull_delay, gone)
        await out.write({"status": "verifying sha256 digest"})
        await out.write({"status": "writing manifest"})
        install(emu, spec)
        await out.write({"status": "success"})
        await out.stream.finish()
    except _EndedEarly:
        return


async def _discard(line: Line) -> None:
    """A pull with ``stream: false`` writes no line: it answers once, at its end."""


async def _collect(
    emu: OllamaEmulator, resp: Responder, spec: ModelSpec, exists: bool, gone: asyncio.Task[None]
) -> None:
    if not exists:
        await resp.error(500, NOT_FOUND)
        return
    await _layers(emu, spec, _discard, gone)
    install(emu, spec)
    await resp.json(200, {"status": "success"})


async def pull(emu: OllamaEmulator, req: HttpRequest, resp: Responder) -> None:
    body = decode_object(req.body, "PullRequest")
    raw = get_str(body, "model", "PullRequest") or get_str(body, "name", "PullRequest")
    name = parse_name(raw)
    if name is None:
        raise ApiError(400, "invalid model name")
    stream = get_bool(body, "stream", "PullRequest") is not False
    remote = registry_name(emu, name)
    spec = emu.find_model(raw) or ModelSpec.preset(remote or name.short())
    exists = remote is not None
    conn = resp.conn
    gone = conn.start_watch()
    try:
        if stream:
            await _stream(emu, resp, spec, exists, gone)
        else:
            await _collect(emu, resp, spec, exists, gone)
    except PeerGone:
        conn.abort()
    finally:
        await conn.stop_watch()
