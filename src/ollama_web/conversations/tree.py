"""The message tree of a conversation: branches, versions and the active path.

Messages form a tree through `parent_id`: an edit is a new user message beside the old one
(same parent), a regeneration a new answer beside the old one. The conversation shows one
path, root to `active_leaf_id`. Everything here is pure: it works on loaded messages.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Generic, Protocol, TypeVar

from ollama_web.core.validation import clean_text

DEFAULT_TITLE = "New conversation"


class Node(Protocol):
    @property
    def id(self) -> str: ...
    @property
    def parent_id(self) -> str | None: ...
    @property
    def role(self) -> str: ...


N = TypeVar("N", bound=Node)


class Tree(Generic[N]):
    """An index over one conversation's messages, given oldest first."""

    def __init__(self, messages: Sequence[N]) -> None:
        self.by_id = {message.id: message for message in messages}
        self.children: dict[str | None, list[str]] = {}
        for message in messages:
            self.children.setdefault(message.parent_id, []).append(message.id)

    def path_to(self, leaf_id: str | None) -> list[str]:
        """Ids from the root down to `leaf_id` (empty for None or an unknown id)."""
        path: list[str] = []
        current = leaf_id
        while current is not None and current in self.by_id and len(path) <= len(self.by_id):
            path.append(current)
            current = self.by_id[current].parent_id
        path.reverse()
        return path

    def siblings(self, message_id: str) -> list[str]:
        """Every version at this message's position: same parent and role, oldest first."""
        message = self.by_id[message_id]
        return [
            other
            for other in self.children.get(message.parent_id, [])
            if self.by_id[other].role == message.role
        ]

    def newest_leaf_below(self, message_id: str) -> str:
        """Follow the newest child down to a leaf: where a chosen version's branch ends."""
        current = message_id
        for _ in range(len(self.by_id)):
            children = self.children.get(current)
            if not children:
                break
            current = children[-1]
        return current

    def leaf(self, active_leaf_id: str | None) -> str | None:
        """The active leaf, or (if unset or gone) the newest leaf of the newest root."""
        if active_leaf_id is not None and active_leaf_id in self.by_id:
            return active_leaf_id
        roots = self.children.get(None)
        return self.newest_leaf_below(roots[-1]) if roots else None


def first_words(text: str, max_chars: int = 60) -> str:
    """A fallback title: the first words of `text`, cleaned as every title is (a message of
    control characters alone gives DEFAULT_TITLE), cut at a word boundary."""
    words: Iterable[str] = clean_text(text).split()
    title = ""
    for word in words:
        candidate = f"{title} {word}" if title else word
        if len(candidate) > max_chars:
            if not title:
                title = word[: max_chars - 1] + "…"
            break
        title = candidate
    return title or DEFAULT_TITLE
