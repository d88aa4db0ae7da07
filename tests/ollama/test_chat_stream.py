"""Streaming chat against the emulator on loopback: every edge case of the wire protocol."""

from __future__ import annotations

import asyncio
import gzip
import time
from urllib.parse import urlsplit

import httpx
import pytest

from ollama_web.core.errors import ValidationError
from ollama_web.emulator import ModelSpec, OllamaEmulator
from ollama_web.emulator.config import BUSY_ERROR, DEFAULT_ERROR, DEFAULT_REPLY, DEFAULT_THINKING
from ollama_web.ollama.chat import DRAIN_SECONDS, ChatStream
from ollama_web.ollama.chunks import ChatChunk
from ollama_web.ollama.errors import (
    MODEL_SUGGESTION,
    ModelNotFoundError,
    OllamaBusyError,
    OllamaError,
    OllamaStreamError,
    OllamaTimeoutError,
)
from ollama_web.ollama.nodes import Node, NodeRegistry
from ollama_web.ollama.transport import JSON_HEADERS, NDJSON_HEADERS
from tests.ollama.conftest import GatewayFactory
from tests.ollama.faults import Handler, serving
from tests.ollama.streams import HI, collect, drain


class Enough(Exception):
    """Raised by an `on_chunk` to end a relay early."""


LINES = (
    b'{"message":{"role":"assistant","content":"Gr\xc3\xbc"},"done":false}\n'
    b'{"message":{"role":"assistant","content":"\xc3\x9fe"},"done":false}\n'
    b'{"message":{"role":"assistant","content":""},"done":true,"done_reason":"stop"}\n'
)


def chunked_node(pieces: list[bytes], headers: bytes = b"", end: bool = True) -> Handler:
    """A node answering one request with `pieces` as chunks (then the last chunk, unless
    not `end`: the connection then stays open)."""

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\n%sTransfer-Encoding: chunked\r\n\r\n" % headers)
        for piece in pieces:
            writer.write(b"%x\r\n%s\r\n" % (len(piece), piece))
            await writer.drain()
        if end:
            writer.write(b"0\r\n\r\n")
            await writer.drain()
        else:
            await reader.read()  # until the client closes

    return answer


async def stream_from(node_handler: Handler) -> list[ChatChunk]:
    """Every chunk a ChatStream reads from `node_handler` (raises what it raises)."""
    async with serving(node_handler) as port, httpx.AsyncClient() as client:
        node = NodeRegistry([f"http://127.0.0.1:{port}"]).nodes[0]

        async def opener() -> tuple[Node, httpx.Response]:
            request = client.build_request("POST", node.url + "/api/chat")
            return node, await client.send(request, stream=True)

        async with ChatStream(opener, lambda _: None, lambda *_: None) as stream:
            return await collect(stream)


async def test_a_compressed_stream_is_still_decoded() -> None:
    """Streams ask for `identity`; a node that compresses anyway is decoded by httpx."""
    packed = gzip.compress(LINES)
    gzipped = chunked_node([packed[:10], packed[10:]], b"Content-Encoding: gzip\r\n")
    chunks = await stream_from(gzipped)
    assert "".join(c.content for c in chunks) == "Grüße"
    assert chunks[-1].done


async def test_a_stream_not_in_its_content_encoding_is_a_stream_error() -> None:
    """Plain lines labelled gzip (a misconfigured proxy): an upstream error that says so,
    not an unexpected failure."""
    with pytest.raises(OllamaStreamError) as caught:
        await stream_from(chunked_node([LINES], b"Content-Encoding: gzip\r\n"))
    assert caught.value.kind == "upstream_error"
    assert caught.value.upstream_message.startswith("an answer that could not be decoded")


async def test_the_done_chunk_is_not_held_back_by_a_body_left_open() -> None:
    """Ollama ends the body with the done chunk; a node or proxy that keeps it open costs
    at most DRAIN_SECONDS, not the generation read timeout (300 s by default)."""
    started = time.monotonic()
    chunks = await stream_from(chunked_node([LINES], end=False))
    assert "".join(c.content for c in chunks) == "Grüße"
    assert chunks[-1].done
    assert time.monotonic() - started < DRAIN_SECONDS + 1.0


def chat_requests(emulator: OllamaEmulator) -> list[dict[str, object]]:
    return [r.json for r in emulator.requests if r.path == "/api/chat"]


