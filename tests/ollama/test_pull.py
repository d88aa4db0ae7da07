"""Pulls: the progress stream, the unknown-model error after the 200, and shared fan-out."""

from __future__ import annotations

import asyncio

import pytest

from ollama_web.core.errors import ValidationError
from ollama_web.emulator import OllamaEmulator
from ollama_web.ollama.errors import MODEL_SUGGESTION, OllamaUnavailableError
from ollama_web.ollama.gateway import OllamaGateway
from ollama_web.ollama.pull import PullEvent, PullSubscription
from tests.ollama.conftest import GatewayFactory
from tests.ollama.faults import closed_port_url


async def events_of(pull: PullSubscription) -> list[PullEvent]:
    return [event async for event in pull.events() if event is not None]


def pulls(emulator: OllamaEmulator) -> int:
    return sum(1 for r in emulator.requests if r.path == "/api/pull")


async def test_a_pull_streams_progress_then_done_and_refreshes_the_list(
    gateway_factory: GatewayFactory, ollama_emulator: OllamaEmulator
) -> None:
    async with gateway_factory([ollama_emulator.url], ollama_health_cache_seconds=60) as gateway:
        before, _ = await gateway.list_models()
        events = await events_of(await gateway.pull_model("mistral"))
        after, _ = await gateway.list_models()
    assert [m["name"] for m in before] == ["llama3.2:latest"]
    assert [e.kind for e in events[-1:]] == ["done"]
    assert events[-1].data == {"status": "success"}
    progress = [e.data for e in events[:-1]]
    assert {e.kind for e in events[:-1]} == {"progress"}
    assert progress[0] == {
        "status": "pulling manifest",
        "digest": None,
        "total": None,
        "completed": None,
        "percent": None,
    }
    layers = [p for p in progress if p["digest"]]
    assert layers
    assert all(set(p) == {"status", "digest", "total", "completed", "percent"} for p in layers)
    assert any(p["percent"] == 100.0 for p in layers)
    assert "mistral:latest" in [m["name"] for m in after]  # the cache was refreshed


async def test_pulling_an_unknown_model_fails_after_the_200(
    gateway_factory: GatewayFactory, ollama_emulator: OllamaEmulator
) -> None:
    async with gateway_factory([ollama_emulator.url]) as gateway:
        events = await events_of(await gateway.pull_model("no-such-model:13b"))
        assert gateway.pulls.jobs == {}
    assert [e.kind for e in events] == ["progress", "error"]
    assert events[-1].data == {
        "error": "MODEL_NOT_FOUND",
        "message": "Model no-such-model:13b not found in the registry",
        "details": {"model_name": "no-such-model:13b", "suggestion": MODEL_SUGGESTION},
    }


async def test_admins_pulling_the_same_model_share_one_upstream_pull(
    gateway_factory: GatewayFactory, ollama_emulator: OllamaEmulator
) -> None:
    ollama_emulator.config.pull_delay = 0.05
    async with gateway_factory([ollama_emulator.url]) as gateway:
        first = await gateway.pull_model("mistral")
        # The second joins a pull under way.
        await ollama_emulator.wait_until(lambda: len(first.job.events) >= 2, timeout=5)
        second = await gateway.pull_model("Mistral:latest")
        assert second.job is first.job
        assert second.start_index > 0
        results = await asyncio.gather(events_of(first), events_of(second))
    assert pulls(ollama_emulator) == 1
    assert results[0][-1].kind == results[1][-1].kind == "done"
    assert results[1] == results[0][len(results[0]) - len(results[1]) :]


async def test_a_pull_continues_when_its_subscriber_leaves(
    gateway_factory: GatewayFactory, ollama_emulator: OllamaEmulator
) -> None:
    ollama_emulator.config.pull_delay = 0.005
    async with gateway_factory([ollama_emulator.url]) as gateway:
        pull = await gateway.pull_model("tinyllama")
        events = pull.events()
        await anext(events)
        await events.aclose()
        assert pull.job.subscribers == 0
        assert pull.job.task is not None
        await pull.job.task
    assert pull.job.events[-1].kind == "done"
    assert ollama_emulator.find_model("tinyllama") is not None


async def test_closing_the_gateway_cancels_running_pulls(
    gateway_factory: GatewayFactory, ollama_emulator: OllamaEmulator
) -> None:
    ollama_emulator.config.pull_delay = 0.05
    gateway: OllamaGateway
    async with gateway_factory([ollama_emulator.url]) as gateway:
        pull = await gateway.pull_model("mistral")
    assert pull.job.task is not None
    assert pull.job.task.done()
    assert pull.job.events[-1].kind == "error"
    assert pull.job.events[-1].data["details"]["kind"] == "disconnected"
    await ollama_emulator.wait_until(lambda: ollama_emulator.connections_active == 0)
    assert ollama_emulator.find_model("mistral") is None


