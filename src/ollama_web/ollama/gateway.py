"""`OllamaGateway`: the one facade other domains use to talk to Ollama.

Created by the gateway lifespan (`ollama_web.ollama.lifespan`) and stored at
`app.state.gateway`; routes get it through `GatewayDep`. Every method validates model names
before any upstream call and raises only our own errors (`ollama_web.ollama.errors`).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import httpx

from ollama_web.core.config import Settings
from ollama_web.core.errors import AppError, ValidationError
from ollama_web.ollama.chat import ChatStream
from ollama_web.ollama.chunks import ChatChunk
from ollama_web.ollama.errors import ModelNotFoundError, OllamaError, OllamaUnavailableError
from ollama_web.ollama.fields import strings
from ollama_web.ollama.inventory import Inventory, NodeReport, require_a_node_up
from ollama_web.ollama.names import validate_model_name
from ollama_web.ollama.nodes import Node, NodeRegistry
from ollama_web.ollama.probe import Prober
from ollama_web.ollama.pull import PullJob, PullManager, PullSubscription
from ollama_web.ollama.pull_cancels import HostPullCancels, PullCancels
from ollama_web.ollama.routing import Router, not_found_or_unreachable
from ollama_web.ollama.transport import Upstream


@dataclass(frozen=True, slots=True)
class ShownModel:
    name: str
    """`name:tag` as the answering node spells it."""
    node_url: str
    info: dict[str, Any]
    """The node's `/api/show` answer, as is."""


def chat_body(
    model: str,
    messages: list[dict[str, Any]],
    *,
    stream: bool,
    options: dict[str, Any] | None = None,
    think: bool | str | None = None,
    keep_alive: str | int | None = None,
    tools: list[dict[str, Any]] | None = None,
    response_format: str | dict[str, Any] | None = None,
) -> dict[str, Any]:
    """An `/api/chat` request; `stream` is always explicit (Ollama defaults it to true)."""
    body: dict[str, Any] = {"model": model, "messages": messages, "stream": stream}
    optional = {
        "options": options or None,
        "think": think,
        "keep_alive": keep_alive,
        "tools": tools or None,
        "format": response_format,
    }
    body.update({key: value for key, value in optional.items() if value is not None})
    return body


