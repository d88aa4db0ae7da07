"""What each node holds (`/api/tags`) and has loaded (`/api/ps`), cached for a few seconds.

Listing calls use the connect timeout plus the short list timeout: a node that never completes
its TCP connect costs at most the connect timeout, one that accepts and never answers at most
the list timeout, and a node in back-off is reported without being contacted at all; once its
back-off ends it is asked again in the background while another node is up (`refresh`).
Concurrent refreshes of one node share one upstream request.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

from ollama_web.core.errors import AppError
from ollama_web.ollama.errors import OllamaUnavailableError, PoolBusyError
from ollama_web.ollama.fields import as_dict, as_int, as_str, strings
from ollama_web.ollama.names import model_key
from ollama_web.ollama.nodes import Node, NodeRegistry
from ollama_web.ollama.transport import Upstream

logger = logging.getLogger("ollama_web.ollama")


@dataclass(frozen=True, slots=True)
class NodeReport:
    url: str
    status: str
    error: str | None

    def as_dict(self) -> dict[str, Any]:
        return {"url": self.url, "status": self.status, "error": self.error}


def require_a_node_up(reports: Sequence[NodeReport]) -> None:
    """OLLAMA_UNAVAILABLE, with every node's report, when none of `reports` is up."""
    if not any(report.status == "up" for report in reports):
        raise OllamaUnavailableError(
            "No Ollama node is reachable.",
            details={"nodes": [report.as_dict() for report in reports]},
        )


def _entries(payload: Any, field: str = "models") -> dict[str, dict[str, Any]]:
    models = payload.get(field) if isinstance(payload, dict) else None
    out: dict[str, dict[str, Any]] = {}
    for entry in models if isinstance(models, list) else []:
        if not isinstance(entry, dict):
            continue
        name = entry.get("name") or entry.get("model")
        key = model_key(name) if isinstance(name, str) else None
        if key is not None:
            out.setdefault(key, entry)
    return out


