"""`RegistryDep`: this process's `GenerationRegistry` (built by the chat lifespan)."""

from __future__ import annotations

from typing import Annotated, cast

from fastapi import Depends, Request

from ollama_web.chat.registry import GenerationRegistry


async def get_registry(request: Request) -> GenerationRegistry:
    return cast(GenerationRegistry, request.app.state.generations)


RegistryDep = Annotated[GenerationRegistry, Depends(get_registry)]
