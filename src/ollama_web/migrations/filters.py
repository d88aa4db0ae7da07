"""What autogenerate compares: full-text search objects are managed by hand in migrations."""

from __future__ import annotations

from typing import Any


def include_object(
    obj: Any, name: str | None, type_: str, reflected: bool, compare_to: Any
) -> bool:
    return not (
        type_ in ("table", "index") and name is not None and name.startswith("messages_fts")
    )