async def test_a_stream_relays_every_token_and_ends_with_metrics(
    gateway_factory: GatewayFactory, ollama_emulator: OllamaEmulator
) -> None:
    async with (
        gateway_factory([ollama_emulator.url]) as gateway,
        gateway.open_chat("llama3.2", HI) as stream,
    ):
        assert stream.node_url == ollama_emulator.url
        chunks = await collect(stream)
    assert "".join(c.content for c in chunks) == DEFAULT_REPLY
    final = chunks[-1]
    assert final.done
    assert final.done_reason == "stop"
    assert not any(c.done for c in chunks[:-1])
    assert isinstance(final.eval_count, int)
    assert final.eval_count == len(chunks) - 1
    assert isinstance(final.total_duration, int)
    assert final.total_duration > 0
    assert stream.done_chunk == final
    assert gateway.registry.nodes[0].in_flight == 0


async def test_utf8_split_across_chunks_arrives_intact(
    gateway_factory: GatewayFactory, ollama_emulator: OllamaEmulator
) -> None:
    ollama_emulator.config.split_utf8 = True
    async with (
        gateway_factory([ollama_emulator.url]) as gateway,
        gateway.open_chat("llama3.2", HI) as stream,
    ):
        text = "".join(c.content for c in await collect(stream))
    assert text == DEFAULT_REPLY


async def test_text_carried_by_the_done_chunk_is_kept(
    gateway_factory: GatewayFactory, ollama_emulator: OllamaEmulator
) -> None:
    ollama_emulator.config.done_text = " (fin)"
    async with (
        gateway_factory([ollama_emulator.url]) as gateway,
        gateway.open_chat("llama3.2", HI) as stream,
    ):
        chunks = await collect(stream)
    assert chunks[-1].done
    assert chunks[-1].content == " (fin)"
    assert "".join(c.content for c in chunks) == DEFAULT_REPLY + " (fin)"


async def test_thinking_models_stream_their_thinking(
    gateway_factory: GatewayFactory, ollama_emulator: OllamaEmulator
) -> None:
    ollama_emulator.config.models.append(ModelSpec.preset("qwen3"))
    async with gateway_factory([ollama_emulator.url]) as gateway:
        async with gateway.open_chat("qwen3", HI) as stream:
            chunks = await collect(stream)
        async with gateway.open_chat("qwen3", HI, think=False) as stream:
            quiet = await collect(stream)
    assert "".join(c.thinking for c in chunks) == DEFAULT_THINKING
    assert "".join(c.thinking for c in quiet) == ""
    assert chat_requests(ollama_emulator)[-1]["think"] is False


async def test_an_error_line_after_the_200_raises_a_stream_error(
    gateway_factory: GatewayFactory, ollama_emulator: OllamaEmulator
) -> None:
    ollama_emulator.config.error_after_tokens = 3
    async with gateway_factory([ollama_emulator.url]) as gateway:
        async with gateway.open_chat("llama3.2", HI) as stream:
            received: list[ChatChunk] = []
            with pytest.raises(OllamaStreamError) as caught:
                await drain(stream, received)
        node = gateway.registry.nodes[0]
        assert len(received) == 3
        assert caught.value.kind == "upstream_error"
        assert caught.value.upstream_message == DEFAULT_ERROR
        assert node.status == "up"
        assert "upstream_error" in (node.last_error or "")


async def test_an_error_before_the_stream_is_a_502_with_the_message(
    gateway_factory: GatewayFactory, ollama_emulator: OllamaEmulator
) -> None:
    ollama_emulator.config.error_after_tokens = 0
    async with gateway_factory([ollama_emulator.url]) as gateway:
        with pytest.raises(OllamaError) as caught:
            async with gateway.open_chat("llama3.2", HI):
                pass
        assert gateway.registry.nodes[0].in_flight == 0
    assert caught.value.status_code == 502
    assert caught.value.details == {"upstream_message": DEFAULT_ERROR, "upstream_status": 500}


async def test_a_connection_dropped_mid_stream_is_reported_as_disconnected(
    gateway_factory: GatewayFactory, ollama_emulator: OllamaEmulator
) -> None:
    ollama_emulator.config.drop_after_tokens = 4
    async with (
        gateway_factory([ollama_emulator.url]) as gateway,
        gateway.open_chat("llama3.2", HI) as stream,
    ):
        received: list[ChatChunk] = []
        with pytest.raises(OllamaStreamError) as caught:
            await drain(stream, received)
    assert caught.value.kind == "disconnected"
    assert len(received) == 4


