"""/api/pull as Ollama's downloads behave: resumed after a cancel, shared while running,
and the fault switches that end a pull stream early."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import httpx
import pytest

from ollama_web.emulator import OllamaEmulator

Line = dict[str, Any]


async def pull_lines(client: httpx.AsyncClient, leave_after: int | None = None) -> list[Line]:
    """The lines of a streamed pull of mistral; leaving after `leave_after` closes the
    connection, which cancels the pull."""
    lines: list[Line] = []
    async with client.stream("POST", "/api/pull", json={"model": "mistral"}) as resp:
        async for text in resp.aiter_lines():
            lines.append(json.loads(text))
            if len(lines) == leave_after:
                break
    return lines


def first_layer(lines: list[Line]) -> list[Line]:
    digest = lines[1]["digest"]
    return [line for line in lines if line.get("digest") == digest]


async def test_each_layer_starts_with_a_line_without_completed(
    emu: OllamaEmulator, client: httpx.AsyncClient
) -> None:
    emu.config.pull_steps = 2
    lines = await pull_lines(client)
    by_layer: dict[str, list[Line]] = {}
    for line in lines[1:-3]:
        by_layer.setdefault(line["digest"], []).append(line)
    assert len(by_layer) == 6
    for digest, layer in by_layer.items():
        status = f"pulling {digest[7:19]}"
        assert layer[0] == {"status": status, "digest": digest, "total": layer[0]["total"]}
        assert [line.get("completed") for line in layer[1:]] == [
            layer[0]["total"] // 2,
            layer[0]["total"],
        ]


async def test_a_pull_after_a_cancelled_one_resumes_from_its_bytes(
    emu: OllamaEmulator, client: httpx.AsyncClient
) -> None:
    emu.config.pull_delay = 0.01
    emu.config.pull_steps = 20
    left = first_layer(await pull_lines(client, leave_after=6))
    await emu.wait_until(lambda: not emu.downloads)  # the download stopped with its client
    assert emu.find_model("mistral") is None
    again = first_layer(await pull_lines(client, leave_after=3))
    total = left[0]["total"]
    assert left[-1]["completed"] <= again[0]["completed"] < total
    assert again[1]["completed"] > again[0]["completed"]


async def test_a_pull_joining_a_running_one_follows_its_download(
    emu: OllamaEmulator, client: httpx.AsyncClient
) -> None:
    emu.config.pull_delay = 0.01
    emu.config.pull_steps = 20
    seen: list[Line] = []

    async def first() -> list[Line]:
        async with client.stream("POST", "/api/pull", json={"model": "mistral"}) as resp:
            async for text in resp.aiter_lines():
                seen.append(json.loads(text))
        return seen

    running = asyncio.create_task(first())
    await emu.wait_until(lambda: len(seen) >= 8)
    joined = await pull_lines(client)
    whole = await running
    assert len(emu.downloads) == 0
    layer = first_layer(joined)
    assert layer[0]["completed"] >= seen[7]["completed"] > 0
    assert joined[-1] == whole[-1] == {"status": "success"}
    assert [line["completed"] for line in first_layer(whole)[-len(layer) :]] == [
        line["completed"] for line in layer
    ]


async def test_a_pull_stream_can_break_off_after_n_lines(
    emu: OllamaEmulator, client: httpx.AsyncClient
) -> None:
    emu.config.pull_drop_after_lines = 3
    lines: list[Line] = []

    async def read() -> None:
        async with client.stream("POST", "/api/pull", json={"model": "mistral"}) as resp:
            async for text in resp.aiter_lines():
                lines.append(json.loads(text))

    with pytest.raises(httpx.RemoteProtocolError):
        await read()
    assert len(lines) == 3
    assert emu.find_model("mistral") is None


async def test_a_pull_stream_can_end_cleanly_without_success(
    emu: OllamaEmulator, client: httpx.AsyncClient
) -> None:
    emu.config.pull_end_after_lines = 4
    lines = await pull_lines(client)
    assert len(lines) == 4
    assert lines[0] == {"status": "pulling manifest"}
    assert all(line["status"] != "success" for line in lines)
