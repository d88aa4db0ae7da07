"""The gateway lifespan: the ONE pooled `httpx.AsyncClient`, the gateway at
`app.state.gateway`, and the `ollama` component of `/health`."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from ollama_web.core.config import Settings
from ollama_web.core.stop_signals import on_stop_signal
from ollama_web.health.service import register_check
from ollama_web.ollama.errors import PullInterruptedError
from ollama_web.ollama.gateway import OllamaGateway
from ollama_web.ollama.pull_cancels import HOST_DIRECTORY_NAME, HostPullCancels, PullCancels
from ollama_web.ollama.transport import build_client


@asynccontextmanager
async def gateway_scope(settings: Settings) -> AsyncIterator[OllamaGateway]:
    """A gateway with its own pooled client, closed on exit (also used by tests, bench)."""
    async with build_client(settings) as client:
        gateway = OllamaGateway(settings, client)
        try:
            yield gateway
        finally:
            await gateway.aclose()


@asynccontextmanager
async def gateway_lifespan(app: FastAPI) -> AsyncIterator[None]:
    settings: Settings = app.state.settings
    async with gateway_scope(settings) as gateway:
        app.state.gateway = gateway
        register_check(app, "ollama", gateway.health_check)
        timers: list[asyncio.TimerHandle] = []

        def stop_signal(received: int) -> None:
            """Pulls still running SHUTDOWN_GRACE_SECONDS later (at once on a second
            signal) end, so that their streams do and the server can exit."""
            grace = settings.shutdown_grace_seconds if received == 1 else 0.0
            loop = asyncio.get_running_loop()
            timers.append(loop.call_later(grace, _interrupt_pulls, gateway))

        forget_stop_signal = on_stop_signal(stop_signal)
        host_cancels = await HostPullCancels.open(
            settings.data_dir / HOST_DIRECTORY_NAME, gateway.pulls.cancel
        )
        if settings.redis_url:
            cancels = PullCancels(settings.redis_url, gateway.pulls.cancel)
            cancels.fallback = host_cancels
            cancels.start()
            gateway.pull_cancels = cancels
        else:
            gateway.pull_cancels = host_cancels
        try:
            yield
        finally:
            forget_stop_signal()
            for timer in timers:
                timer.cancel()
            if gateway.pull_cancels is not None:
                await gateway.pull_cancels.aclose()


def _interrupt_pulls(gateway: OllamaGateway) -> None:
    gateway.pulls.interrupt_all(
        PullInterruptedError(
            "The server is stopping: the pull was interrupted; pull again to resume it."
        )
    )
