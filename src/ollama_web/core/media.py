"""Which request bodies FastAPI reads as JSON: its rule, `application/json` and
`application/*+json`, parameters (`; charset=utf-8`) aside."""

from __future__ import annotations


def media_type(content_type: str) -> str:
    """The `type/subtype` of a Content-Type value, lower-cased, without its parameters."""
    return content_type.split(";", 1)[0].strip().lower()


def is_json(media: str) -> bool:
    """Whether FastAPI parses a body of this media type (see `media_type`) as JSON."""
    return media == "application/json" or (
        media.startswith("application/") and media.endswith("+json")
    )
