"""Create the shared rate-limit storage and the limiter; report Redis in /health."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI

from ollama_web.core.config import Settings
from ollama_web.health.service import HEALTHY, UNHEALTHY, HealthCheck, register_check
from ollama_web.ratelimit.limiter import RateLimiter
from ollama_web.ratelimit.storage import FallbackStorage, build_storage

REDIS_CHECK_TIMEOUT_SECONDS = 1.0


def redis_check(storage: FallbackStorage) -> HealthCheck:
    async def check() -> dict[str, Any]:
        started = time.perf_counter()
        try:
            reachable = await asyncio.wait_for(storage.check(), REDIS_CHECK_TIMEOUT_SECONDS)
        except TimeoutError:
            reachable = False
        latency = round((time.perf_counter() - started) * 1000, 2)
        if reachable:
            return {"status": HEALTHY, "latency_ms": latency, "rate_limits": "shared"}
        host = isinstance(storage.fallback, FallbackStorage)
        return {
            "status": UNHEALTHY,
            "latency_ms": None,
            "rate_limits": "host fallback" if host else "in-process fallback",
            "down_since": storage.down_since,
            "error": storage.last_error,
        }

    return check


@asynccontextmanager
async def rate_limit_lifespan(app: FastAPI) -> AsyncIterator[None]:
    settings: Settings = app.state.settings
    # With several workers their counts meet in a file of DATA_DIR (with Redis: while it is
    # unreachable); one worker counts in memory.
    storage = build_storage(settings.redis_url, settings.data_dir if settings.workers > 1 else None)
    app.state.rate_limit_storage = storage
    app.state.rate_limiter = RateLimiter(settings, storage) if settings.rate_limit_enabled else None
    if settings.redis_url:
        register_check(app, "redis", redis_check(storage))
    try:
        yield
    finally:
        app.state.rate_limiter = None
        await storage.aclose()
