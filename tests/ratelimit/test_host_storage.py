"""The failed-login storage the processes of one host share without Redis (a real SQLite
file in DATA_DIR): each storage here stands for a process of its own, with its own
connection to the file."""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import stat
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from limits import RateLimitItemPerMinute
from limits.aio.strategies import MovingWindowRateLimiter

from ollama_web.ratelimit.host_storage import FILE_NAME, HostStorage
from ollama_web.ratelimit.storage import LocalStorage, host_storage


@pytest.fixture
async def two_processes(tmp_path: Path) -> AsyncIterator[tuple[HostStorage, HostStorage]]:
    a, b = HostStorage(tmp_path / FILE_NAME), HostStorage(tmp_path / FILE_NAME)
    yield a, b
    await a.aclose()
    await b.aclose()


async def test_failures_counted_by_one_process_lock_the_other_out(
    two_processes: tuple[HostStorage, HostStorage],
) -> None:
    a, b = two_processes
    item = RateLimitItemPerMinute(3, 15)
    on_a, on_b = MovingWindowRateLimiter(a), MovingWindowRateLimiter(b)
    assert await on_a.hit(item, "login-failures-username", "alice")
    assert await on_b.hit(item, "login-failures-username", "alice")
    assert await on_a.hit(item, "login-failures-username", "alice")
    assert not await on_b.hit(item, "login-failures-username", "alice")  # the fourth
    stats = await on_b.get_window_stats(item, "login-failures-username", "alice")
    assert stats.remaining == 0
    assert 14 * 60 < stats.reset_time - time.time() <= 15 * 60
    assert (await on_a.get_window_stats(item, "login-failures-username", "bob")).remaining == 3
    await on_a.clear(item, "login-failures-username", "alice")  # a successful login
    assert (await on_b.get_window_stats(item, "login-failures-username", "alice")).remaining == 3


async def test_counters_and_windows_behave_as_limits_memory_storage(tmp_path: Path) -> None:
    """The same operations, with the same answers, as the in-memory storage each process
    used before (the throttle's semantics stay those its tests prove)."""
    host, memory = HostStorage(tmp_path / FILE_NAME), LocalStorage()
    try:
        answers = []
        for storage in (host, memory):
            answers.append(
                [
                    await storage.incr("checks", 60),
                    await storage.incr("checks", 60, amount=2),
                    await storage.incr("checks", 60, amount=-1),
                    await storage.get("checks"),
                    await storage.get("nothing"),
                    await storage.acquire_entry("window", 3, 60, amount=2),
                    await storage.acquire_entry("window", 3, 60, amount=2),
                    await storage.acquire_entry("window", 3, 60),
                    await storage.acquire_entry("window", 3, 60),
                    await storage.acquire_entry("window", 3, 60, amount=4),
                    (await storage.get_moving_window("window", 3, 60))[1],
                    (await storage.get_moving_window("empty", 3, 60))[1],
                ]
            )
            await storage.clear("window")
            answers[-1].append((await storage.get_moving_window("window", 3, 60))[1])
        assert answers[0] == answers[1] == [1, 3, 2, 2, 0, True, False, True, False, False, 3, 0, 0]
    finally:
        await host.aclose()


async def test_entries_leave_their_window_and_the_file(tmp_path: Path) -> None:
    storage = HostStorage(tmp_path / FILE_NAME)
    try:
        assert await storage.acquire_entry("short", 1, 1)
        assert not await storage.acquire_entry("short", 1, 1)
        assert await storage.incr("counter", 1) == 1
        await asyncio.sleep(1.1)
        assert (await storage.get_moving_window("short", 1, 1))[1] == 0
        assert await storage.get("counter") == 0
        assert await storage.acquire_entry("other", 1, 60)  # prunes what left its window
        assert await storage.reset() == 2  # the counter's row, and "other"'s entry
    finally:
        await storage.aclose()
    assert stat.S_IMODE((tmp_path / FILE_NAME).stat().st_mode) == 0o600


async def test_checks_counted_at_once_by_two_processes_each_see_their_own_count(
    two_processes: tuple[HostStorage, HostStorage],
) -> None:
    """The throttle's checks in progress: attempts arriving together on two workers must
    each get a different count (one IMMEDIATE transaction each), or both could pass."""
    a, b = two_processes
    counts = await asyncio.gather(
        *(storage.incr("checking/alice", 60) for _ in range(25) for storage in (a, b))
    )
    assert sorted(counts) == list(range(1, 51))


async def test_a_process_setting_the_new_file_up_is_waited_for(tmp_path: Path) -> None:
    """Workers meeting their first failed login at once all open the new file: one holds its
    write lock, still in rollback mode, while another switches it to WAL, a lock SQLite
    answers "database is locked" at once instead of waiting (seen in CI): that worker then
    counted alone, in memory, saying the file was unreachable. Opening is tried again until
    the lock is gone."""
    path = tmp_path / FILE_NAME
    other = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    other.execute("BEGIN IMMEDIATE")  # the other process, between its first statements
    asyncio.get_running_loop().call_later(0.2, other.execute, "COMMIT")
    storage = HostStorage(path)
    try:
        started = time.monotonic()
        assert await storage.incr("checking/alice", 60) == 1
        assert time.monotonic() - started >= 0.15
    finally:
        await storage.aclose()
        other.close()


async def test_a_file_that_cannot_be_used_counts_in_memory_and_says_so(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    (tmp_path / FILE_NAME).mkdir()  # a directory where the file should be
    storage = host_storage(tmp_path)
    limiter = MovingWindowRateLimiter(storage)
    item = RateLimitItemPerMinute(1, 15)
    with caplog.at_level(logging.WARNING, logger="ollama_web.ratelimit"):
        assert await limiter.hit(item, "login-failures-address", "10.0.0.1")
        assert not await limiter.hit(item, "login-failures-address", "10.0.0.1")
    await storage.aclose()
    (warning,) = caplog.records
    assert warning.getMessage().startswith(f"the failed-login file {FILE_NAME} is unreachable")
    assert "in-process counting" in warning.getMessage()
