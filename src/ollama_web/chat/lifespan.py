"""The chat lifespan: abandoned answers swept at start and then periodically (see `leases`),
the generation registry (the relay to the other processes and the per-user limit they
share: those of this host through DATA_DIR, and with REDIS_URL those of every host through
Redis, the host's still serving while Redis is down), the title writer, and a shutdown
that lets running generations store what they have."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from ollama_web.chat import leases
from ollama_web.chat.generation import COMPLETE, Generation
from ollama_web.chat.host_relay import DIRECTORY_NAME as RELAY_DIRECTORY
from ollama_web.chat.host_relay import HostRelay
from ollama_web.chat.host_slots import DIRECTORY_NAME, HostSlots
from ollama_web.chat.registry import GenerationRegistry
from ollama_web.chat.relay import GenerationRelay
from ollama_web.chat.slots import SharedSlots
from ollama_web.conversations.titles import TITLE_DEFER_SECONDS, TitleWriter
from ollama_web.conversations.writes import Writes
from ollama_web.core.state import SOLE_SERVER_SINCE, CoreState
from ollama_web.core.stop_signals import on_stop_signal
from ollama_web.ollama.gateway import OllamaGateway


@asynccontextmanager
async def chat_lifespan(app: FastAPI) -> AsyncIterator[None]:
    core: CoreState = app.state.core
    gateway: OllamaGateway = app.state.gateway
    checkpoint_seconds = core.settings.generation_checkpoint_seconds
    # Alone on the database, every answer left unfinished is a dead process's: at once.
    stale = leases.stale_seconds(checkpoint_seconds)
    await leases.sweep(core.sessionmaker, stale, before=getattr(app.state, SOLE_SERVER_SINCE, None))
    writes = Writes(core.engine, core.inline)

    def on_complete(generation: Generation) -> None:
        spec = generation.spec
        if spec.title_source is not None and generation.status == COMPLETE:
            titles.schedule(spec.user_id, spec.conversation_id, spec.model, spec.title_source)

    registry = GenerationRegistry(core.settings, writes, gateway, on_complete)
    titles = TitleWriter(
        gateway, writes, lambda: registry.wait_for_first_outputs(TITLE_DEFER_SECONDS)
    )
    app.state.generations = registry
    # The host's processes share slots and relay through DATA_DIR in any case; with Redis,
    # across hosts too, and the host's carriers still serve while Redis is down.
    if HostSlots.supported():
        registry.host_slots = HostSlots(core.settings.data_dir / DIRECTORY_NAME)
    host_relay = await HostRelay.open(
        core.settings.data_dir / RELAY_DIRECTORY, registry, core.settings.sse_keepalive_seconds
    )
    if core.settings.redis_url:
        relay = GenerationRelay(
            core.settings.redis_url, registry, core.settings.sse_keepalive_seconds
        )
        relay.fallback = host_relay
        relay.start()
        registry.relay = relay
        registry.slots = SharedSlots(
            core.settings.redis_url, leases.stale_seconds(checkpoint_seconds)
        )
    else:
        registry.relay = host_relay
    forget_stop_signal = on_stop_signal(registry.stop_signal)
    keeper = asyncio.get_running_loop().create_task(
        leases.keep_leases(
            core.sessionmaker,
            checkpoint_seconds,
            registry.heartbeat,
            lambda: registry.running_ids,
            registry.stop_ownerless,
        ),
        name="generation-leases",
    )
    try:
        yield
    finally:
        forget_stop_signal()
        keeper.cancel()
        await asyncio.gather(keeper, return_exceptions=True)
        # The answers end first (interrupted, with their text), so that clients following
        # them through another process still get that last event before the relay closes.
        await registry.shutdown()
        if registry.relay is not None:
            await registry.relay.aclose()
        if registry.slots is not None:
            await registry.slots.aclose()
        if registry.host_slots is not None:
            registry.host_slots.close()
        await titles.aclose()
        await writes.aclose()
