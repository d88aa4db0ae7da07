"""Endpoints that answer with a single response: info, models, embeddings."""

from __future__ import annotations

import dataclasses
import hashlib
import math
import struct
import time
from typing import TYPE_CHECKING, Any

from ollama_web.emulator.catalog import (
    ensure_modified,
    layers,
    list_entry,
    running_entry,
    show_body,
)
from ollama_web.emulator.http11 import HttpRequest, Responder
from ollama_web.emulator.wire import (
    ApiError,
    decode_object,
    get_bool,
    get_str,
    go_kind,
    go_quote,
    parse_keep_alive,
    parse_name,
    tokenize,
)

if TYPE_CHECKING:
    from ollama_web.emulator.server import OllamaEmulator


async def root(emu: OllamaEmulator, req: HttpRequest, resp: Responder) -> None:
    await resp.text(200, "Ollama is running")


async def version(emu: OllamaEmulator, req: HttpRequest, resp: Responder) -> None:
    await resp.json(200, {"version": emu.config.version})


async def status(emu: OllamaEmulator, req: HttpRequest, resp: Responder) -> None:
    await resp.json(200, {"cloud": {"disabled": False, "source": "default"}})


async def tags(emu: OllamaEmulator, req: HttpRequest, resp: Responder) -> None:
    models = emu.config.models
    ensure_modified(models, emu.epoch)
    ordered = sorted(models, key=lambda m: m.modified_at or 0.0, reverse=True)
    await resp.json(200, {"models": [list_entry(m) for m in ordered]})


async def ps(emu: OllamaEmulator, req: HttpRequest, resp: Responder) -> None:
    emu.loaded_models()
    running = sorted(emu.loaded.values(), key=lambda m: m.expires_at, reverse=True)
    entries = []
    for loaded in running:
        spec = emu.find_model(loaded.name)
        if spec is not None:
            expires_ns = int(loaded.expires_at * 1_000_000_000)
            entries.append(running_entry(spec, expires_ns, loaded.context_length))
    await resp.json(200, {"models": entries})


async def show(emu: OllamaEmulator, req: HttpRequest, resp: Responder) -> None:
    body = decode_object(req.body, "ShowRequest")
    raw = get_str(body, "model", "ShowRequest") or get_str(body, "name", "ShowRequest")
    if not raw:
        raise ApiError(400, "model is required")
    name = parse_name(raw)
    if name is None:
        raise ApiError(400, "invalid model name")
    spec = emu.find_model(raw)
    if spec is None:
        raise ApiError(404, f"model '{name.short()}' not found")
    ensure_modified(emu.config.models, emu.epoch)
    verbose = bool(get_bool(body, "verbose", "ShowRequest"))
    await resp.json(200, show_body(spec, verbose))


async def delete(emu: OllamaEmulator, req: HttpRequest, resp: Responder) -> None:
    body = decode_object(req.body, "DeleteRequest")
    raw = get_str(body, "model", "DeleteRequest") or get_str(body, "name", "DeleteRequest")
    if parse_name(raw) is None:
        raise ApiError(400, f"name {go_quote(raw)} is invalid")
    spec = emu.find_model(raw)
    if spec is None:
        raise ApiError(404, f"model '{raw}' not found")
    emu.config.models.remove(spec)
    emu.unload(spec.name)
    for digest, _ in layers(spec):  # its blobs go too: pulling it again starts over
        emu.blobs.pop(digest, None)
    await resp.send(200)


async def copy(emu: OllamaEmulator, req: HttpRequest, resp: Responder) -> None:
    body = decode_object(req.body, "CopyRequest")
    source = get_str(body, "source", "CopyRequest")
    destination = get_str(body, "destination", "CopyRequest")
    if parse_name(source) is None:
        raise ApiError(400, f"source {go_quote(source)} is invalid")
    dst = parse_name(destination)
    if dst is None:
        raise ApiError(400, f"destination {go_quote(destination)} is invalid")
    spec = emu.find_model(source)
    if spec is None:
        raise ApiError(404, f"model {go_quote(source)} not found")
    existing = emu.find_model(destination)
    if existing is not None:
        emu.config.models.remove(existing)
    clone = dataclasses.replace(spec, name=dst.short(), modified_at=time.time())
    emu.config.models.append(clone)
    await resp.send(200)


