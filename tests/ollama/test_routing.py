"""Routing across nodes: model locality, least in-flight, failover only before the first byte."""

from __future__ import annotations

import asyncio
import time

import httpx
import pytest

from ollama_web.emulator import OllamaEmulator
from ollama_web.ollama.errors import (
    ModelNotFoundError,
    OllamaStreamError,
    OllamaUnavailableError,
)
from tests.ollama.conftest import GatewayFactory
from tests.ollama.faults import blackhole, closed_port_url, hanging_server
from tests.ollama.streams import HI, collect


def chats(emulator: OllamaEmulator) -> int:
    return sum(1 for r in emulator.requests if r.path == "/api/chat")


async def load(emulator: OllamaEmulator, model: str = "llama3.2") -> None:
    """Load a model on one node directly (as another client of that Ollama would)."""
    async with httpx.AsyncClient() as client:
        body = {"model": model, "messages": []}
        response = await client.post(f"{emulator.url}/api/chat", json=body)
        response.raise_for_status()
    emulator.reset_counters()


async def test_a_node_with_the_model_loaded_is_preferred(
    gateway_factory: GatewayFactory,
    ollama_emulator: OllamaEmulator,
    second_emulator: OllamaEmulator,
) -> None:
    await load(second_emulator)
    async with gateway_factory([ollama_emulator.url, second_emulator.url]) as gateway:
        for _ in range(3):
            async with gateway.open_chat("llama3.2", HI) as stream:
                assert stream.node_url == second_emulator.url
                await collect(stream)
    assert (chats(ollama_emulator), chats(second_emulator)) == (0, 3)


async def test_a_model_goes_to_the_node_that_holds_it(
    gateway_factory: GatewayFactory,
    ollama_emulator: OllamaEmulator,
    second_emulator: OllamaEmulator,
) -> None:
    async with gateway_factory([ollama_emulator.url, second_emulator.url]) as gateway:
        async with gateway.open_chat("Mistral", HI) as stream:
            assert stream.node_url == second_emulator.url
        assert await gateway.resolve_model("MISTRAL") == "mistral:latest"


async def test_the_node_with_fewest_generations_in_flight_is_chosen(
    gateway_factory: GatewayFactory,
    ollama_emulator: OllamaEmulator,
    second_emulator: OllamaEmulator,
) -> None:
    for emulator in (ollama_emulator, second_emulator):
        await load(emulator)
        emulator.config.reply_tokens = 500
        emulator.config.tokens_per_second = 100
    async with gateway_factory([ollama_emulator.url, second_emulator.url]) as gateway:
        first = gateway.open_chat("llama3.2", HI)
        second = gateway.open_chat("llama3.2", HI)
        third = gateway.open_chat("llama3.2", HI)
        await first.__aenter__()
        await second.__aenter__()
        assert first.node_url == ollama_emulator.url  # a tie: configuration order
        assert second.node_url == second_emulator.url
        assert [n.in_flight for n in gateway.registry.nodes] == [1, 1]
        await first.aclose()
        await third.__aenter__()
        assert third.node_url == ollama_emulator.url
        await second.aclose()
        await third.aclose()
        states = await gateway.node_states()
    assert [state["in_flight"] for state in states] == [0, 0]


async def test_a_refused_node_is_marked_down_and_the_chat_fails_over(
    gateway_factory: GatewayFactory,
    ollama_emulator: OllamaEmulator,
    second_emulator: OllamaEmulator,
) -> None:
    await load(second_emulator)
    urls = [ollama_emulator.url, second_emulator.url]
    async with gateway_factory(urls, ollama_health_cache_seconds=60) as gateway:
        await gateway.resolve_model("llama3.2")  # both inventories cached, B has it loaded
        await second_emulator.stop()  # B now refuses connections
        async with gateway.open_chat("llama3.2", HI) as stream:
            assert stream.node_url == ollama_emulator.url
            assert (await collect(stream))[-1].done
        down = gateway.registry.nodes[1]
        assert down.status == "down"
        assert down.in_flight == 0
        assert down.in_backoff()
        assert down.consecutive_failures == 1
        assert "connection failed" in (down.last_error or "")
        attempts = down.requests_total
        async with gateway.open_chat("llama3.2", HI) as stream:
            assert stream.node_url == ollama_emulator.url
        assert down.requests_total == attempts  # in back-off: not even tried


async def test_a_busy_node_is_skipped_before_the_first_byte(
    gateway_factory: GatewayFactory,
    ollama_emulator: OllamaEmulator,
    second_emulator: OllamaEmulator,
) -> None:
    await load(ollama_emulator)
    ollama_emulator.config.busy = True
    async with (
        gateway_factory([ollama_emulator.url, second_emulator.url]) as gateway,
        gateway.open_chat("llama3.2", HI) as stream,
    ):
        assert stream.node_url == second_emulator.url
    assert chats(ollama_emulator) == 1


async def test_a_node_that_lost_the_model_is_skipped(
    gateway_factory: GatewayFactory,
    ollama_emulator: OllamaEmulator,
    second_emulator: OllamaEmulator,
) -> None:
    urls = [ollama_emulator.url, second_emulator.url]
    async with gateway_factory(urls, ollama_health_cache_seconds=60) as gateway:
        await gateway.resolve_model("llama3.2")
        ollama_emulator.config.models.clear()  # deleted behind our back; inventory is stale
        async with gateway.open_chat("llama3.2", HI) as stream:
            assert stream.node_url == second_emulator.url
    assert chats(ollama_emulator) == 1


