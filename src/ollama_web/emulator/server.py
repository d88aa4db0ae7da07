"""The emulator server: connection handling, routing and observable state."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import math
import socket
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from ollama_web.emulator import generation, guard, handlers, pull
from ollama_web.emulator.catalog import find_model
from ollama_web.emulator.config import EmulatorConfig, ModelSpec
from ollama_web.emulator.http11 import (
    BadRequest,
    Connection,
    HttpRequest,
    PeerGone,
    Responder,
    read_request,
)
from ollama_web.emulator.wire import ApiError

Handler = Callable[["OllamaEmulator", HttpRequest, Responder], Awaitable[None]]

ROUTES: dict[str, dict[str, Handler]] = {
    "/": {"GET": handlers.root, "HEAD": handlers.root},
    "/api/version": {"GET": handlers.version, "HEAD": handlers.version},
    "/api/tags": {"GET": handlers.tags, "HEAD": handlers.tags},
    "/api/ps": {"GET": handlers.ps},
    "/api/status": {"GET": handlers.status},
    "/api/show": {"POST": handlers.show},
    "/api/delete": {"DELETE": handlers.delete},
    "/api/copy": {"POST": handlers.copy},
    "/api/embed": {"POST": handlers.embed},
    "/api/embeddings": {"POST": handlers.embeddings},
    "/api/chat": {"POST": generation.chat},
    "/api/generate": {"POST": generation.generate},
    "/api/pull": {"POST": pull.pull},
}

BAD_REQUEST = (
    b"HTTP/1.1 400 Bad Request\r\nContent-Type: text/plain; charset=utf-8\r\n"
    b"Connection: close\r\n\r\n400 Bad Request"
)
"""What Go's net/http answers to a request it cannot parse."""

NEVER_EXPIRES = 2**63 / 1e9
"""Seconds Go adds for a negative keep_alive (max time.Duration)."""


@dataclass
class RecordedRequest:
    """A request as the emulator received it."""

    method: str
    path: str
    headers: dict[str, str]
    json: Any = None
    query: str = ""
    body: bytes = b""


@dataclass
class LoadedModel:
    name: str
    expires_at: float
    """Wall-clock seconds; ``math.inf`` for forever."""
    context_length: int = 4096
    loaded_at: float = field(default_factory=time.time)


def _parse_json(body: bytes) -> Any:
    if not body:
        return None
    try:
        return json.loads(body)
    except ValueError:
        return None


async def stop_accepting(server: asyncio.Server) -> None:
    """Stop reading `server`'s listening sockets, then let the connections the loop already
    accepted make their transports: a server closed after this loses none (see
    `close_server`)."""
    loop = asyncio.get_running_loop()
    for sock in server.sockets:
        loop.remove_reader(sock.fileno())
    await asyncio.sleep(0)


async def close_server(
    server: asyncio.Server,
    drop_connections: Callable[[], None],
    timeout: float = 1.0,  # noqa: ASYNC109 - a bound on our own wait, not a network call
) -> None:
    """Close `server`, drop its connections, and wait (up to `timeout`) until every one it
    accepted has ended, without losing one between its accept and its protocol.

    Python's own close() can lose one: a connection the loop accepted, whose transport is
    made a step later, finds the server closed, and that transport is left open, known to
    nobody (an AssertionError in `Server._attach`, swallowed), until the garbage collector
    warns of it, often in another test. Here the listening sockets are no longer read
    first, the accepts under way make their transports, then the server closes; every
    accepted connection still reaches its protocol, whose owner, knowing the server
    stopped, must drop it there. `drop_connections` drops those it knows already. Python
    3.11's wait_closed() waits for the connections only when asked before close()."""
    every_connection_ended = asyncio.ensure_future(server.wait_closed())
    await stop_accepting(server)
    server.close()
    drop_connections()
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(every_connection_ended, timeout)


