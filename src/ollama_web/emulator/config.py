"""Knobs of the Ollama emulator: the models it serves and how it behaves."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any

from ollama_web.emulator.wire import canonical_name, parse_name

DEFAULT_REPLY = (
    "Hello wörld — 你好 🌍! I am the Ollama emulator; "
    "my answers are deterministic, and 2 < 3 & 4 > 1 still holds."
)
DEFAULT_THINKING = "Let me think… the user wants a short, friendly answer."
DEFAULT_ERROR = (
    "model runner has unexpectedly stopped, this may be due to resource limitations "
    "or an internal error, check ollama server logs for details"
)
BUSY_ERROR = "server busy, please try again.  maximum pending requests exceeded"
DEFAULT_REGISTRY = frozenset(
    {
        "llama3.2:latest",
        "llama3.2:1b",
        "qwen3:latest",
        "mistral:latest",
        "tinyllama:latest",
        "nomic-embed-text:latest",
    }
)


def _digest_of(name: str) -> str:
    return hashlib.sha256(name.encode("utf-8")).hexdigest()


@dataclass
class ModelSpec:
    """One locally installed model as the emulator reports it."""

    name: str
    family: str = "llama"
    parameter_size: str = "3.2B"
    quantization_level: str = "Q4_K_M"
    size: int = 2019393189
    context_length: int = 131072
    capabilities: list[str] = field(default_factory=lambda: ["completion"])
    digest: str = ""
    embedding_length: int = 3072
    modified_at: float | None = None
    """Unix seconds; ``None`` lets the emulator assign one (first listed = newest)."""
    families_null: bool = False
    """``details.families`` sent as ``null`` (a Go nil slice), as Ollama does for some models."""

    def __post_init__(self) -> None:
        self.name = canonical_name(self.name)
        if not self.digest:
            self.digest = _digest_of(self.name)

    @classmethod
    def preset(cls, name: str) -> ModelSpec:
        """A spec with realistic details for well-known library models."""
        parsed = parse_name(name)
        base = parsed.model.lower() if parsed else name
        values = _PRESETS.get(base, {})
        return cls(name, **values)


_PRESETS: dict[str, dict[str, Any]] = {
    "llama3.2": {"capabilities": ["completion", "tools"]},
    "qwen3": {
        "family": "qwen3",
        "parameter_size": "8.2B",
        "size": 5225388164,
        "context_length": 40960,
        "embedding_length": 4096,
        "capabilities": ["completion", "tools", "thinking"],
    },
    "deepseek-r1": {
        "family": "qwen2",
        "parameter_size": "7.6B",
        "size": 4683075271,
        "context_length": 131072,
        "embedding_length": 3584,
        "capabilities": ["completion", "thinking"],
    },
    "mistral": {
        "parameter_size": "7.2B",
        "size": 4113301824,
        "context_length": 32768,
        "embedding_length": 4096,
        "capabilities": ["completion", "tools"],
    },
    "tinyllama": {
        "parameter_size": "1B",
        "quantization_level": "Q4_0",
        "size": 637700138,
        "context_length": 2048,
        "embedding_length": 2048,
    },
    "nomic-embed-text": {
        "family": "nomic-bert",
        "parameter_size": "137M",
        "quantization_level": "F16",
        "size": 274302450,
        "context_length": 2048,
        "embedding_length": 768,
        "capabilities": ["embedding"],
    },
}


@dataclass
class EmulatorConfig:
    """Behaviour knobs. Mutable at run time; each request reads them when it starts."""

    models: list[ModelSpec] = field(default_factory=lambda: [ModelSpec("llama3.2:latest")])
    reply: str | None = None
    """Reply text; ``None`` means :data:`DEFAULT_REPLY` (has multi-byte characters)."""
    reply_tokens: int | None = None
    """If set, the reply is ``"tok0 tok1 ..."`` with this many tokens (overrides ``reply``)."""
    tokens_per_second: float = 0.0
    """0 means as fast as possible."""
    first_token_delay: float = 0.0
    """Seconds before the first token; response headers are withheld until then."""
    batched_decode: bool = False
    """Generations of one model running at once share its decode steps, as a runner with
    parallel slots batches them (llama.cpp's continuous batching: one forward pass gives
    the next token of every slot): after its first token (prefill), each generation's
    tokens come at the model's step instants, one every 1/``tokens_per_second`` from the
    model's first generation on, so concurrent streams get theirs at the same moments.
    False: each generation keeps its own clock from its start."""
    thinking: str | None = None
    """Thinking text for models with the ``thinking`` capability (unless ``think:false``).
    ``None`` means :data:`DEFAULT_THINKING`; ``""`` disables thinking output."""
    error_after_tokens: int | None = None
    """After N tokens write ``{"error": ...}`` and end the body cleanly (0: a 500 instead)."""
    error_message: str = DEFAULT_ERROR
    drop_after_tokens: int | None = None
    """After N tokens close the socket abruptly (no terminating chunk)."""
    split_utf8: bool = False
    """Write each line in small chunks that split multi-byte characters."""
    busy: bool = False
    """Answer chat/generate with 503 ``server busy ...``."""
    done_text: str = ""
    """Extra text carried by the ``done:true`` chunk."""
    done_reason: str | None = None
    """The done chunk's reason instead of ``stop``/``length``: ``""`` is sent as Ollama
    sends it for a reason it has no name for."""
    tool_calls: list[dict[str, Any]] | None = None
    """``[{"name": ..., "arguments": {...}}]`` sent as one chunk when a chat request has tools."""
    num_parallel: int = 0
    """Concurrent generations per model, each model its own slots (OLLAMA_NUM_PARALLEL is
    per loaded model); more wait before their headers. 0 means unlimited, which is not
    Ollama's default (1): benchmarks against the emulator are not meant to queue."""
    max_queue: int = 0
    """Generations that may wait for a slot, all models together (Ollama's pending queue
    is the server's); one more answers 503 ``BUSY_ERROR`` (OLLAMA_MAX_QUEUE, whose
    default is 512). 0 means unlimited."""
    pull_steps: int = 5
    """Download steps per layer on pull, each one a progress line after the layer's first
    (which has no ``completed`` when no byte of the layer is on disk yet)."""
    pull_delay: float = 0.0
    """Seconds between pull progress lines."""
    pull_drop_after_lines: int | None = None
    """After N lines of a streamed pull close the socket abruptly (no terminating chunk)."""
    pull_end_after_lines: int | None = None
    """After N lines of a streamed pull end the body cleanly, without the ``success`` line."""
    registry_models: set[str] = field(default_factory=lambda: set(DEFAULT_REGISTRY))
    """Names that exist in the (fake) registry and can be pulled."""
    version: str = "0.33.0"
    hang_before_headers: bool = False
    """Read each request, then never answer (on every route)."""
