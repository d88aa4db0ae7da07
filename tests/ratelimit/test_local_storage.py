"""The in-memory rate-limit storage (limits' MemoryStorage, one race closed)."""

from __future__ import annotations

import asyncio

from limits.aio.storage import MemoryStorage

from ollama_web.ratelimit.storage import LocalStorage


async def _clear_during_an_expiry_pass(storage: MemoryStorage) -> BaseException | None:
    """Hits on two keys; the next hit starts an expiry pass, which awaits a thread for the
    first key while the second is cleared (a successful login resets its failures)."""
    for key in ("a", "b"):
        assert await storage.acquire_entry(key, 10, 60)
    await asyncio.sleep(0.05)  # the pass these started is over
    assert await storage.acquire_entry("c", 10, 60)  # starts the next pass
    await asyncio.sleep(0)  # it lists the keys and awaits its thread for "a"
    await storage.clear("b")
    timer = storage.timer
    assert timer is not None
    await asyncio.wait([timer])
    return timer.exception()


async def test_limits_own_storage_loses_its_expiry_pass_to_a_clear() -> None:
    """What LocalStorage is for: if a release of limits fixes it, this fails, and
    LocalStorage can go."""
    assert isinstance(await _clear_during_an_expiry_pass(MemoryStorage()), KeyError)


async def test_a_key_cleared_during_an_expiry_pass_ends_it_cleanly() -> None:
    storage = LocalStorage()
    assert await _clear_during_an_expiry_pass(storage) is None
    assert (await storage.get_moving_window("b", 10, 60))[1] == 0
    assert (await storage.get_moving_window("a", 10, 60))[1] == 1
    assert await storage.acquire_entry("b", 1, 60)  # counts afresh
    assert not await storage.acquire_entry("b", 1, 60)
