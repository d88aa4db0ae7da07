"""Dependencies for the core resources, published as `Annotated` aliases."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Annotated, cast

from fastapi import Depends, Request
from sqlalchemy.ext.asyncio import AsyncSession

from ollama_web.core.config import Settings
from ollama_web.core.db import session_scope
from ollama_web.core.state import CoreState


def core_of(request: Request) -> CoreState:
    return cast(CoreState, request.app.state.core)


# Dependencies are `async def` even when they only read app state: FastAPI runs a plain
# `def` dependency in its thread pool, a thread hop per dependency per request.
async def get_core(request: Request) -> CoreState:
    return core_of(request)


async def get_settings(request: Request) -> Settings:
    return cast(Settings, request.app.state.settings)


async def get_session(request: Request) -> AsyncIterator[AsyncSession]:
    """One request, one transaction: commit on success, roll back on error."""
    async with session_scope(core_of(request).sessionmaker) as session:
        yield session


CoreDep = Annotated[CoreState, Depends(get_core)]
SettingsDep = Annotated[Settings, Depends(get_settings)]
SessionDep = Annotated[AsyncSession, Depends(get_session, scope="function")]