class OllamaGateway:
    def __init__(self, settings: Settings, client: httpx.AsyncClient) -> None:
        self.settings = settings
        self.client = client
        self.registry = NodeRegistry(list(settings.ollama_url))
        self.upstream = Upstream(client, self.registry, settings)
        cache_seconds = settings.ollama_health_cache_seconds
        self.inventory = Inventory(self.upstream, self.registry, cache_seconds)
        self.router = Router(self.registry, self.inventory)
        self.prober = Prober(self.upstream, self.registry, cache_seconds)
        self.pulls = PullManager(self.upstream, self._pull_finished)
        self.pull_cancels: PullCancels | HostPullCancels | None = None
        """Set with REDIS_URL (by the lifespan): cancels reach every process's pulls."""

    async def aclose(self) -> None:
        """Stop background work (pulls, probes). The lifespan closes the client."""
        self.prober.close()
        self.inventory.close()
        await self.pulls.close()

    # ------------------------------------------------------------------ chat

    def open_chat(
        self,
        model: str,
        messages: list[dict[str, Any]],
        *,
        options: dict[str, Any] | None = None,
        think: bool | str | None = None,
        keep_alive: str | int | None = None,
        tools: list[dict[str, Any]] | None = None,
        response_format: str | dict[str, Any] | None = None,
        on_sent: Callable[[], None] | None = None,
    ) -> ChatStream:
        """A streamed chat; enter it with `async with` (see `ChatStream`).

        Images go inside the messages (`"images": [base64, ...]`). Invalid name → 422 here.
        `on_sent` is called when the request is written to a node (each node tried).
        """
        name = validate_model_name(model)

        async def send(node: Node, node_model: str) -> httpx.Response:
            body = chat_body(
                node_model,
                messages,
                stream=True,
                options=options,
                think=think,
                keep_alive=keep_alive,
                tools=tools,
                response_format=response_format,
            )
            return await self.upstream.open_stream(
                node, "/api/chat", body, model=model, on_sent=on_sent
            )

        async def opener() -> tuple[Node, httpx.Response]:
            return await self.router.attempt(name, model, send)

        return ChatStream(opener, self.router.release, self.registry.note_error)

    async def chat_once(
        self,
        model: str,
        messages: list[dict[str, Any]],
        *,
        options: dict[str, Any] | None = None,
        think: bool | str | None = None,
        keep_alive: str | int | None = None,
    ) -> ChatChunk:
        """A non-streamed chat (`stream: false`): the whole answer as one done chunk."""
        name = validate_model_name(model)

        async def send(node: Node, node_model: str) -> httpx.Response:
            body = chat_body(
                node_model,
                messages,
                stream=False,
                options=options,
                think=think,
                keep_alive=keep_alive,
            )
            return await self.upstream.request(
                node,
                "POST",
                "/api/chat",
                body=body,
                timeouts=self.upstream.generation_timeout,
                model=model,
                measure=False,
            )

        node, response = await self.router.attempt(name, model, send)
        self.router.release(node)
        try:
            payload = response.json()
        except ValueError:
            raise OllamaError(upstream_message="the chat answer is not JSON") from None
        if not isinstance(payload, dict):
            raise OllamaError(upstream_message="the chat answer is not a JSON object")
        chunk = ChatChunk.from_object(payload)
        if not chunk.done:
            raise OllamaError(upstream_message="the chat answer is not complete")
        return chunk

    async def resolve_model(self, name: str) -> str:
        """The model's `name:tag` as a reachable node lists it."""
        parsed = validate_model_name(name)
        nodes = await self.router.candidates(parsed, name)
        return nodes[0].display_name(parsed.key)

    def lacks_capability(self, name: str, capability: str) -> bool:
        """True when every node holding `name` lists its capabilities (from the cached
        `/api/tags`; older Ollama leaves them out) and none lists `capability`."""
        key = validate_model_name(name).key
        holders = self.inventory.holders(key)
        listed = [strings(node.models[key].get("capabilities")) for node in holders]
        return bool(listed) and all(listed) and not any(capability in c for c in listed)

    # ---------------------------------------------------------------- models

    async def list_models(
        self, *, force: bool = False
    ) -> tuple[list[dict[str, Any]], list[NodeReport]]:
        """Models of every reachable node merged by canonical name, and a report per node."""
        return await self.inventory.merged(force=force)

    async def show_model(self, name: str) -> ShownModel:
        """`/api/show` from a node holding the model."""
        parsed = validate_model_name(name, "name")

        async def show(node: Node, node_model: str) -> httpx.Response:
            return await self.upstream.request(
                node, "POST", "/api/show", body={"model": node_model}, model=name
            )

        node, response = await self.router.attempt(parsed, name, show)
        self.router.release(node)
        try:
            payload = response.json()
        except ValueError:
            raise OllamaError(upstream_message="the show answer is not JSON") from None
        if not isinstance(payload, dict):
            raise OllamaError(upstream_message="the show answer is not a JSON object")
        return ShownModel(node.display_name(parsed.key), node.url, payload)

    async def running_models(self) -> tuple[list[tuple[str, dict[str, Any]]], list[NodeReport]]:
        """`/api/ps` of every reachable node: (node url, entry) pairs and node reports."""
        reports = await self.inventory.refresh(loaded=True, force=True)
        require_a_node_up(reports)
        up = {report.url for report in reports if report.status == "up"}
        results = await asyncio.gather(
            *(self._ps(node) for node in self.registry.nodes if node.url in up)
        )
        return [pair for pairs in results for pair in pairs], reports

    async def _ps(self, node: Node) -> list[tuple[str, dict[str, Any]]]:
        try:
            response = await self.upstream.request(node, "GET", "/api/ps")
            payload = response.json()
        except (AppError, ValueError):
            return []
        models = payload.get("models") if isinstance(payload, dict) else None
        return [(node.url, m) for m in models or [] if isinstance(m, dict)]

    async def delete_model(self, name: str, *, node_url: str | None = None) -> list[str]:
        """Delete the model from every node holding it (or from `node_url`); the node URLs."""
        parsed = validate_model_name(name, "name")
        if node_url is not None:
            node_url = self._known_node(node_url).url
        reports = await self.inventory.refresh(force=True)
        holders = [n for n in self.inventory.holders(parsed.key) if node_url in (None, n.url)]
        if not holders:
            # Nobody could say whether it is there, or a node that is down held it: not a 404.
            scope = [r for r in reports if node_url in (None, r.url)]
            if node_url is not None and scope[0].status != "up":
                raise OllamaUnavailableError(
                    f"The Ollama node {node_url} is not reachable.",
                    details={"nodes": [report.as_dict() for report in scope]},
                )
            require_a_node_up(scope)
            nodes = [node for node in self.registry.nodes if node_url in (None, node.url)]
            raise not_found_or_unreachable(nodes, scope, parsed, name)
        results = await asyncio.gather(
            *(self._delete_on(node, node.display_name(parsed.key)) for node in holders),
            return_exceptions=True,
        )
        self.registry.invalidate()
        outcomes = list(zip(holders, results, strict=True))
        # A node that says the model is not there (deleted meanwhile) has it deleted too.
        deleted = [node.url for node, result in outcomes if _gone(result)]
        failed = [
            (node.url, result)
            for node, result in outcomes
            if isinstance(result, BaseException) and not _gone(result)
        ]
        if not failed:
            return deleted
        # Not a 204 while a copy is left somewhere: the first node's error, saying where the
        # model went and where it stayed.
        error = failed[0][1]
        if not isinstance(error, AppError):
            raise error
        error.details = {
            **error.details,
            "deleted": deleted,
            "failed": [{"node": url, **_described(exc)} for url, exc in failed],
        }
        raise error

    async def _delete_on(self, node: Node, node_model: str) -> None:
        # 200 with an EMPTY body: never parse it.
        await self.upstream.request(
            node, "DELETE", "/api/delete", body={"model": node_model}, model=node_model
        )

    async def copy_model(self, source: str, destination: str) -> str:
        """Copy a model on the node holding it (200 with an empty body); the node URL."""
        parsed = validate_model_name(source, "source")
        target = validate_model_name(destination, "destination")

        async def copy(node: Node, node_model: str) -> None:
            body = {"source": node_model, "destination": target.display}
            await self.upstream.request(node, "POST", "/api/copy", body=body, model=source)

        node, _ = await self.router.attempt(parsed, source, copy)
        self.router.release(node)
        self.registry.invalidate(node)
        return node.url

    async def pull_model(self, name: str, *, node_url: str | None = None) -> PullSubscription:
        """Start (or join) a pull; returns once the upstream accepted it (see `pull`)."""
        parsed = validate_model_name(name, "name")
        if node_url is not None:
            node = self._known_node(node_url)
        else:
            reports = await self.inventory.refresh()
            require_a_node_up(reports)
            node = self._known_node(next(r.url for r in reports if r.status == "up"))
        return await self.pulls.start(node, parsed, name)

    async def cancel_pull(
        self, name: str, *, node_url: str | None = None
    ) -> tuple[int, int, str | None]:
        """End the pulls of `name` (on `node_url`, or on every node): (how many this process
        ended, how many other processes were told; the node's URL as configured)."""
        key = validate_model_name(name, "name").key
        if node_url is not None:
            node_url = self._known_node(node_url).url  # as the running pulls name it
        ended = self.pulls.cancel(key, node_url)
        told = 0
        if self.pull_cancels is not None:
            told = max(0, await self.pull_cancels.publish(key, node_url) - 1)  # not this one
        return ended, told, node_url

    def _pull_finished(self, job: PullJob) -> None:
        self.registry.invalidate(job.node)

    # ----------------------------------------------------------------- nodes

    def _known_node(self, node_url: str) -> Node:
        """The configured node at `node_url`; 422 for any other URL."""
        node = self.registry.get(node_url)
        if node is None:
            raise ValidationError(
                "Unknown Ollama node.", details={"node": node_url, "nodes": self.node_urls}
            )
        return node

    @property
    def node_urls(self) -> list[str]:
        return [node.url for node in self.registry.nodes]

    async def test_nodes(self) -> list[dict[str, Any]]:
        """A fresh reachability test of every node (connect + list timeouts)."""
        settings = self.settings
        bound = settings.ollama_connect_timeout_seconds + settings.ollama_list_timeout_seconds
        return await self.prober.probe_all(self.upstream.list_timeout, bound + 0.5)

    async def node_states(self) -> list[dict[str, Any]]:
        """Per-node state for admins (refreshing the cached health probe if it is stale)."""
        await self.prober.health_nodes()
        return self.registry.snapshot()

    async def health_check(self) -> dict[str, Any]:
        """The `ollama` component of `/health` (cached, bounded; never hangs)."""
        return await self.prober.health()


def _gone(result: BaseException | None) -> bool:
    return result is None or isinstance(result, ModelNotFoundError)


def _described(exc: BaseException) -> dict[str, Any]:
    """An upstream failure as `details` lists it: code, message and the node's own words."""
    if isinstance(exc, AppError):
        return {"error": exc.code, "message": exc.message, **exc.details}
    return {"error": type(exc).__name__, "message": str(exc)}
