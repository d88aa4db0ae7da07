"""/api/pull: the progress stream of server/images.go, against a fake registry."""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING, Any

from ollama_web.emulator.catalog import layers
from ollama_web.emulator.config import ModelSpec
from ollama_web.emulator.http11 import HttpRequest, PeerGone, Responder
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


def progress_lines(spec: ModelSpec, cached: bool, steps: int) -> list[dict[str, Any]]:
    """Per-layer ``pulling <12 hex>`` lines; a cached layer gets one line with completed==total."""
    out: list[dict[str, Any]] = []
    for digest, total in layers(spec):
        status = f"pulling {digest[7:19]}"
        counts = [total] if cached else [total * i // max(1, steps) for i in range(1, steps + 1)]
        for completed in counts:
            line: dict[str, Any] = {"status": status, "digest": digest, "total": total}
            if completed:
                line["completed"] = completed
            out.append(line)
    return out


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


async def _stream(
    emu: OllamaEmulator, resp: Responder, spec: ModelSpec, exists: bool, gone: asyncio.Task[None]
) -> None:
    cfg = emu.config
    stream = resp.stream(cfg.split_utf8)
    await stream.write_line({"status": "pulling manifest"})
    if not exists:
        await stream.write_line({"error": NOT_FOUND})
        await stream.finish()
        return
    cached = emu.find_model(spec.name) is not None
    for line in progress_lines(spec, cached, cfg.pull_steps):
        await _pause(cfg.pull_delay, gone)
        await stream.write_line(line)
    await _pause(cfg.pull_delay, gone)
    await stream.write_line({"status": "verifying sha256 digest"})
    await stream.write_line({"status": "writing manifest"})
    install(emu, spec)
    await stream.write_line({"status": "success"})
    await stream.finish()


async def _collect(
    emu: OllamaEmulator, resp: Responder, spec: ModelSpec, exists: bool, gone: asyncio.Task[None]
) -> None:
    cfg = emu.config
    if not exists:
        await resp.error(500, NOT_FOUND)
        return
    cached = emu.find_model(spec.name) is not None
    for _ in progress_lines(spec, cached, cfg.pull_steps):
        await _pause(cfg.pull_delay, gone)
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
