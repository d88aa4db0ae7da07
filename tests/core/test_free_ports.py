"""Ports for servers the tests start elsewhere (tests/fixtures/ports.py) come from below the
kernel's ephemeral range, from this worker's block, and never one that is held."""

from __future__ import annotations

import socket

import pytest

from tests.fixtures import ports


def test_ports_come_from_this_workers_block_below_the_ephemeral_range() -> None:
    block = ports._block()
    taken = [ports.free_port() for _ in range(5)]
    assert len(set(taken)) == 5
    assert all(port in block for port in taken)
    assert max(block) < ports._ephemeral_start()


def test_a_held_port_is_passed_over(monkeypatch: pytest.MonkeyPatch) -> None:
    block = ports._block()
    held = ports.free_port()
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", held))
        sock.listen()
        index = held - block.start
        monkeypatch.setattr(ports, "_turn", iter([index, index + 1]))  # the held one first
        assert ports.free_port() == block[(index + 1) % len(block)]


def test_other_workers_have_other_blocks(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PYTEST_XDIST_WORKER", "gw0")
    first = ports._block()
    monkeypatch.setenv("PYTEST_XDIST_WORKER", "gw7")
    eighth = ports._block()
    assert not set(first) & set(eighth)
    assert eighth.start >= 1024
