"""The model catalogue: lookup by name and the JSON shapes Ollama uses for models."""

from __future__ import annotations

import hashlib
from typing import Any

from ollama_web.emulator.config import ModelSpec
from ollama_web.emulator.wire import parse_name, rfc3339_local

SMALL_LAYERS: list[tuple[str, int]] = [
    ("template", 1429),
    ("license", 7711),
    ("license2", 6016),
    ("params", 96),
    ("config", 561),
]

LLAMA_TEMPLATE = (
    "<|start_header_id|>system<|end_header_id|>\n\n{{ .System }}<|eot_id|>\n"
    "{{- range .Messages }}<|start_header_id|>{{ .Role }}<|end_header_id|>\n\n"
    "{{ .Content }}<|eot_id|>{{ end }}<|start_header_id|>assistant<|end_header_id|>\n\n"
)
LICENSE = "EMULATOR MODEL LICENSE\n\nThis fake model may be used for tests & benchmarks only.\n"


def find_model(models: list[ModelSpec], name: str) -> ModelSpec | None:
    """Case-insensitive match after adding ``:latest`` and the default host/namespace."""
    parsed = parse_name(name)
    if parsed is None:
        return None
    key = parsed.key()
    for spec in models:
        other = parse_name(spec.name)
        if other is not None and other.key() == key:
            return spec
    return None


def ensure_modified(models: list[ModelSpec], epoch: float) -> None:
    """Give models without ``modified_at`` one, the first in the list being the newest."""
    for index, spec in enumerate(models):
        if spec.modified_at is None:
            spec.modified_at = epoch - 3600.0 * (index + 1)


def modified_ns(spec: ModelSpec) -> int:
    return int((spec.modified_at or 0.0) * 1_000_000_000)


def details(spec: ModelSpec) -> dict[str, Any]:
    out: dict[str, Any] = {
        "parent_model": "",
        "format": "gguf",
        "family": spec.family,
        "families": None if spec.families_null else [spec.family],
        "parameter_size": spec.parameter_size,
        "quantization_level": spec.quantization_level,
    }
    if spec.context_length:
        out["context_length"] = spec.context_length
    if spec.embedding_length:
        out["embedding_length"] = spec.embedding_length
    return out


def list_entry(spec: ModelSpec) -> dict[str, Any]:
    out: dict[str, Any] = {
        "name": spec.name,
        "model": spec.name,
        "modified_at": rfc3339_local(modified_ns(spec)),
        "size": spec.size,
        "digest": spec.digest,
        "details": details(spec),
    }
    if spec.capabilities:
        out["capabilities"] = list(spec.capabilities)
    return out


def running_entry(spec: ModelSpec, expires_ns: int, context_length: int) -> dict[str, Any]:
    return {
        "name": spec.name,
        "model": spec.name,
        "size": spec.size,
        "digest": spec.digest,
        "details": details(spec),
        "expires_at": rfc3339_local(expires_ns),
        "size_vram": spec.size,
        "context_length": context_length,
    }


def layers(spec: ModelSpec) -> list[tuple[str, int]]:
    """``(sha256:<hex>, size)`` for each blob of the model; they add up to ``spec.size``."""
    small = SMALL_LAYERS if "embedding" not in spec.capabilities else SMALL_LAYERS[3:]
    model_size = max(1, spec.size - sum(size for _, size in small))
    out = []
    for kind, size in [("model", model_size), *small]:
        digest = hashlib.sha256(f"{spec.name}/{kind}".encode()).hexdigest()
        out.append((f"sha256:{digest}", size))
    return out


def _parameter_count(size: str) -> int:
    scale = {"K": 1e3, "M": 1e6, "B": 1e9, "T": 1e12}
    try:
        return int(float(size[:-1]) * scale.get(size[-1:].upper(), 1.0))
    except ValueError:
        return 0


def _parameters(spec: ModelSpec) -> list[tuple[str, str]]:
    if "completion" not in spec.capabilities:
        return []
    if "thinking" in spec.capabilities:
        return [
            ("repeat_penalty", "1"),
            ("stop", '"<|im_start|>"'),
            ("stop", '"<|im_end|>"'),
            ("temperature", "0.6"),
            ("top_k", "20"),
            ("top_p", "0.95"),
        ]
    return [
        ("stop", '"<|start_header_id|>"'),
        ("stop", '"<|end_header_id|>"'),
        ("stop", '"<|eot_id|>"'),
    ]


def model_info(spec: ModelSpec, verbose: bool) -> dict[str, Any]:
    fam = spec.family
    tokens: list[str] = [f"<tok{i}>" for i in range(2000)] if verbose else []
    info: dict[str, Any] = {
        "general.architecture": fam,
        "general.basename": spec.name.split(":", 1)[0],
        "general.file_type": 15,
        "general.parameter_count": _parameter_count(spec.parameter_size),
        "general.quantization_version": 2,
        f"{fam}.block_count": 28,
        f"{fam}.context_length": spec.context_length,
        f"{fam}.embedding_length": spec.embedding_length,
        "tokenizer.ggml.model": "gpt2",
        "tokenizer.ggml.tokens": tokens,
        "tokenizer.ggml.token_type": [1] * len(tokens),
        "tokenizer.ggml.merges": [],
    }
    return dict(sorted(info.items()))


def show_body(spec: ModelSpec, verbose: bool) -> dict[str, Any]:
    """``api.ShowResponse`` in Go field order, omitempty fields left out."""
    params = _parameters(spec)
    template = LLAMA_TEMPLATE if "completion" in spec.capabilities else "{{ .Prompt }}"
    blob = layers(spec)[0][0].replace(":", "-")
    modelfile = (
        '# Modelfile generated by "ollama show"\n'
        "# To build a new Modelfile based on this, replace FROM with:\n"
        f"# FROM {spec.name}\n\n"
        f"FROM /root/.ollama/models/blobs/{blob}\n"
        f'TEMPLATE """{template}"""\n'
        + "".join(f"PARAMETER {k} {v}\n" for k, v in params)
        + f'LICENSE """{LICENSE}"""\n'
    )
    out: dict[str, Any] = {"license": LICENSE, "modelfile": modelfile}
    if params:
        out["parameters"] = "\n".join(f"{k:<30} {v}" for k, v in params)
    out["template"] = template
    out["details"] = details(spec)
    out["model_info"] = model_info(spec, verbose)
    if spec.capabilities:
        out["capabilities"] = list(spec.capabilities)
    out["modified_at"] = rfc3339_local(modified_ns(spec))
    return out
