"""Reachability probes (`GET /api/version` on every node), for `/health` and the node test.

A probe never hangs: short timeouts per node and an overall bound; the health probe result is
cached for OLLAMA_HEALTH_CACHE_SECONDS and concurrent callers share one probe.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import httpx

from ollama_web.core.errors import AppError
from ollama_web.ollama.errors import PoolBusyError
from ollama_web.ollama.nodes import Node, NodeRegistry
from ollama_web.ollama.transport import Upstream

HEALTHY, DEGRADED, UNHEALTHY = "healthy", "degraded", "unhealthy"
PROBE_BOUND_SECONDS = 2.5
"""Overall bound of a health probe, below the core's 3 s bound of any health check."""


class Prober:
    def __init__(self, upstream: Upstream, registry: NodeRegistry, cache_seconds: float) -> None:
        self.upstream = upstream
        self.registry = registry
        self.cache_seconds = cache_seconds
        self._cached: list[dict[str, Any]] | None = None
        self._cached_at = 0.0
        self._running: asyncio.Task[list[dict[str, Any]]] | None = None

    async def _probe_node(
        self, node: Node, timeouts: httpx.Timeout, bound: float
    ) -> dict[str, Any]:
        result: dict[str, Any] = {"url": node.url, "status": "down", "version": None}
        try:
            async with asyncio.timeout(bound):
                response = await self.upstream.request(
                    node, "GET", "/api/version", timeouts=timeouts
                )
            payload = response.json()
        except PoolBusyError as exc:  # our pool is full (of generations): says nothing of it
            status = "up" if node.status == "up" else "down"
            return {**result, "status": status, "latency_ms": node.latency_ms, "error": exc.message}
        except AppError as exc:
            return {**result, "latency_ms": None, "error": node.last_error or exc.message}
        except TimeoutError:
            self.registry.mark_down(node, "probe timed out")
            return {**result, "latency_ms": None, "error": "probe timed out"}
        except ValueError:
            self.registry.note_error(node, "invalid /api/version answer")
            return {**result, "latency_ms": node.latency_ms, "error": node.last_error}
        version = payload.get("version") if isinstance(payload, dict) else None
        node.version = version if isinstance(version, str) else None
        return {
            "url": node.url,
            "status": "up",
            "version": node.version,
            "latency_ms": node.latency_ms,
            "error": None,
        }

    async def probe_all(self, timeouts: httpx.Timeout, bound: float) -> list[dict[str, Any]]:
        """A fresh probe of every node (back-off does not apply: this is how nodes recover)."""
        nodes = self.registry.nodes
        return list(await asyncio.gather(*(self._probe_node(n, timeouts, bound) for n in nodes)))

    async def health_nodes(self) -> list[dict[str, Any]]:
        """Cached, shared probe with the short probe timeouts."""
        if self._cached is not None and time.monotonic() - self._cached_at < self.cache_seconds:
            return self._cached
        if self._running is None:
            self._running = asyncio.ensure_future(
                self.probe_all(self.upstream.probe_timeout, PROBE_BOUND_SECONDS)
            )
            self._running.add_done_callback(self._store)
        return await asyncio.shield(self._running)

    def _store(self, task: asyncio.Task[list[dict[str, Any]]]) -> None:
        self._running = None
        if not task.cancelled() and task.exception() is None:
            self._cached, self._cached_at = task.result(), time.monotonic()

    async def health(self) -> dict[str, Any]:
        """The `ollama` component of `/health`."""
        nodes = await self.health_nodes()
        up = sum(1 for node in nodes if node["status"] == "up")
        status = HEALTHY if up == len(nodes) else (UNHEALTHY if up == 0 else DEGRADED)
        return {"status": status, "nodes": nodes}

    def close(self) -> None:
        if self._running is not None:
            self._running.cancel()
