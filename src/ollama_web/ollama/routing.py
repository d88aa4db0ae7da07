"""Choosing a node for a model, and failing over while nothing has reached our client.

Order: nodes that hold the model; among them those that have it loaded (`/api/ps`) first,
then the fewest generations in flight, then configuration order. A node that cannot be
reached (it is marked down with a back-off), answers 503, or no longer has the model is
skipped and the next one tried — this only ever happens before the upstream response
headers, i.e. before any byte went to our own client.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import TypeVar

from ollama_web.core.errors import AppError
from ollama_web.ollama.errors import (
    ModelNotFoundError,
    OllamaBusyError,
    OllamaUnavailableError,
)
from ollama_web.ollama.inventory import Inventory, NodeReport, require_a_node_up
from ollama_web.ollama.names import ModelName
from ollama_web.ollama.nodes import Node, NodeRegistry

T = TypeVar("T")
RETRYABLE = (OllamaUnavailableError, OllamaBusyError, ModelNotFoundError)


class Router:
    def __init__(self, registry: NodeRegistry, inventory: Inventory) -> None:
        self.registry = registry
        self.inventory = inventory

    async def candidates(self, name: ModelName, requested: str) -> list[Node]:
        """Nodes holding the model, best first; raises when there is none."""
        reports = await self.inventory.refresh(loaded=True)
        holders = self.inventory.holders(name.key)
        if not holders:
            # No node answered just now: asking again would only wait as long once more.
            require_a_node_up(reports)
            # The cache may predate a pull: ask again before saying "not found".
            reports = await self.inventory.refresh(force=True, loaded=True)
            holders = self.inventory.holders(name.key)
            if not holders:
                require_a_node_up(reports)
        if not holders:
            raise not_found_or_unreachable(self.registry.nodes, reports, name, requested)
        return sorted(holders, key=lambda n: (name.key not in n.loaded, n.in_flight, n.index))

    async def attempt(
        self,
        name: ModelName,
        requested: str,
        operation: Callable[[Node, str], Awaitable[T]],
    ) -> tuple[Node, T]:
        """Run `operation(node, node_model_name)` on the best node that accepts it.

        On success the node's in-flight count stays raised: the caller must `release` it.
        """
        failures: list[AppError] = []
        for node in await self.candidates(name, requested):
            node.in_flight += 1
            try:
                result = await operation(node, node.display_name(name.key))
            except RETRYABLE as exc:
                node.in_flight -= 1
                if isinstance(exc, ModelNotFoundError):
                    self.registry.invalidate(node)
                failures.append(exc)
                continue
            except BaseException:
                node.in_flight -= 1
                raise
            node.loaded.add(name.key)
            return node, result
        raise _summary(failures, requested)

    @staticmethod
    def release(node: Node) -> None:
        node.in_flight = max(0, node.in_flight - 1)


def not_found_or_unreachable(
    nodes: Sequence[Node], reports: Sequence[NodeReport], name: ModelName, requested: str
) -> AppError:
    """No reachable node holds the model. When a node that is down held it when last seen,
    the model is there but out of reach for now: OLLAMA_UNAVAILABLE (a chat keeps the
    user's message), not MODEL_NOT_FOUND."""
    away = {node.url for node in nodes if node.status == "down" and name.key in node.models}
    if not away:
        return ModelNotFoundError(requested)
    return OllamaUnavailableError(
        f"The Ollama node holding {requested} is not reachable.",
        details={
            "model_name": requested,
            "nodes": [report.as_dict() for report in reports if report.url in away],
        },
    )


def _summary(failures: list[AppError], requested: str) -> AppError:
    """Busy beats unreachable beats not-found: the most actionable error for the client."""
    for kind in (OllamaBusyError, OllamaUnavailableError):
        for failure in failures:
            if isinstance(failure, kind):
                return failure
    return ModelNotFoundError(requested)
