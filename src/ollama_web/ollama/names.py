"""Ollama's model-name grammar (`types/model/name.go`) and canonical names.

A name is `[host/][namespace/]model[:tag]`; missing parts default to
`registry.ollama.ai/library/...:latest`. Matching ignores case, so `llama3.2`,
`LLaMA3.2:latest` and `registry.ollama.ai/library/llama3.2:latest` are one model.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

from ollama_web.core.errors import ValidationError

DEFAULT_HOST = "registry.ollama.ai"
DEFAULT_NAMESPACE = "library"
DEFAULT_TAG = "latest"
MAX_NAME_CHARS = 512
_MAX_PART = {"host": 350, "namespace": 80, "model": 80, "tag": 80}
_WORD = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_")


@dataclass(frozen=True, slots=True)
class ModelName:
    host: str
    namespace: str
    model: str
    tag: str

    @property
    def display(self) -> str:
        """The shortest form, as `/api/tags` spells it: `llama3.2:latest`, `user/m:tag`."""
        if self.host.lower() != DEFAULT_HOST:
            return f"{self.host}/{self.namespace}/{self.model}:{self.tag}"
        if self.namespace.lower() != DEFAULT_NAMESPACE:
            return f"{self.namespace}/{self.model}:{self.tag}"
        return f"{self.model}:{self.tag}"

    @property
    def key(self) -> str:
        """The comparison key: the display form, lowercased."""
        return self.display.lower()


def _valid_part(kind: str, value: str) -> bool:
    if not 0 < len(value) <= _MAX_PART[kind] or value[0] not in _WORD:
        return False
    for char in value[1:]:
        if char in _WORD or char in "_-":
            continue
        if char == "." and kind != "namespace":
            continue
        if char == ":" and kind == "host":
            continue
        return False
    return True


@lru_cache(maxsize=1024)  # a chat parses its model's name 4 times; the result is immutable
def parse_model_name(text: str) -> ModelName | None:
    """Parse a name the way Ollama does; `None` when it is invalid."""
    if not text or len(text) > MAX_NAME_CHARS:
        return None
    tag = DEFAULT_TAG
    if text.rfind(":") > text.rfind("/"):
        text, _, tag = text.rpartition(":")
    parts = text.split("/")
    if len(parts) > 3:
        return None
    model = parts[-1]
    namespace = parts[-2] if len(parts) >= 2 else DEFAULT_NAMESPACE
    host = parts[-3] if len(parts) == 3 else DEFAULT_HOST
    name = ModelName(host, namespace, model, tag)
    checks = (("host", host), ("namespace", namespace), ("model", model), ("tag", tag))
    return name if all(_valid_part(kind, value) for kind, value in checks) else None


def validate_model_name(text: str, field: str | tuple[str, ...] = "model") -> ModelName:
    """Parse or raise the core 422 `ValidationError` (before any upstream call), naming
    `field`, the request's field (body or path) that held `text` (a tuple: its path in a
    nested document)."""
    name = parse_model_name(text)
    if name is None:
        raise ValidationError(
            "The model name is invalid.",
            details={
                "fields": [
                    {
                        "loc": [field] if isinstance(field, str) else list(field),
                        "message": "expected [host/][namespace/]model[:tag] with letters, "
                        "digits, '_', '-', '.'",
                        "type": "model_name",
                    }
                ],
                "model_name": text[:MAX_NAME_CHARS],
            },
        )
    return name


def canonical_model_name(text: str) -> str:
    """`name:tag` lowercased for comparison (adds `:latest`); invalid → 422."""
    return validate_model_name(text).key


def model_key(text: str) -> str | None:
    """The comparison key of a name an Ollama node reported; `None` if it is not valid."""
    name = parse_model_name(text)
    return name.key if name else None
