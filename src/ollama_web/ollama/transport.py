"""The one pooled `httpx.AsyncClient` and the requests we send to a node.

We build every upstream request from scratch: no header of our own client's request is ever
forwarded (so never `Origin`), and `Host` is the node's own (httpx derives it from the node
URL), which is what Ollama's DNS-rebinding guard wants. Each call records the node's state
and translates failures (see `errors`).
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from typing import Any

import httpx

from ollama_web import __version__
from ollama_web.core.config import Settings
from ollama_web.core.errors import AppError
from ollama_web.ollama.errors import (
    ModelNotFoundError,
    OllamaError,
    describe_decoding_error,
    describe_transport_error,
    error_from_response,
    error_from_transport,
)
from ollama_web.ollama.http11 import HEAD_TIMEOUT_EXTENSION, SENT_EXTENSION, Http11Transport
from ollama_web.ollama.nodes import Node, NodeRegistry

JSON_HEADERS = {"Accept": "application/json"}
# Streamed lines must not wait in a compressor's buffer, and are read without a decoder.
NDJSON_HEADERS = {"Accept": "application/x-ndjson", "Accept-Encoding": "identity"}
MAX_ERROR_BODY_BYTES = 64 * 1024
PROBE_TIMEOUT_SECONDS = 1.5
KEEPALIVE_EXPIRY_SECONDS = 60.0


class _NoCookies(httpx.Cookies):
    """A cookie jar that stays empty."""

    def extract_cookies(self, response: httpx.Response) -> None:
        return None

    def set(self, name: str, value: str, domain: str = "", path: str = "/") -> None:
        raise TypeError("the upstream client keeps no cookies")


class UpstreamClient(httpx.AsyncClient):
    """httpx's client without a cookie jar. Ollama sets no cookies, and one a node did set
    must not ride along on every user's requests through the shared client; reading
    `Set-Cookie` from each response also cost ~3 % of the server's CPU per chat."""

    _no_cookies = _NoCookies()

    @property
    def cookies(self) -> httpx.Cookies:
        return self._no_cookies

    @cookies.setter
    def cookies(self, cookies: Any) -> None:
        if cookies:
            raise TypeError("the upstream client keeps no cookies")


def build_client(settings: Settings) -> httpx.AsyncClient:
    """The process-wide client: explicit pool limits, a short connect timeout and a read
    timeout long enough for a cold model load (headers only come with the first token)."""
    limits = httpx.Limits(
        max_connections=settings.ollama_max_connections,
        max_keepalive_connections=settings.ollama_max_connections,
        keepalive_expiry=KEEPALIVE_EXPIRY_SECONDS,
    )
    timeout = httpx.Timeout(
        connect=settings.ollama_connect_timeout_seconds,
        read=settings.ollama_timeout_seconds,
        write=settings.ollama_timeout_seconds,
        pool=settings.ollama_connect_timeout_seconds,
    )
    return UpstreamClient(
        transport=Http11Transport(limits, lambda: httpx.create_ssl_context(trust_env=False)),
        timeout=timeout,
        headers={"User-Agent": f"ollama-web/{__version__}"},
        follow_redirects=False,
        trust_env=False,
    )


