"""Per-node state: up/down with back-off, in-flight generations, latency, last error, and the
node's model inventory (from `/api/tags`) and loaded models (from `/api/ps`)."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

from ollama_web.core.config import normalise_ollama_url, public_url

BACKOFF_BASE_SECONDS = 1.0
BACKOFF_MAX_SECONDS = 30.0

NodeStatus = Literal["unknown", "up", "down"]


@dataclass
class Node:
    url: str
    """The node's URL as shown and as `?node=` names it: without user info."""
    index: int
    address: str
    """The URL requests go to: as configured, credentials included (httpx sends them as
    Basic authentication)."""
    status: NodeStatus = "unknown"
    version: str | None = None
    latency_ms: float | None = None
    last_error: str | None = None
    last_error_at: float | None = None
    last_ok_at: float | None = None
    consecutive_failures: int = 0
    down_until: float = 0.0
    """`time.monotonic()` before which routing skips the node."""
    in_flight: int = 0
    requests_total: int = 0
    failures_total: int = 0
    models: dict[str, dict[str, Any]] = field(default_factory=dict)
    """Comparison key → the `/api/tags` entry."""
    models_at: float | None = None
    loaded: set[str] = field(default_factory=set)
    loaded_at: float | None = None

    def in_backoff(self, now: float | None = None) -> bool:
        return self.status == "down" and (now or time.monotonic()) < self.down_until

    def backoff_remaining(self) -> float:
        return max(0.0, self.down_until - time.monotonic()) if self.status == "down" else 0.0

    def has_model(self, key: str) -> bool:
        return self.status == "up" and key in self.models

    def display_name(self, key: str) -> str:
        """How this node spells the model (what we send it)."""
        entry = self.models.get(key) or {}
        name = entry.get("name") or entry.get("model")
        return name if isinstance(name, str) and name else key


class NodeRegistry:
    """The configured nodes, in configuration order."""

    def __init__(self, urls: list[str]) -> None:
        self.nodes = [
            Node(url=public_url(url), index=index, address=url) for index, url in enumerate(urls)
        ]

    def get(self, url: str) -> Node | None:
        """The node `url` names, spelled as OLLAMA_URL may spell it (`host:port`, a trailing
        slash, user info); None for any other."""
        try:
            wanted = public_url(normalise_ollama_url(url))
        except ValueError:
            return None
        return next((node for node in self.nodes if node.url == wanted), None)

    def reachable_first(self) -> list[Node]:
        """Nodes to contact now: those not in back-off; if every node is, all of them (so a
        recovered single node is used again at once)."""
        now = time.monotonic()
        ready = [node for node in self.nodes if not node.in_backoff(now)]
        return ready or list(self.nodes)

    def mark_up(
        self, node: Node, *, latency_ms: float | None = None, version: str | None = None
    ) -> None:
        node.status = "up"
        node.consecutive_failures = 0
        node.down_until = 0.0
        node.last_ok_at = time.time()
        if latency_ms is not None:
            node.latency_ms = round(latency_ms, 2)
        if version is not None:
            node.version = version

    def mark_down(self, node: Node, error: str) -> None:
        """The node could not be reached: skip it for an exponentially growing while."""
        node.consecutive_failures += 1
        delay = BACKOFF_BASE_SECONDS * 2 ** min(node.consecutive_failures - 1, 10)
        node.down_until = time.monotonic() + min(BACKOFF_MAX_SECONDS, delay)
        node.status = "down"
        node.models_at = None
        node.loaded_at = None
        self.note_error(node, error)

    def note_error(self, node: Node, error: str) -> None:
        """A failure that does not make the node unreachable (e.g. a 500 or a slow answer)."""
        node.failures_total += 1
        node.last_error = error
        node.last_error_at = time.time()

    def set_models(self, node: Node, entries: dict[str, dict[str, Any]]) -> None:
        node.models = entries
        node.models_at = time.monotonic()

    def set_loaded(self, node: Node, keys: set[str]) -> None:
        node.loaded = keys
        node.loaded_at = time.monotonic()

    def invalidate(self, node: Node | None = None) -> None:
        """Forget cached inventories so the next use asks the node(s) again."""
        for target in [node] if node is not None else self.nodes:
            target.models_at = None
            target.loaded_at = None

    def snapshot(self) -> list[dict[str, Any]]:
        return [
            {
                "url": node.url,
                "status": "up" if node.status == "up" else "down",
                "version": node.version,
                "latency_ms": node.latency_ms,
                "in_flight": node.in_flight,
                "requests_total": node.requests_total,
                "failures_total": node.failures_total,
                "consecutive_failures": node.consecutive_failures,
                "backoff_seconds": round(node.backoff_remaining(), 3),
                "last_error": node.last_error,
                "last_error_at": _iso(node.last_error_at),
                "last_ok_at": _iso(node.last_ok_at),
                "models_count": len(node.models) if node.models or node.models_at else None,
                "loaded_models": sorted(node.display_name(key) for key in node.loaded),
            }
            for node in self.nodes
        ]


def _iso(timestamp: float | None) -> str | None:
    return datetime.fromtimestamp(timestamp, UTC).isoformat() if timestamp is not None else None