async def test_busy_node_gives_503_with_retry_after(
    gateway_factory: GatewayFactory, ollama_emulator: OllamaEmulator
) -> None:
    ollama_emulator.config.busy = True
    async with gateway_factory([ollama_emulator.url]) as gateway:
        with pytest.raises(OllamaBusyError) as caught:
            async with gateway.open_chat("llama3.2", HI):
                pass
    assert caught.value.status_code == 503
    assert caught.value.headers["Retry-After"] == "2"
    assert caught.value.details["upstream_message"] == BUSY_ERROR


async def test_unknown_model_is_404_and_never_sent_to_chat(
    gateway_factory: GatewayFactory, ollama_emulator: OllamaEmulator
) -> None:
    async with gateway_factory([ollama_emulator.url]) as gateway:
        with pytest.raises(ModelNotFoundError) as caught:
            async with gateway.open_chat("nope:7b", HI):
                pass
        with pytest.raises(ModelNotFoundError):
            await gateway.resolve_model("nope")
    assert caught.value.details == {"model_name": "nope:7b", "suggestion": MODEL_SUGGESTION}
    assert chat_requests(ollama_emulator) == []


async def test_invalid_name_fails_before_any_upstream_call(
    gateway_factory: GatewayFactory, ollama_emulator: OllamaEmulator
) -> None:
    async with gateway_factory([ollama_emulator.url]) as gateway:
        with pytest.raises(ValidationError):
            gateway.open_chat("bad name!", HI)
        with pytest.raises(ValidationError):
            await gateway.chat_once("a/b/c/d", HI)
    assert ollama_emulator.requests == []


async def test_load_and_unload_replies_are_single_done_chunks(
    gateway_factory: GatewayFactory, ollama_emulator: OllamaEmulator
) -> None:
    async with gateway_factory([ollama_emulator.url]) as gateway:
        async with gateway.open_chat("llama3.2", []) as stream:
            (loaded,) = await collect(stream)
        assert ollama_emulator.loaded_models() == ["llama3.2:latest"]
        async with gateway.open_chat("llama3.2", [], keep_alive=0) as stream:
            (unloaded,) = await collect(stream)
    assert (loaded.done, loaded.done_reason) == (True, "load")
    assert (unloaded.done, unloaded.done_reason) == (True, "unload")
    assert ollama_emulator.loaded_models() == []


async def test_a_line_of_more_than_8_mb_is_relayed(
    gateway_factory: GatewayFactory, ollama_emulator: OllamaEmulator
) -> None:
    ollama_emulator.config.models = [ModelSpec.preset("llama3.2")]
    blob = "ü" * (5 * 1024 * 1024)  # 10 MB of UTF-8 in one tool-call line
    ollama_emulator.config.tool_calls = [{"name": "store", "arguments": {"blob": blob}}]
    ollama_emulator.config.reply = "ok"
    tools = [{"type": "function", "function": {"name": "store", "parameters": {}}}]
    async with (
        gateway_factory([ollama_emulator.url]) as gateway,
        gateway.open_chat("llama3.2", HI, tools=tools) as stream,
    ):
        chunks = await collect(stream)
    calls = [call for chunk in chunks for call in chunk.tool_calls or []]
    assert calls[0]["function"]["arguments"]["blob"] == blob


async def test_upstream_requests_are_what_httpx_s_build_request_makes(
    gateway_factory: GatewayFactory, ollama_emulator: OllamaEmulator
) -> None:
    """`Upstream._build` builds requests itself (the client's headers merged once): a
    stream, a JSON request and one without a body carry the headers and body that
    `build_request` gives them."""
    async with gateway_factory([ollama_emulator.url]) as gateway:
        async with gateway.open_chat("llama3.2", HI) as stream:
            await collect(stream)
        await gateway.chat_once("llama3.2", [{"role": "user", "content": "ünïcode ✓"}])
        await gateway.running_models()
        client = gateway.upstream.client
    seen = {(r.path, r.json.get("stream") if r.json else None): r for r in ollama_emulator.requests}
    for (path, stream_flag), headers in (
        (("/api/chat", True), NDJSON_HEADERS),
        (("/api/chat", False), JSON_HEADERS),
        (("/api/ps", None), JSON_HEADERS),
    ):
        request = seen[path, stream_flag]
        built = client.build_request(
            request.method, ollama_emulator.url + path, json=request.json, headers=headers
        )
        assert request.headers == {name.lower(): value for name, value in built.headers.items()}
        assert request.body == built.content


