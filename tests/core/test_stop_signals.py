"""`on_stop_signal`: the app hears a stop signal after the server that handles it."""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import Iterator
from types import FrameType

import pytest

from ollama_web.core.stop_signals import on_stop_signal


class FakeServer:
    def __init__(self) -> None:
        self.signals: list[int] = []

    def handle_exit(self, signum: int, frame: FrameType | None) -> None:
        self.signals.append(signum)


@pytest.fixture
def server() -> Iterator[FakeServer]:
    """A server's handler for SIGTERM, as uvicorn installs it (the runner's is put back)."""
    fake = FakeServer()
    previous = signal.signal(signal.SIGTERM, fake.handle_exit)
    yield fake
    signal.signal(signal.SIGTERM, previous)


async def test_each_signal_reaches_the_server_then_the_app_counted(server: FakeServer) -> None:
    heard: list[int] = []
    remove = on_stop_signal(heard.append)
    for _ in range(2):
        os.kill(os.getpid(), signal.SIGTERM)
        await asyncio.sleep(0.05)
    assert server.signals == [signal.SIGTERM, signal.SIGTERM]
    assert heard == [1, 2]
    remove()
    assert signal.getsignal(signal.SIGTERM) == server.handle_exit


async def test_nothing_is_installed_without_a_server_handling_the_signals() -> None:
    before = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)}
    remove = on_stop_signal(lambda _: None)
    assert {s: signal.getsignal(s) for s in before} == before
    remove()


async def test_a_handler_installed_since_is_left_in_place(server: FakeServer) -> None:
    remove = on_stop_signal(lambda _: None)
    other = FakeServer()
    signal.signal(signal.SIGTERM, other.handle_exit)
    remove()
    assert signal.getsignal(signal.SIGTERM) == other.handle_exit


async def test_off_the_main_thread_nothing_is_installed(server: FakeServer) -> None:
    loop = asyncio.get_running_loop()

    def in_thread() -> object:
        async def install() -> object:
            on_stop_signal(lambda _: None)
            return signal.getsignal(signal.SIGTERM)

        return asyncio.run(install())

    assert await loop.run_in_executor(None, in_thread) == server.handle_exit


async def test_apps_parts_chain_one_after_another(server: FakeServer) -> None:
    heard: list[str] = []
    remove_first = on_stop_signal(lambda n: heard.append(f"first {n}"))
    remove_second = on_stop_signal(lambda n: heard.append(f"second {n}"))
    os.kill(os.getpid(), signal.SIGTERM)
    await asyncio.sleep(0.05)
    assert server.signals == [signal.SIGTERM]
    assert sorted(heard) == ["first 1", "second 1"]
    remove_second()
    remove_first()
    assert signal.getsignal(signal.SIGTERM) == server.handle_exit
