"""Turning upstream model answers into our shapes, and the pull SSE framing."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

from ollama_web.ollama.fields import as_dict, as_int, as_str, strings
from ollama_web.ollama.pull import PullEvent, PullSubscription


def _scalar(text: str) -> Any:
    try:
        return json.loads(text)
    except (ValueError, RecursionError):  # not JSON, or nested deeper than the parser goes
        return text


def parse_parameters(text: str) -> dict[str, Any]:
    """`num_ctx 4096\\nstop "<|eot_id|>"` → {"num_ctx": 4096, "stop": ["<|eot_id|>"]}."""
    out: dict[str, Any] = {}
    for line in text.splitlines():
        key, _, raw = line.strip().partition(" ")
        if not key:
            continue
        value = _scalar(raw.strip())
        if key == "stop" or key in out:
            previous = out.get(key, [])
            out[key] = [*(previous if isinstance(previous, list) else [previous]), value]
        else:
            out[key] = value
    return out


def model_details(name: str, node_url: str, show: dict[str, Any]) -> dict[str, Any]:
    """The `/api/models/{name}` item from an `/api/show` answer (fields may be missing)."""
    details = as_dict(show.get("details"))
    info = as_dict(show.get("model_info"))
    arch = as_str(info.get("general.architecture"))
    context = as_int(info.get(f"{arch}.context_length")) if arch else None
    embedding = as_int(info.get(f"{arch}.embedding_length")) if arch else None
    parameters = show.get("parameters")
    return {
        "name": name,
        "node": node_url,
        "format": as_str(details.get("format")),
        "family": as_str(details.get("family")),
        "families": strings(details.get("families")),
        "parameter_size": as_str(details.get("parameter_size")),
        "quantization_level": as_str(details.get("quantization_level")),
        "architecture": arch,
        "parameter_count": as_int(info.get("general.parameter_count")),
        "context_length": context or as_int(details.get("context_length")),
        "embedding_length": embedding or as_int(details.get("embedding_length")),
        "capabilities": strings(show.get("capabilities")),
        "parameters": parse_parameters(parameters) if isinstance(parameters, str) else {},
        "template": as_str(show.get("template")),
        "system": as_str(show.get("system")),
        "license": as_str(show.get("license")),
        "modified_at": as_str(show.get("modified_at")),
    }


def running_entry(node_url: str, entry: dict[str, Any]) -> dict[str, Any]:
    details = as_dict(entry.get("details"))
    name = as_str(entry.get("name")) or as_str(entry.get("model")) or ""
    return {
        "name": name,
        "model": as_str(entry.get("model")) or name,
        "node": node_url,
        "size": as_int(entry.get("size")),
        "size_vram": as_int(entry.get("size_vram")),
        "expires_at": as_str(entry.get("expires_at")),
        "context_length": as_int(entry.get("context_length")),
        "digest": as_str(entry.get("digest")),
        "family": as_str(details.get("family")),
        "parameter_size": as_str(details.get("parameter_size")),
        "quantization_level": as_str(details.get("quantization_level")),
    }


def sse_frame(event: PullEvent) -> bytes:
    data = json.dumps(event.data, separators=(",", ":"))
    return f"event: {event.kind}\ndata: {data}\n\n".encode()


async def pull_sse(pull: PullSubscription, heartbeat_seconds: float) -> AsyncIterator[bytes]:
    """`progress` events, then `done` or `error`; keep-alive comments in quiet stretches."""
    events = pull.events(heartbeat_seconds)
    try:
        async for event in events:
            yield b": keep-alive\n\n" if event is None else sse_frame(event)
    finally:
        await events.aclose()
