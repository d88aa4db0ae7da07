"""`create_app(settings)` builds the application; the lifespan owns every resource."""

from __future__ import annotations

import gc
import importlib
import logging
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, AsyncExitStack, asynccontextmanager
from typing import Any

from fastapi import FastAPI
from starlette.types import Message, Receive, Scope, Send

from ollama_web import __version__
from ollama_web.chat.sse import SERVER_SEND
from ollama_web.core.config import Settings
from ollama_web.core.db import create_engine, create_sessionmaker
from ollama_web.core.directories import prepare_directories
from ollama_web.core.errors import install_error_handlers
from ollama_web.core.logging import configure_logging
from ollama_web.core.secrets import load_or_create_secret
from ollama_web.core.sqlite_checkpoint import Checkpointer
from ollama_web.core.sqlite_inline import open_inline
from ollama_web.core.startup import startup_failure
from ollama_web.core.state import CoreState
from ollama_web.docs.openapi import install_openapi
from ollama_web.metrics.middleware import MetricsMiddleware
from ollama_web.middleware.body_limit import BodyLimitMiddleware
from ollama_web.middleware.cors import CORSMiddleware
from ollama_web.middleware.head import HeadAsGetMiddleware
from ollama_web.middleware.input_guard import InputGuardMiddleware
from ollama_web.middleware.request_context import RequestContextMiddleware
from ollama_web.middleware.security_headers import SecurityHeadersMiddleware, cors_options
from ollama_web.ratelimit.dependencies import RateLimitDep
from ollama_web.ratelimit.middleware import RateLimitHeadersMiddleware

logger = logging.getLogger("ollama_web")

YOUNG_COLLECTION_THRESHOLD = 7000
"""Allocations between two sweeps of the youngest generation (Python's default: 700). Each
sweep walks the young objects still alive, most of them the open streams' (the suspended
coroutines and closures of each one's middleware chain, ~380 a stream), so its length is
bounded by what is alive, not by this number: ten times fewer sweeps cost less than half
the collector's time. Measured under the steady bench load (50 streams), 20 s: 50-59 ms of
collection against 133-140, and the longest pause 8-11 ms against 11-12 (20 000: 29-47 ms,
but pauses up to 24 ms)."""

# Each domain that owns long-lived resources contributes one async context manager factory,
# entered in order after the core (database) is up and exited in reverse order.
DomainLifespan = Callable[[FastAPI], AbstractAsyncContextManager[None]]


# Held from before the database is opened until after it is closed: `ollama-web restore`
# (which replaces the database file) refuses while a server holds it.
SERVER_LOCK_LIFESPAN = "ollama_web.backups.lifespan:server_lock_lifespan"

# "module:attribute" of each domain lifespan, entered in this order (one line each).
LIFESPAN_FACTORIES: tuple[str, ...] = (
    "ollama_web.migrations.startup:migrate_on_startup",
    "ollama_web.backups.lifespan:backup_lifespan",
    "ollama_web.ratelimit.lifespan:rate_limit_lifespan",
    "ollama_web.metrics.lifespan:metrics_lifespan",
    "ollama_web.auth.context:auth_lifespan",
    "ollama_web.ollama.lifespan:gateway_lifespan",
    "ollama_web.chat.lifespan:chat_lifespan",
)

# Modules exposing `router`, included in this order (one line each).
# Every request is matched against the routes in this order, at ~2 us a route (FastAPI
# tries each in turn): the chat and conversation routes, hit for every message, come first.
# The documentation keeps its reading order (TAG_ORDER).
ROUTER_MODULES: tuple[str, ...] = (
    "ollama_web.chat.router",
    "ollama_web.conversations.router",
    "ollama_web.health.router",
    "ollama_web.info.router",
    "ollama_web.docs.router",
    "ollama_web.metrics.router",
    "ollama_web.backups.router",
    "ollama_web.auth.router",
    "ollama_web.keys.router",
    "ollama_web.admin.router",
    "ollama_web.models.router",
    "ollama_web.ollama.router",
)
TAG_ORDER = (
    "health",
    "monitoring",
    "backups",
    "auth",
    "keys",
    "admin",
    "models",
    "conversations",
    "chat",
)


def _load(path: str) -> Any:
    module_name, _, attribute = path.partition(":")
    module = importlib.import_module(module_name)
    return getattr(module, attribute) if attribute else module


def _domain_lifespans() -> list[DomainLifespan]:
    return [_load(path) for path in LIFESPAN_FACTORIES]


STARTUP_FAILURE = "startup_failure"
"""An app state attribute: the one line saying why the lifespan failed to start (see
`core.startup.startup_failure`), which the server logs instead of a traceback."""


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    started = False
    try:
        async with _lifespan(app):
            started = True
            yield
    except Exception as exc:
        if not started:
            setattr(app.state, STARTUP_FAILURE, startup_failure(app.state.settings, exc))
        raise