async def test_upstream_requests_use_the_nodes_host_and_never_an_origin(
    gateway_factory: GatewayFactory, ollama_emulator: OllamaEmulator
) -> None:
    async with (
        gateway_factory([ollama_emulator.url]) as gateway,
        gateway.open_chat("llama3.2", HI, options={"temperature": 0.2}) as stream,
    ):
        await collect(stream)
    request = next(r for r in ollama_emulator.requests if r.path == "/api/chat")
    assert request.headers["host"] == urlsplit(ollama_emulator.url).netloc
    assert "origin" not in request.headers
    assert request.headers["accept-encoding"] == "identity"  # lines unbuffered, undecoded
    assert request.json == {
        "model": "llama3.2:latest",
        "messages": HI,
        "stream": True,
        "options": {"temperature": 0.2},
    }


async def test_leaving_the_stream_early_cancels_the_generation_upstream(
    gateway_factory: GatewayFactory, ollama_emulator: OllamaEmulator
) -> None:
    ollama_emulator.config.reply_tokens = 1000
    ollama_emulator.config.tokens_per_second = 200
    async with gateway_factory([ollama_emulator.url]) as gateway:

        def until_tok2(chunk: ChatChunk) -> None:
            if chunk.content == " tok2":
                raise Enough

        async with gateway.open_chat("llama3.2", HI) as stream:
            with pytest.raises(Enough):  # what `on_chunk` raises ends the relay
                await stream.relay(until_tok2)
        started = time.monotonic()
        await ollama_emulator.wait_until(lambda: ollama_emulator.generations_cancelled == 1)
        assert time.monotonic() - started < 1.5  # not the 5 s the reply would take
        assert gateway.registry.nodes[0].in_flight == 0
    assert ollama_emulator.generations_completed == 0


async def test_sequential_chats_reuse_one_pooled_connection(
    gateway_factory: GatewayFactory, ollama_emulator: OllamaEmulator
) -> None:
    async with gateway_factory([ollama_emulator.url], ollama_health_cache_seconds=60) as gateway:
        async with gateway.open_chat("llama3.2", HI) as stream:
            await collect(stream)
        opened = ollama_emulator.connections_opened
        for _ in range(10):
            async with gateway.open_chat("llama3.2", HI) as stream:
                await collect(stream)
            await gateway.chat_once("llama3.2", HI)
    assert ollama_emulator.connections_opened == opened
    assert len(chat_requests(ollama_emulator)) == 21


async def test_chat_once_returns_the_whole_answer(
    gateway_factory: GatewayFactory, ollama_emulator: OllamaEmulator
) -> None:
    async with gateway_factory([ollama_emulator.url]) as gateway:
        chunk = await gateway.chat_once("llama3.2", HI, options={"num_predict": 3})
    assert chunk.done
    assert chunk.done_reason == "length"
    assert chunk.eval_count == 3
    assert chat_requests(ollama_emulator)[-1]["stream"] is False


async def test_a_node_that_hangs_before_its_headers_times_out_with_504(
    gateway_factory: GatewayFactory, ollama_emulator: OllamaEmulator
) -> None:
    settings = {"ollama_timeout_seconds": 0.3, "ollama_health_cache_seconds": 60}
    async with gateway_factory([ollama_emulator.url], **settings) as gateway:
        await gateway.resolve_model("llama3.2")  # inventory cached while the node answers
        ollama_emulator.config.hang_before_headers = True
        started = time.monotonic()
        with pytest.raises(OllamaTimeoutError) as caught:
            async with gateway.open_chat("llama3.2", HI):
                pass
        elapsed = time.monotonic() - started
        node = gateway.registry.nodes[0]
        assert node.in_flight == 0
        assert "read timed out" in (node.last_error or "")
        assert node.status == "up"  # slow is not unreachable: a cold load may take long
    assert caught.value.status_code == 504
    assert 0.3 <= elapsed < 1.5  # the read timeout, not the 2 s connect one


async def test_closing_the_gateway_mid_stream_leaves_nothing_behind(
    gateway_factory: GatewayFactory, ollama_emulator: OllamaEmulator
) -> None:
    ollama_emulator.config.reply_tokens = 1000
    ollama_emulator.config.tokens_per_second = 100
    async with gateway_factory([ollama_emulator.url]) as gateway:
        stream = gateway.open_chat("llama3.2", HI)
        await stream.__aenter__()
        await stream.aclose()
        await stream.aclose()  # idempotent
        with pytest.raises(RuntimeError):
            await collect(stream)
    await ollama_emulator.wait_until(lambda: ollama_emulator.generations_cancelled == 1)
    assert ollama_emulator.active_generations == 0
