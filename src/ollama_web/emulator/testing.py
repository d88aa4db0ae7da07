"""Helpers for tests: run an emulator for the duration of a block."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from ollama_web.emulator.config import EmulatorConfig
from ollama_web.emulator.server import OllamaEmulator


@asynccontextmanager
async def running_emulator(
    config: EmulatorConfig | None = None, *, host: str = "127.0.0.1", port: int = 0
) -> AsyncIterator[OllamaEmulator]:
    """Start an :class:`OllamaEmulator` on a free port and stop it afterwards.

    Usage in a conftest::

        @pytest.fixture
        async def ollama_emulator():
            async with running_emulator() as emu:
                yield emu
    """
    emu = OllamaEmulator(config, host=host, port=port)
    await emu.start()
    try:
        yield emu
    finally:
        await emu.stop()
