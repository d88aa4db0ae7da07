"""Local fixtures for the emulator's own tests."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest

from ollama_web.emulator import OllamaEmulator
from ollama_web.emulator.testing import running_emulator


@pytest.fixture
async def emu() -> AsyncIterator[OllamaEmulator]:
    async with running_emulator() as emulator:
        yield emulator


@pytest.fixture
async def client(emu: OllamaEmulator) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=emu.url, timeout=5.0) as http:
        yield http