async def test_invalid_name_and_unknown_node_fail_before_any_upstream_call(
    gateway_factory: GatewayFactory, ollama_emulator: OllamaEmulator
) -> None:
    async with gateway_factory([ollama_emulator.url]) as gateway:
        with pytest.raises(ValidationError):
            await gateway.pull_model("bad name")
        with pytest.raises(ValidationError):
            await gateway.pull_model("mistral", node_url="http://elsewhere:11434")
    assert ollama_emulator.requests == []


async def test_pulling_onto_a_down_node_is_503(
    gateway_factory: GatewayFactory, ollama_emulator: OllamaEmulator
) -> None:
    down = closed_port_url()
    async with gateway_factory([down, ollama_emulator.url]) as gateway:
        with pytest.raises(OllamaUnavailableError):
            await gateway.pull_model("mistral", node_url=down)
        pull = await gateway.pull_model("mistral")  # default: the first reachable node
        assert pull.job.node.url == ollama_emulator.url
        await events_of(pull)
    async with gateway_factory([down]) as gateway:
        with pytest.raises(OllamaUnavailableError):
            await gateway.pull_model("mistral")


async def test_a_pull_cancelled_twice_is_cancelled_once(
    gateway_factory: GatewayFactory, ollama_emulator: OllamaEmulator
) -> None:
    """A cancel published to every process reaches the one that cancelled too: the second
    must not cancel the task again (it would cut the upstream's close short), nor count."""
    ollama_emulator.config.pull_delay = 0.1
    ollama_emulator.config.pull_steps = 100
    async with gateway_factory([ollama_emulator.url]) as gateway:
        pull = await gateway.pull_model("mistral")
        assert gateway.pulls.cancel("mistral:latest") == 1
        job = pull.job
        assert job.task is not None
        assert job.task.cancelling() == 1
        assert gateway.pulls.cancel("mistral:latest") == 0
        assert job.task.cancelling() == 1
        events = await events_of(pull)
    assert (events[-1].kind, events[-1].data["error"]) == ("error", "PULL_CANCELLED")
    assert ollama_emulator.find_model("mistral") is None


async def test_a_pull_cancelled_then_pulled_again_resumes_where_it_stopped(
    gateway_factory: GatewayFactory, ollama_emulator: OllamaEmulator
) -> None:
    """What the cancel message promises ("pulling again resumes it"): Ollama keeps the
    bytes a cancelled pull fetched, and the next pull's progress starts from them."""
    ollama_emulator.config.pull_delay = 0.01
    ollama_emulator.config.pull_steps = 50
    async with gateway_factory([ollama_emulator.url]) as gateway:
        first = await gateway.pull_model("mistral")
        seen: list[PullEvent] = []
        async for event in first.events():
            if event is not None:
                seen.append(event)
            if len([e for e in seen if e.data["completed"]]) == 5:
                break
        assert await gateway.cancel_pull("mistral") == (1, 0, None)
        ended = await events_of(first)
        assert ended[-1].data["error"] == "PULL_CANCELLED"
        await ollama_emulator.wait_until(lambda: not ollama_emulator.downloads)
        again = await events_of(await gateway.pull_model("mistral"))
    reached = max(e.data["completed"] for e in seen if e.data["completed"])
    resumed = next(e.data for e in again if e.data["digest"])
    assert resumed["digest"] == seen[-1].data["digest"]
    assert resumed["completed"] >= reached > 0
    assert again[-1].kind == "done"


async def _pulled_with(
    gateway_factory: GatewayFactory, emulator: OllamaEmulator, fault: str
) -> list[PullEvent]:
    """The events of a pull of mistral whose stream `fault` cuts after its third line."""
    setattr(emulator.config, fault, 3)
    async with gateway_factory([emulator.url]) as gateway:
        events = await events_of(await gateway.pull_model("mistral"))
        assert gateway.pulls.jobs == {}
    assert [e.kind for e in events] == ["progress", "progress", "progress", "error"]
    assert emulator.find_model("mistral") is None
    return events


async def test_a_pull_stream_that_breaks_off_ends_with_a_disconnected_error(
    gateway_factory: GatewayFactory, ollama_emulator: OllamaEmulator
) -> None:
    events = await _pulled_with(gateway_factory, ollama_emulator, "pull_drop_after_lines")
    assert events[-1].data["error"] == "OLLAMA_STREAM_ERROR"
    assert events[-1].data["details"]["kind"] == "disconnected"


async def test_a_pull_stream_that_ends_without_success_is_incomplete(
    gateway_factory: GatewayFactory, ollama_emulator: OllamaEmulator
) -> None:
    events = await _pulled_with(gateway_factory, ollama_emulator, "pull_end_after_lines")
    assert events[-1].data == {
        "error": "OLLAMA_STREAM_ERROR",
        "message": "The Ollama stream ended before it was complete.",
        "details": {"kind": "incomplete", "upstream_message": "no success line"},
    }