async def test_no_retry_once_the_stream_has_started(
    gateway_factory: GatewayFactory,
    ollama_emulator: OllamaEmulator,
    second_emulator: OllamaEmulator,
) -> None:
    await load(second_emulator)
    second_emulator.config.drop_after_tokens = 2
    async with (
        gateway_factory([ollama_emulator.url, second_emulator.url]) as gateway,
        gateway.open_chat("llama3.2", HI) as stream,
    ):
        assert stream.node_url == second_emulator.url
        with pytest.raises(OllamaStreamError) as caught:
            await collect(stream)
    assert caught.value.kind == "disconnected"
    assert chats(ollama_emulator) == 0
    assert chats(second_emulator) == 1


async def test_all_nodes_down_is_503(gateway_factory: GatewayFactory) -> None:
    async with gateway_factory([closed_port_url(), closed_port_url()]) as gateway:
        with pytest.raises(OllamaUnavailableError) as caught:
            async with gateway.open_chat("llama3.2", HI):
                pass
        with pytest.raises(OllamaUnavailableError):
            await gateway.resolve_model("llama3.2")
    assert caught.value.status_code == 503
    assert [node["status"] for node in caught.value.details["nodes"]] == ["down", "down"]


async def test_unknown_model_on_every_node_is_404(
    gateway_factory: GatewayFactory,
    ollama_emulator: OllamaEmulator,
    second_emulator: OllamaEmulator,
) -> None:
    async with gateway_factory([ollama_emulator.url, second_emulator.url]) as gateway:
        with pytest.raises(ModelNotFoundError):
            async with gateway.open_chat("qwen3:235b", HI):
                pass
    assert chats(ollama_emulator) == chats(second_emulator) == 0


async def test_listing_with_a_node_that_never_answers_costs_the_list_timeout(
    gateway_factory: GatewayFactory, ollama_emulator: OllamaEmulator
) -> None:
    async with hanging_server() as hanging:
        urls = [hanging.url, ollama_emulator.url]
        async with gateway_factory(urls, ollama_list_timeout_seconds=0.3) as gateway:
            started = time.monotonic()
            models, reports = await gateway.list_models()
            elapsed = time.monotonic() - started
            await gateway.list_models()
            asked = hanging.connections
    assert [m["name"] for m in models] == ["llama3.2:latest"]
    assert reports[0].status == "down"
    assert "read timed out" in (reports[0].error or "")
    assert 0.3 <= elapsed < 1.5  # the list timeout, not the 5 s default or the 300 s one
    assert asked == 1  # the second time, in back-off: reported, not asked (nor waited on)


async def test_a_node_that_never_answers_is_asked_again_without_holding_chats(
    gateway_factory: GatewayFactory, ollama_emulator: OllamaEmulator
) -> None:
    """Once the silent node's back-off ended, the next chat asked it for its models and
    waited the whole list timeout, though the model was on a node that answers: one stall
    per back-off (about every 30 s). It is asked again in the background meanwhile."""
    async with hanging_server() as hanging:
        urls = [hanging.url, ollama_emulator.url]
        async with gateway_factory(urls, ollama_list_timeout_seconds=0.5) as gateway:
            async with gateway.open_chat("llama3.2", HI) as stream:  # learns it is silent
                await collect(stream)
            silent = gateway.registry.nodes[0]
            assert silent.status == "down"
            silent.down_until = 0.0  # its back-off is over
            started = time.monotonic()
            async with gateway.open_chat("llama3.2", HI) as stream:
                assert stream.node_url == ollama_emulator.url
                await collect(stream)
            elapsed = time.monotonic() - started
            deadline = time.monotonic() + 5.0
            while hanging.connections < 2 or silent.down_until == 0.0:
                assert time.monotonic() < deadline, "the silent node was not asked again"
                await asyncio.sleep(0.05)
    assert elapsed < 0.5, elapsed  # not the list timeout
    assert silent.status == "down"  # asked, and still silent


async def test_a_chat_to_a_single_node_that_never_answers_costs_one_list_timeout(
    gateway_factory: GatewayFactory,
) -> None:
    async with (
        hanging_server() as hanging,
        gateway_factory([hanging.url], ollama_list_timeout_seconds=0.3) as gateway,
    ):
        started = time.monotonic()
        with pytest.raises(OllamaUnavailableError):
            async with gateway.open_chat("llama3.2", HI):
                pass
        elapsed = time.monotonic() - started
        asked = hanging.connections
    assert elapsed >= 0.3
    assert asked == 1  # not again for the "cache predates a pull" retry: a second list timeout


async def test_listing_with_a_blackholed_node_costs_the_connect_timeout(
    gateway_factory: GatewayFactory, ollama_emulator: OllamaEmulator
) -> None:
    with blackhole() as unreachable:
        urls = [unreachable, ollama_emulator.url]
        async with gateway_factory(urls, ollama_connect_timeout_seconds=0.2) as gateway:
            started = time.monotonic()
            models, reports = await gateway.list_models()
            elapsed = time.monotonic() - started
    assert [m["nodes"] for m in models] == [[ollama_emulator.url]]
    assert reports[0].status == "down"
    assert "connect timed out" in (reports[0].error or "")
    assert 0.2 <= elapsed < 1.5  # the connect timeout, not the 5 s list timeout