class Inventory:
    def __init__(self, upstream: Upstream, registry: NodeRegistry, ttl_seconds: float) -> None:
        self.upstream = upstream
        self.registry = registry
        self.ttl_seconds = ttl_seconds
        self._pending: dict[tuple[str, str], asyncio.Task[str | None]] = {}

    def close(self) -> None:
        for task in self._pending.values():
            task.cancel()

    def _stale(self, stamp: float | None) -> bool:
        return stamp is None or time.monotonic() - stamp > self.ttl_seconds

    def _task(
        self, key: tuple[str, str], fetch: Callable[[], Awaitable[str | None]]
    ) -> asyncio.Future[str | None]:
        """The upstream request `key` in progress, or a new one."""
        task = self._pending.get(key)
        if task is None:
            task = asyncio.ensure_future(fetch())
            self._pending[key] = task
            task.add_done_callback(lambda _: self._pending.pop(key, None))
        return task

    async def _shared(
        self, key: tuple[str, str], fetch: Callable[[], Awaitable[str | None]]
    ) -> str | None:
        return await asyncio.shield(self._task(key, fetch))

    async def _fetch_models(self, node: Node) -> str | None:
        try:
            response = await self.upstream.request(node, "GET", "/api/tags")
            self.registry.set_models(node, _entries(response.json()))
        except PoolBusyError as exc:
            # Our pool is full (of generations): the node is not down, and the inventory
            # it gave last still holds.
            return None if node.models else exc.message
        except AppError as exc:
            node.models_at = None
            return node.last_error or exc.message
        except ValueError:
            self.registry.note_error(node, "invalid /api/tags answer")
            return node.last_error
        return None

    async def _fetch_loaded(self, node: Node) -> str | None:
        try:
            response = await self.upstream.request(node, "GET", "/api/ps")
            self.registry.set_loaded(node, set(_entries(response.json())))
        except (AppError, ValueError):
            node.loaded_at = None
            return node.last_error
        return None

    def _due(self, node: Node, loaded: bool) -> bool:
        return self._stale(node.models_at) or (loaded and self._stale(node.loaded_at))

    async def _refresh_node(self, node: Node, force: bool, loaded: bool) -> str | None:
        error: str | None = None
        if force or self._stale(node.models_at):
            error = await self._shared((node.url, "tags"), lambda: self._fetch_models(node))
        if loaded and error is None and (force or self._stale(node.loaded_at)):
            await self._shared((node.url, "ps"), lambda: self._fetch_loaded(node))
        return error

    def _probe_soon(self, node: Node) -> None:
        """Ask a node that was down for its models in the background (shared with any
        request that asks meanwhile); it is used again once it answers."""

        def failed(finished: asyncio.Future[str | None]) -> None:  # nobody else may await it
            if not finished.cancelled() and finished.exception() is not None:
                logger.error("probing %s failed", node.url, exc_info=finished.exception())

        self._task((node.url, "tags"), lambda: self._fetch_models(node)).add_done_callback(failed)

    async def refresh(self, *, force: bool = False, loaded: bool = False) -> list[NodeReport]:
        """Bring inventories up to date; one report per configured node.

        A node that was down and whose back-off has ended is asked again in the background
        while another node is up (unless `force`): a node that accepts connections and never
        answers would otherwise hold the request that asks it for OLLAMA_LIST_TIMEOUT_SECONDS,
        once per back-off, though the model is on a node that answers."""
        contact = self.registry.reachable_first()
        if not force and any(node.status == "up" for node in contact):
            for node in contact:
                if node.status != "up":
                    self._probe_soon(node)
            contact = [node for node in contact if node.status == "up"]
        errors: list[str | None]
        if force or any(self._due(node, loaded) for node in contact):
            errors = await asyncio.gather(*(self._refresh_node(n, force, loaded) for n in contact))
        else:  # every chat asks (up to 3 times): no task per node when all is fresh
            errors = [None] * len(contact)
        outcome = {node.url: error for node, error in zip(contact, errors, strict=True)}
        reports = []
        for node in self.registry.nodes:
            if node.url in outcome and outcome[node.url] is None:
                reports.append(NodeReport(node.url, "up", None))
            else:
                error = outcome.get(node.url) or node.last_error or "not reachable"
                reports.append(NodeReport(node.url, "down", error))
        return reports

    def holders(self, key: str) -> list[Node]:
        return [node for node in self.registry.nodes if node.has_model(key)]

    async def merged(self, *, force: bool = False) -> tuple[list[dict[str, Any]], list[NodeReport]]:
        """Models of every reachable node merged by canonical name, and the node reports."""
        reports = await self.refresh(force=force)
        require_a_node_up(reports)
        merged: dict[str, dict[str, Any]] = {}
        up = {report.url for report in reports if report.status == "up"}
        for node in self.registry.nodes:
            if node.url not in up:
                continue
            for key, entry in node.models.items():
                target = merged.setdefault(key, {"entry": entry, "nodes": []})
                target["nodes"].append(node.url)
        models = [model_entry(item["entry"], item["nodes"]) for item in merged.values()]
        models.sort(key=lambda item: str(item["name"]).lower())
        return models, reports


def model_entry(entry: dict[str, Any], nodes: list[str]) -> dict[str, Any]:
    """One merged `/api/models` item; every optional upstream field may be missing."""
    details = as_dict(entry.get("details"))
    name = as_str(entry.get("name")) or as_str(entry.get("model")) or ""
    return {
        "name": name,
        "model": as_str(entry.get("model")) or name,
        "size": as_int(entry.get("size")),
        "digest": as_str(entry.get("digest")),
        "modified_at": as_str(entry.get("modified_at")),
        "format": as_str(details.get("format")),
        "family": as_str(details.get("family")),
        "families": strings(details.get("families")),
        "parameter_size": as_str(details.get("parameter_size")),
        "quantization_level": as_str(details.get("quantization_level")),
        "context_length": as_int(details.get("context_length")),
        "embedding_length": as_int(details.get("embedding_length")),
        "capabilities": strings(entry.get("capabilities")),
        "nodes": nodes,
    }
