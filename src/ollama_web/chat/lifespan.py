"""The chat lifespan: interrupted answers swept at start, the generation registry and the
title writer, and a shutdown that lets running generations store what they have."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from ollama_web.chat.generation import COMPLETE, Generation
from ollama_web.chat.registry import GenerationRegistry
from ollama_web.conversations import repository
from ollama_web.conversations.titles import TitleWriter
from ollama_web.conversations.writes import Writes
from ollama_web.core.db import session_scope
from ollama_web.core.state import CoreState
from ollama_web.ollama.gateway import OllamaGateway

logger = logging.getLogger("ollama_web.chat")


@asynccontextmanager
async def chat_lifespan(app: FastAPI) -> AsyncIterator[None]:
    core: CoreState = app.state.core
    gateway: OllamaGateway = app.state.gateway
    async with session_scope(core.sessionmaker) as session:
        swept = await repository.mark_unfinished_interrupted(session)
    if swept:
        logger.warning("%d answers left unfinished by a previous run are now interrupted", swept)
    writes = Writes(core.engine)
    titles = TitleWriter(gateway, writes)

    def on_complete(generation: Generation) -> None:
        spec = generation.spec
        if spec.title_source is not None and generation.status == COMPLETE:
            titles.schedule(spec.user_id, spec.conversation_id, spec.model, spec.title_source)

    registry = GenerationRegistry(core.settings, writes, gateway, on_complete)
    app.state.generations = registry
    try:
        yield
    finally:
        await registry.shutdown()
        await titles.aclose()
