"""Turning upstream model answers into our shapes, and the pull SSE framing."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

from ollama_web.ollama.pull import PullEvent, PullSubscription


def _dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []


def _int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _scalar(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
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
    details = _dict(show.get("details"))
    info = _dict(show.get("model_info"))
    architecture = info.get("general.architecture")
    arch = architecture if isinstance(architecture, str) else None
    context = _int(info.get(f"{arch}.context_length")) if arch else None
    embedding = _int(info.get(f"{arch}.embedding_length")) if arch else None
    parameters = show.get("parameters")
    return {
        "name": name,
        "node": node_url,
        "format": details.get("format") or None,
        "family": details.get("family") or None,
        "families": [f for f in _list(details.get("families")) if isinstance(f, str)],
        "parameter_size": details.get("parameter_size") or None,
        "quantization_level": details.get("quantization_level") or None,
        "architecture": arch,
        "parameter_count": _int(info.get("general.parameter_count")),
        "context_length": context or _int(details.get("context_length")),
        "embedding_length": embedding or _int(details.get("embedding_length")),
        "capabilities": [c for c in _list(show.get("capabilities")) if isinstance(c, str)],
        "parameters": parse_parameters(parameters) if isinstance(parameters, str) else {},
        "template": show.get("template") or None,
        "system": show.get("system") or None,
        "license": show.get("license") or None,
        "modified_at": show.get("modified_at") or None,
    }


def running_entry(node_url: str, entry: dict[str, Any]) -> dict[str, Any]:
    details = _dict(entry.get("details"))
    name = entry.get("name") or entry.get("model") or ""
    return {
        "name": name,
        "model": entry.get("model") or name,
        "node": node_url,
        "size": _int(entry.get("size")),
        "size_vram": _int(entry.get("size_vram")),
        "expires_at": entry.get("expires_at") or None,
        "context_length": _int(entry.get("context_length")),
        "digest": entry.get("digest") or None,
        "family": details.get("family") or None,
        "parameter_size": details.get("parameter_size") or None,
        "quantization_level": details.get("quantization_level") or None,
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