class Upstream:
    """Requests to one node at a time, with node bookkeeping and error translation."""

    def __init__(self, client: httpx.AsyncClient, registry: NodeRegistry, settings: Settings):
        self.client = client
        self.registry = registry
        connect = settings.ollama_connect_timeout_seconds
        listing = settings.ollama_list_timeout_seconds
        self.generation_timeout = client.timeout
        self.list_timeout = httpx.Timeout(listing, connect=connect, pool=connect)
        probe = min(listing, PROBE_TIMEOUT_SECONDS)
        self.probe_timeout = httpx.Timeout(probe, connect=min(connect, probe))
        self._urls: dict[str, httpx.URL] = {}
        # The client's headers merged with ours once for each kind of request, not for every
        # request as `build_request` does (half of building one: 10.7 against 20 us).
        self._headers: dict[tuple[bool, bool], httpx.Headers] = {}
        for stream in (False, True):
            for with_body in (False, True):
                headers = httpx.Headers(client.headers)
                headers.update(NDJSON_HEADERS if stream else JSON_HEADERS)
                if with_body:
                    headers["Content-Type"] = "application/json"
                self._headers[stream, with_body] = headers

    def _build(
        self, node: Node, method: str, path: str, body: Any, timeout: httpx.Timeout, stream: bool
    ) -> httpx.Request:
        """What `client.build_request(method, url, json=body, headers=..., timeout=timeout)`
        builds (the client has no base URL, parameters or cookies to merge)."""
        address = node.address + path
        url = self._urls.get(address)
        if url is None:  # parsing a URL is a third of building a request: once per address
            url = self._urls[address] = httpx.URL(address)
        content = None
        if body is not None:  # as httpx encodes `json=`
            text = json.dumps(body, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
            content = text.encode()
        return httpx.Request(
            method,
            url,
            headers=self._headers[stream, content is not None],
            content=content,
            extensions={"timeout": timeout.as_dict()},
        )

    def _transport_failure(
        self, node: Node, exc: httpx.TransportError, *, timeout_means_down: bool
    ) -> AppError:
        if isinstance(exc, httpx.PoolTimeout):
            return error_from_transport(exc)  # our own pool is full: says nothing of the node
        description = describe_transport_error(exc)
        connect_failed = isinstance(exc, httpx.ConnectError | httpx.ConnectTimeout)
        if connect_failed or (timeout_means_down and isinstance(exc, httpx.TimeoutException)):
            self.registry.mark_down(node, description)
        else:
            self.registry.note_error(node, description)
        return error_from_transport(exc)

    async def request(
        self,
        node: Node,
        method: str,
        path: str,
        *,
        body: Any = None,
        timeouts: httpx.Timeout | None = None,
        model: str | None = None,
        measure: bool = True,
    ) -> httpx.Response:
        """Send and read the whole answer; a 2xx response or a translated error.

        With `measure` the round trip becomes the node's latency, and a timeout marks the
        node down (listing and probe calls, whose timeouts are short). The read timeout
        bounds each wait for bytes; the whole request is bounded too (the pool, connect and
        read timeouts together), so that a node that trickles its answer a byte at a time
        costs no more than one that sends nothing.
        """
        timeouts = timeouts or self.list_timeout
        request = self._build(node, method, path, body, timeouts, False)
        node.requests_total += 1
        started = time.perf_counter()
        try:
            async with asyncio.timeout(_whole(timeouts)):
                response = await self.client.send(request)
        except httpx.TransportError as exc:
            raise self._transport_failure(node, exc, timeout_means_down=measure) from exc
        except httpx.DecodingError as exc:
            raise self._undecodable(node, exc) from exc
        except TimeoutError:
            slow = httpx.ReadTimeout("the whole answer took too long")
            raise self._transport_failure(node, slow, timeout_means_down=True) from None
        latency = (time.perf_counter() - started) * 1000 if measure else None
        self.registry.mark_up(node, latency_ms=latency)
        if not response.is_success:
            error = error_from_response(
                response.status_code, response.headers, response.content, model=model
            )
            if not isinstance(error, ModelNotFoundError):  # not a model it lacks
                self._note_answer(node, response.status_code, error)
            raise error
        return response

    def _undecodable(self, node: Node, exc: httpx.DecodingError) -> AppError:
        description = describe_decoding_error(exc)
        self.registry.note_error(node, description)
        return OllamaError(upstream_message=description)

    async def open_stream(
        self,
        node: Node,
        path: str,
        body: Any,
        *,
        model: str | None = None,
        on_sent: Callable[[], None] | None = None,
        quick_head: bool = False,
    ) -> httpx.Response:
        """Send and wait for the headers only; the caller reads (and closes) the body.
        `on_sent` is called once the request is written (with our transport; with another,
        not at all). `quick_head`: the node writes the head at once (a pull does, with its
        first line; a chat only with its first token), so a node that sends none within
        the list timeout is not answering (with our transport)."""
        request = self._build(node, "POST", path, body, self.generation_timeout, True)
        if on_sent is not None:
            request.extensions[SENT_EXTENSION] = on_sent
        if quick_head:
            request.extensions[HEAD_TIMEOUT_EXTENSION] = self.list_timeout.read
        node.requests_total += 1
        try:
            response = await self.client.send(request, stream=True)
        except httpx.TransportError as exc:
            raise self._transport_failure(node, exc, timeout_means_down=False) from exc
        self.registry.mark_up(node)
        if response.is_success:
            return response
        try:
            # An error body is short: read it as a listing's answer, not a generation's (a
            # node that never ends a 500's body must not hold the chat for the read timeout).
            async with asyncio.timeout(self.list_timeout.read):
                content = await _read_capped(response)
        except (httpx.TransportError, httpx.DecodingError, TimeoutError):
            content = b""
        finally:
            await response.aclose()
        error = error_from_response(response.status_code, response.headers, content, model=model)
        if not isinstance(error, ModelNotFoundError):
            self._note_answer(node, response.status_code, error)
        raise error

    def _note_answer(self, node: Node, status: int, error: AppError) -> None:
        """The node's own words when it gave any (ours say only "Ollama returned an error")."""
        said = error.details.get("upstream_message") if error.details else None
        self.registry.note_error(node, f"HTTP {status}: {said or error.message}")


def _whole(timeouts: httpx.Timeout) -> float | None:
    """A bound on a whole request: its pool, connect and read timeouts together."""
    parts = (timeouts.pool, timeouts.connect, timeouts.read)
    return None if None in parts else sum(p for p in parts if p is not None)


async def _read_capped(response: httpx.Response) -> bytes:
    content = bytearray()
    async for chunk in response.aiter_bytes():
        content += chunk
        if len(content) >= MAX_ERROR_BODY_BYTES:
            break
    return bytes(content[:MAX_ERROR_BODY_BYTES])
