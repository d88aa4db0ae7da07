"""Create this app's HTTP statistics; keep multi-process Prometheus files tidy."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from ollama_web.core.config import Settings
from ollama_web.metrics.http import HttpStats
from ollama_web.metrics.middleware import STATE_ATTRIBUTE
from ollama_web.metrics.prometheus import mark_this_process_dead, prometheus


@asynccontextmanager
async def metrics_lifespan(app: FastAPI) -> AsyncIterator[None]:
    settings: Settings = app.state.settings
    if not settings.metrics_enabled:
        yield
        return
    prometheus()
    setattr(app.state, STATE_ATTRIBUTE, HttpStats(settings.slow_request_ms))
    try:
        yield
    finally:
        setattr(app.state, STATE_ATTRIBUTE, None)
        mark_this_process_dead()
