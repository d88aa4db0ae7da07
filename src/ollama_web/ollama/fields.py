"""Reading fields of a node's JSON answers: a value of another type than the one Ollama
documents is treated as missing. A node (or a proxy, or another server on its port) may
answer anything, and our responses are typed: one odd field must not make them a 500."""

from __future__ import annotations

from typing import Any


def as_dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def as_list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []


def as_int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def as_str(value: Any) -> str | None:
    """A non-empty string, else None."""
    return value if isinstance(value, str) and value else None


def strings(value: Any) -> list[str]:
    """The strings of a list (anything else in it dropped)."""
    return [item for item in as_list(value) if isinstance(item, str)]