# ------------------------------------------------------------------ embeddings


def _float32(value: float) -> float:
    """The shortest decimal that round-trips as float32, as Go prints it."""
    target = struct.unpack("f", struct.pack("f", value))[0]
    for digits in range(1, 10):
        text = f"{target:.{digits}g}"
        if struct.unpack("f", struct.pack("f", float(text)))[0] == target:
            return float(text)
    return float(target)


def vector(model: str, text: str, dims: int) -> list[float]:
    """A deterministic L2-normalised vector for ``text`` (float64 values)."""
    seed = hashlib.sha256(f"{model}\0{text}".encode()).digest()
    raw: list[float] = []
    counter = 0
    while len(raw) < dims:
        block = hashlib.sha256(seed + counter.to_bytes(4, "big")).digest()
        raw.extend(v / 2**31 - 1.0 for v in struct.unpack(">8I", block))
        counter += 1
    raw = raw[:dims]
    norm = math.sqrt(sum(v * v for v in raw)) or 1.0
    return [v / norm for v in raw]


def _embed_inputs(value: Any) -> list[str]:
    if value is None or value == "":
        return []
    if isinstance(value, str):
        return [value]
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return list(value)
    raise ApiError(400, "invalid input type")


def _embed_model(emu: OllamaEmulator, body: dict[str, Any], struct_name: str) -> str:
    model = get_str(body, "model", struct_name)
    if not model:
        raise ApiError(400, "model is required")
    spec = emu.find_model(model)
    if spec is None:
        raise ApiError(404, f"model {go_quote(model)} not found, try pulling it first")
    keep_alive = parse_keep_alive(body.get("keep_alive"))
    emu.mark_loaded(spec, keep_alive, min(spec.context_length, 4096) or 4096)
    if keep_alive == 0:
        emu.unload(spec.name)
    return spec.name


async def embed(emu: OllamaEmulator, req: HttpRequest, resp: Responder) -> None:
    started = time.perf_counter_ns()
    body = decode_object(req.body, "EmbedRequest")
    name = _embed_model(emu, body, "EmbedRequest")
    model = get_str(body, "model", "EmbedRequest")
    inputs = _embed_inputs(body.get("input"))
    if not inputs:
        await resp.json(200, {"model": model, "embeddings": []})
        return
    spec = emu.find_model(name)
    dims = spec.embedding_length if spec else 768
    wanted = body.get("dimensions")
    if isinstance(wanted, int) and not isinstance(wanted, bool) and 0 < wanted < dims:
        dims = wanted
    counts = [len(tokenize(text)) + 2 for text in inputs]
    limit = spec.context_length if spec else 2048
    if body.get("truncate") is False and max(counts) > limit:
        raise ApiError(400, "the input length exceeds the context length")
    vectors = [[_float32(v) for v in vector(name, text, dims)] for text in inputs]
    total = max(1, time.perf_counter_ns() - started)
    out = {
        "model": model,
        "embeddings": vectors,
        "total_duration": total,
        "load_duration": max(1, total // 10),
        "prompt_eval_count": sum(counts),
    }
    await resp.json(200, out)


async def embeddings(emu: OllamaEmulator, req: HttpRequest, resp: Responder) -> None:
    body = decode_object(req.body, "EmbeddingRequest")
    name = _embed_model(emu, body, "EmbeddingRequest")
    prompt = body.get("prompt")
    if prompt is not None and not isinstance(prompt, str):
        raise ApiError(
            400,
            f"json: cannot unmarshal {go_kind(prompt)} into Go struct field "
            "EmbeddingRequest.prompt of type string",
        )
    if not prompt:
        await resp.json(200, {"embedding": []})
        return
    spec = emu.find_model(name)
    dims = spec.embedding_length if spec else 768
    await resp.json(200, {"embedding": vector(name, prompt, dims)})
