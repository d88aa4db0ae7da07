"""The per-user generation slots this host's processes share without Redis: lock files in
DATA_DIR (real files and locks; another process for a crash). The limit as a client meets
it, two apps on one DATA_DIR served on loopback, is tests/chat/test_relay.py's
test_the_per_user_generation_limit_holds_across_processes on the host carrier."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import textwrap
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, cast

import pytest

from ollama_web.chat.errors import TooManyGenerationsError
from ollama_web.chat.host_slots import DIRECTORY_NAME, HostSlots, SlotsInUse
from ollama_web.chat.registry import RESERVATION_TTL_SECONDS, GenerationRegistry
from ollama_web.core.config import Settings

pytestmark = pytest.mark.skipif(not HostSlots.supported(), reason="no F_OFD_SETLK here")


def new_user() -> str:
    return uuid.uuid4().hex


@pytest.fixture
def two_processes(tmp_path: Path) -> Iterator[tuple[HostSlots, HostSlots]]:
    """Two processes' worth of slots: each opens its own descriptions, as processes do."""
    a, b = HostSlots(tmp_path / DIRECTORY_NAME), HostSlots(tmp_path / DIRECTORY_NAME)
    yield a, b
    a.close()
    b.close()


def test_a_users_slots_are_counted_across_the_processes_of_the_host(
    two_processes: tuple[HostSlots, HostSlots], tmp_path: Path
) -> None:
    a, b = two_processes
    user, other = new_user(), new_user()
    assert a.take(user, 3) == 0
    assert b.take(user, 3) == 1
    assert a.take(user, 3) == 2
    with pytest.raises(SlotsInUse):
        b.take(user, 3)
    with pytest.raises(SlotsInUse):
        a.take(user, 3)  # its own two do not count twice, nor free it
    assert b.take(other, 3) == 0  # another user has slots of their own
    a.give_back(user, 0)  # a still holds slot 2 on the same file
    assert b.take(user, 3) == 0
    with pytest.raises(SlotsInUse):
        a.take(user, 3)
    directory = tmp_path / DIRECTORY_NAME
    assert sorted(p.name for p in directory.iterdir()) == sorted([user, other])
    assert directory.stat().st_mode & 0o777 == 0o700
    assert (directory / user).stat().st_mode & 0o777 == 0o600
    assert (directory / user).stat().st_size == 0  # locks only, nothing written


def test_giving_back_the_last_slot_closes_the_users_file(
    two_processes: tuple[HostSlots, HostSlots],
) -> None:
    a, b = two_processes
    user = new_user()
    before = len(os.listdir("/proc/self/fd"))
    index = a.take(user, 1)
    assert index == 0
    a.give_back(user, index)
    a.give_back(user, index)  # twice: nothing more happens
    assert len(os.listdir("/proc/self/fd")) == before
    assert b.take(user, 1) == 0


def test_a_slot_of_a_process_that_dies_is_free_at_once(tmp_path: Path) -> None:
    user = new_user()
    holder = textwrap.dedent(
        f"""
        import sys, time
        from pathlib import Path
        from ollama_web.chat.host_slots import HostSlots
        print(HostSlots(Path({str(tmp_path)!r})).take({user!r}, 1), flush=True)
        time.sleep(60)
        """
    )
    slots = HostSlots(tmp_path)
    command = [sys.executable, "-c", holder]
    with subprocess.Popen(command, stdout=subprocess.PIPE, text=True) as process:
        try:
            assert process.stdout is not None
            assert process.stdout.readline().strip() == "0"
            with pytest.raises(SlotsInUse):
                slots.take(user, 1)
            process.send_signal(signal.SIGKILL)  # no cleanup of its own
            process.wait(10)
            assert slots.take(user, 1) == 0
        finally:
            process.kill()
            slots.close()


def test_slot_files_that_cannot_be_used_leave_the_count_to_each_process(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    directory = tmp_path / DIRECTORY_NAME
    directory.write_text("a file where the directory should be")
    slots = HostSlots(directory)
    with caplog.at_level(logging.WARNING, logger="ollama_web.chat.slots"):
        assert slots.take(new_user(), 1) is None
        assert slots.take(new_user(), 1) is None
        assert len(caplog.records) == 1
        assert "count per process" in caplog.messages[0]
        directory.unlink()
        assert slots.take(new_user(), 1) == 0
    assert "usable again" in caplog.messages[1]
    slots.close()


def test_a_user_id_is_never_taken_as_a_path(tmp_path: Path) -> None:
    slots = HostSlots(tmp_path / DIRECTORY_NAME)
    for bad in ("../escape", "", "a/b", "x" * 65):
        with pytest.raises(ValueError, match="not a user id"):
            slots.take(bad, 1)
    assert not (tmp_path / DIRECTORY_NAME).exists()


async def test_a_reservation_whose_job_never_started_gives_its_host_slot_back(
    settings_factory: Callable[..., Settings], tmp_path: Path
) -> None:
    settings = settings_factory(max_concurrent_generations_per_user=1)
    registry = GenerationRegistry(settings, cast(Any, None), cast(Any, None))
    registry.host_slots = HostSlots(tmp_path / DIRECTORY_NAME)
    other = HostSlots(tmp_path / DIRECTORY_NAME)
    user = new_user()
    try:
        reservation = await registry.reserve(user)
        assert reservation.host_slot == 0
        with pytest.raises(SlotsInUse):
            other.take(user, 1)
        reservation.created_at -= RESERVATION_TTL_SECONDS + 1  # its request failed unseen
        await registry.heartbeat(1.0)
        assert other.take(user, 1) == 0
        with pytest.raises(TooManyGenerationsError):
            await registry.reserve(user)  # the other process holds the one slot now
        assert registry._reservations == {}
    finally:
        registry.host_slots.close()
        other.close()