class OllamaEmulator:
    """A real HTTP server speaking the Ollama API, with knobs and counters for tests."""

    def __init__(
        self, config: EmulatorConfig | None = None, host: str = "127.0.0.1", port: int = 0
    ) -> None:
        self.config = config if config is not None else EmulatorConfig()
        self.host = host
        self.port = port
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._conns: set[Connection] = set()
        self.epoch = time.time()
        self.loaded: dict[str, LoadedModel] = {}
        self.slots_used: dict[str, int] = {}
        """Generations running, per model (each model has ``num_parallel`` slots)."""
        self.decode_origins: dict[str, float] = {}
        """Per model, the instant its decode steps count from (``batched_decode``)."""
        self.slots_waiting: dict[str, int] = {}
        """Generations waiting for a slot, per model (at most ``max_queue``)."""
        self.slot_freed: asyncio.Event | None = None
        self.blobs: dict[str, int] = {}
        """Bytes on disk of each layer (by digest): what a cancelled pull fetched stays."""
        self.downloads: dict[str, pull.Download] = {}
        """The running download of each model being pulled, shared by its pulls."""
        self.reset_counters()

    def reset_counters(self) -> None:
        """Zero every counter and forget recorded requests."""
        self.connections_opened = 0
        self.connections_active = 0
        self.requests: list[RecordedRequest] = []
        self.active_generations = 0
        self.generations_started = 0
        self.generations_completed = 0
        self.generations_cancelled = 0
        self.generations_failed = 0
        self.queue_cancelled = 0
        self.tokens_sent = 0
        self.last_cancelled_at: float | None = None

    # ----------------------------------------------------------------- lifecycle

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    async def start(self) -> None:
        self.slot_freed = asyncio.Event()
        # Ollama's Go listener takes the kernel's limit (somaxconn); asyncio's default, 100,
        # overflowed when a burst of 1000 chats connected at once (SYN retries past the
        # backend's 2 s connect timeout).
        self._server = await asyncio.start_server(
            self._on_connect, self.host, self.port, backlog=socket.SOMAXCONN
        )
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        """Stop listening and drop every open connection, those still being accepted too."""
        server, self._server = self._server, None
        if server is None:
            return
        await close_server(server, self._drop_connections)
        tasks = list(self._tasks)
        if tasks:
            _, pending = await asyncio.wait(tasks, timeout=1.0)
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
        downloads = [download.task for download in self.downloads.values()]
        for task in downloads:
            task.cancel()
        await asyncio.gather(*downloads, return_exceptions=True)

    def _drop_connections(self) -> None:
        for conn in list(self._conns):
            conn.abort()

    async def __aenter__(self) -> OllamaEmulator:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    # ------------------------------------------------------------------- state

    def find_model(self, name: str) -> ModelSpec | None:
        return find_model(self.config.models, name)

    def mark_loaded(self, spec: ModelSpec, keep_alive: float, context_length: int) -> bool:
        """Record that ``spec`` is in memory; returns whether it was loaded before."""
        self._expire()
        was_loaded = spec.name in self.loaded
        expires = time.time() + (NEVER_EXPIRES if math.isinf(keep_alive) else keep_alive)
        self.loaded[spec.name] = LoadedModel(spec.name, expires, context_length)
        return was_loaded

    def unload(self, name: str) -> None:
        self.loaded.pop(name, None)

    def _expire(self) -> None:
        now = time.time()
        for name in [n for n, m in self.loaded.items() if m.expires_at <= now]:
            del self.loaded[name]

    def loaded_models(self) -> list[str]:
        """Names of models currently in memory (as shown by /api/ps)."""
        self._expire()
        return list(self.loaded)

    def note_cancelled(self) -> None:
        self.last_cancelled_at = time.monotonic()

    async def wait_until(
        self,
        predicate: Callable[[], bool],
        timeout: float = 2.0,  # noqa: ASYNC109 - a polling helper, not a network call
        interval: float = 0.002,
    ) -> None:
        """Poll ``predicate`` until it is true; ``TimeoutError`` after ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        while not predicate():
            if time.monotonic() >= deadline:
                raise TimeoutError(f"condition not met within {timeout} s")
            await asyncio.sleep(interval)

    # ------------------------------------------------------------- connections

    def _on_connect(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Called as a connection is accepted (start_server calls a plain function at once,
        where a coroutine would wait for its task's first step): stop() knows the connection
        from its first moment, so one accepted as the server stops is closed with it."""
        conn = Connection(reader, writer)
        if self._server is None:  # accepted as the server stopped
            conn.abort()
            return
        self._conns.add(conn)
        self.connections_opened += 1
        self.connections_active += 1
        task = asyncio.get_running_loop().create_task(self._handle(conn))
        self._tasks.add(task)
        task.add_done_callback(functools.partial(self._handled, conn))

    async def _handle(self, conn: Connection) -> None:
        await self._serve(conn)
        await conn.close()

    def _handled(self, conn: Connection, task: asyncio.Task[None]) -> None:
        self.connections_active -= 1
        self._conns.discard(conn)
        self._tasks.discard(task)
        if task.cancelled():  # only stop() cancels these tasks
            conn.abort()
        elif (exc := task.exception()) is not None:
            conn.abort()
            task.get_loop().call_exception_handler(
                {"message": "the emulator failed serving a connection", "exception": exc}
            )

    async def _serve(self, conn: Connection) -> None:
        while not conn.closed:
            try:
                req = await read_request(conn)
            except BadRequest:
                conn.write(BAD_REQUEST)
                return
            if req is None:
                return
            await self._dispatch(req, conn)
            if not req.keep_alive:
                return

    def _record(self, req: HttpRequest) -> None:
        self.requests.append(
            RecordedRequest(
                method=req.method,
                path=req.path,
                headers=dict(req.headers),
                json=_parse_json(req.body),
                query=req.query,
                body=req.body,
            )
        )

    async def _dispatch(self, req: HttpRequest, conn: Connection) -> None:
        self._record(req)
        resp = Responder(conn, req)
        try:
            if self.config.hang_before_headers:
                await conn.start_watch()
                conn.abort()
                return
            await self._route(req, resp)
        except ApiError as exc:
            if resp.started:
                conn.abort()
            else:
                await resp.error(exc.status, exc.message)
        except PeerGone:
            conn.abort()

    async def _route(self, req: HttpRequest, resp: Responder) -> None:
        if guard.refuses(self.host, req.headers):
            await resp.send(403)
            return
        methods = ROUTES.get(req.path)
        if methods is None:
            await resp.text(404, "404 page not found", "text/plain")
            return
        handler = methods.get(req.method)
        if handler is None:
            await resp.text(405, "405 method not allowed", "text/plain")
            return
        await handler(self, req, resp)
