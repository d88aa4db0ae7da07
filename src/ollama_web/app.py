"""`create_app(settings)` builds the application; the lifespan owns every resource."""

from __future__ import annotations

import importlib
import logging
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, AsyncExitStack, asynccontextmanager
from typing import Any

from fastapi import FastAPI

from ollama_web import __version__
from ollama_web.core.config import Settings
from ollama_web.core.db import create_engine, create_sessionmaker
from ollama_web.core.errors import install_error_handlers
from ollama_web.core.logging import configure_logging
from ollama_web.core.secrets import load_or_create_secret
from ollama_web.core.state import CoreState
from ollama_web.middleware.body_limit import BodyLimitMiddleware
from ollama_web.middleware.request_context import RequestContextMiddleware

logger = logging.getLogger("ollama_web")

# Each domain that owns long-lived resources contributes one async context manager factory,
# entered in order after the core (database) is up and exited in reverse order.
DomainLifespan = Callable[[FastAPI], AbstractAsyncContextManager[None]]


# "module:attribute" of each domain lifespan, entered in this order (one line each).
LIFESPAN_FACTORIES: tuple[str, ...] = (
    "ollama_web.migrations.runner:migrate_on_startup",
)

# Modules exposing `router`, included in this order (one line each).
ROUTER_MODULES: tuple[str, ...] = (
    "ollama_web.health.router",
    "ollama_web.info.router",
    "ollama_web.docs.router",
)


def _load(path: str) -> Any:
    module_name, _, attribute = path.partition(":")
    module = importlib.import_module(module_name)
    return getattr(module, attribute) if attribute else module


def _domain_lifespans() -> list[DomainLifespan]:
    return [_load(path) for path in LIFESPAN_FACTORIES]


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    settings: Settings = app.state.settings
    configure_logging(settings)
    for directory in (settings.data_dir, settings.log_dir, settings.backup_dir):
        directory.mkdir(parents=True, exist_ok=True)
    secret_key = load_or_create_secret(settings)
    engine, slow_queries = create_engine(settings)
    app.state.core = CoreState(
        settings=settings,
        secret_key=secret_key,
        engine=engine,
        sessionmaker=create_sessionmaker(engine),
        slow_queries=slow_queries,
    )
    try:
        async with AsyncExitStack() as stack:
            for factory in _domain_lifespans():
                await stack.enter_async_context(factory(app))
            logger.info("ollama-web %s started (%s)", __version__, settings.environment.value)
            yield
    finally:
        await engine.dispose()
        logger.info("ollama-web stopped")


def _include_routers(app: FastAPI) -> None:
    for module_name in ROUTER_MODULES:
        app.include_router(_load(module_name).router)


def create_app(settings: Settings | None = None) -> FastAPI:
    """Build the application. No I/O happens here; the lifespan does it."""
    settings = settings or Settings()
    app = FastAPI(
        title="Ollama Web",
        version=__version__,
        summary="A secure multi-user web backend for Ollama.",
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
    )
    app.state.settings = settings
    install_error_handlers(app)
    _include_routers(app)
    # Added innermost first: the request context is the outermost layer.
    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.max_request_bytes)
    app.add_middleware(RequestContextMiddleware)
    return app