@asynccontextmanager
async def _lifespan(app: FastAPI) -> AsyncIterator[None]:
    settings: Settings = app.state.settings
    # The commands that start the server (`serve`, `ollama_web.main:app`) checked them
    # first, to say what is wrong in one line; this is for an app built otherwise.
    prepare_directories(settings)
    configure_logging(settings)
    secret_key = load_or_create_secret(settings)
    # Exited in reverse: the domains, then the database (checkpointer, inline connection,
    # engine), and the server lock last, so a restore never finds this process's handles
    # on the file it replaces.
    async with AsyncExitStack() as stack:
        await stack.enter_async_context(_load(SERVER_LOCK_LIFESPAN)(app))
        engine, slow_queries = create_engine(settings)
        stack.push_async_callback(engine.dispose)
        inline = open_inline(engine, slow_queries)
        if inline is not None:
            stack.callback(inline.close)
            checkpointer = Checkpointer(engine)
            checkpointer.start()
            stack.push_async_callback(checkpointer.stop)
        app.state.core = CoreState(
            settings=settings,
            secret_key=secret_key,
            engine=engine,
            sessionmaker=create_sessionmaker(engine),
            slow_queries=slow_queries,
            inline=inline,
        )
        for factory in _domain_lifespans():
            await stack.enter_async_context(factory(app))
        logger.info("ollama-web %s started (%s)", __version__, settings.environment.value)
        # Everything alive now (modules, the app, pools) lives as long as the process:
        # kept out of the cyclic collector, a full collection no longer walks it all
        # (that walk, ~40 ms, was the tail of requests that allocate a lot). The young
        # generations are swept first (a full sweep here would delay the start).
        gc.collect(1)
        gc.freeze()
        thresholds = gc.get_threshold()
        gc.set_threshold(YOUNG_COLLECTION_THRESHOLD, *thresholds[1:])
        try:
            yield
        finally:
            gc.set_threshold(*thresholds)
            gc.unfreeze()
    logger.info("ollama-web stopped")


class OllamaWebApp(FastAPI):
    """FastAPI, with the server's own `send` in each request's scope (`sse.SERVER_SEND`):
    a streamed answer's tokens go straight to it. Every middleware here looks only at a
    response's start (headers, status), never at its body chunks; one that would must not
    be used with that shortcut.

    The scope holds it only while the request runs: that `send` is a method of uvicorn's
    per-request object, which holds the scope, and the loop they made kept each request's
    state (~35 objects: the scope, its exit stacks, the principal) for the cyclic
    collector, instead of freeing it when the request ended."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await super().__call__(scope, receive, self._startup_failure_in_one_line(send))
            return
        scope[SERVER_SEND] = send
        try:
            await super().__call__(scope, receive, send)
        finally:
            scope.pop(SERVER_SEND, None)

    def _startup_failure_in_one_line(self, send: Send) -> Send:
        """A start that failed for what the server runs on (its database, a file) is
        reported in one line, as the commands say it, not with the traceback Starlette
        puts in the failure message (which the server logs)."""

        async def reporting(message: Message) -> None:
            line = getattr(self.state, STARTUP_FAILURE, None)
            if message["type"] == "lifespan.startup.failed" and line is not None:
                message = {**message, "message": line}
            await send(message)

        return reporting


def _include_routers(app: FastAPI) -> None:
    for module_name in ROUTER_MODULES:
        app.include_router(_load(module_name).router)


def create_app(settings: Settings | None = None) -> FastAPI:
    """Build the application. No I/O happens here; the lifespan does it."""
    settings = settings or Settings()
    app = OllamaWebApp(
        title="Ollama Web",
        version=__version__,
        summary="A secure multi-user web backend for Ollama.",
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
        openapi_tags=[{"name": tag} for tag in TAG_ORDER],
        # Every routed request is rate-limited (after resolving who is calling).
        dependencies=[RateLimitDep],
        # `/api/conversations/` is an unknown route (404), not a redirect built from the
        # request's Host header.
        redirect_slashes=False,
    )
    app.state.settings = settings
    install_error_handlers(app)
    _include_routers(app)
    install_openapi(app)
    # Added innermost first. Security headers are the outermost layer so that even the
    # request context's last-resort 500 carries them; then the request context. HEAD is
    # innermost: every other layer sees the request as it came.
    app.add_middleware(HeadAsGetMiddleware)
    app.add_middleware(InputGuardMiddleware)
    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.max_request_bytes)
    app.add_middleware(RateLimitHeadersMiddleware, settings=settings)
    app.add_middleware(MetricsMiddleware)
    if settings.cors_origins:
        app.add_middleware(CORSMiddleware, **cors_options(settings))
    app.add_middleware(RequestContextMiddleware, settings=settings)
    app.add_middleware(SecurityHeadersMiddleware, settings=settings)
    return app
