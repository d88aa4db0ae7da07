"""Every upstream failure is translated at the edge; nothing upstream passes through raw."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

import httpx
import pytest

from ollama_web.core.config import Settings
from ollama_web.core.errors import AppError
from ollama_web.ollama.chunks import ChatChunk
from ollama_web.ollama.errors import (
    MODEL_SUGGESTION,
    ModelNotFoundError,
    OllamaBusyError,
    OllamaError,
    OllamaStreamError,
    OllamaTimeoutError,
    OllamaUnavailableError,
    error_from_response,
    error_from_transport,
)
from ollama_web.ollama.gateway import OllamaGateway
from ollama_web.ollama.http11 import Http11Transport
from ollama_web.ollama.transport import build_client
from tests.ollama.streams import collect, drain

NODE = "http://ollama.internal:11434"
TAGS = {"models": [{"name": "llama3.2:latest", "model": "llama3.2:latest"}]}
Handler = Callable[[httpx.Request], httpx.Response]


def headers(**values: str) -> httpx.Headers:
    return httpx.Headers(values)


def test_unknown_model_gives_the_specified_details() -> None:
    error = error_from_response(404, headers(), b'{"error":"model \'x\' not found"}', model="x")
    assert isinstance(error, ModelNotFoundError)
    assert (error.status_code, error.code) == (404, "MODEL_NOT_FOUND")
    assert error.details == {"model_name": "x", "suggestion": MODEL_SUGGESTION}
    assert MODEL_SUGGESTION == "Check available models using /api/models endpoint"


@pytest.mark.parametrize("body", [b"404 page not found", b"", b"<html>Not Found</html>"])
def test_a_404_that_is_not_ollamas_json_is_no_missing_model(body: bytes) -> None:
    """Ollama's model 404s are JSON; a plain one is a path the node does not have (a wrong
    OLLAMA_URL): telling the user the model is missing would send them the wrong way."""
    error = error_from_response(404, headers(), body, model="llama3.2")
    assert isinstance(error, OllamaError)
    assert (error.status_code, error.code) == (502, "OLLAMA_ERROR")
    assert error.details["upstream_message"].endswith("no such API path here; check OLLAMA_URL")
    assert error.details["upstream_status"] == 404


def test_busy_gives_503_with_retry_after() -> None:
    body = b'{"error":"server busy, please try again.  maximum pending requests exceeded"}'
    error = error_from_response(503, headers(), body)
    assert isinstance(error, OllamaBusyError)
    assert (error.status_code, error.code, error.headers["Retry-After"]) == (
        503,
        "OLLAMA_BUSY",
        "2",
    )
    upstream = error_from_response(503, headers(**{"Retry-After": "7"}), body)
    assert upstream.headers["Retry-After"] == "7"
    assert error_from_response(429, headers(), b"").code == "OLLAMA_BUSY"


@pytest.mark.parametrize(
    ("status", "body", "message"),
    [
        (
            500,
            b'{"error":"model runner has unexpectedly stopped"}',
            "model runner has unexpectedly stopped",
        ),
        (400, b'{"error":"\\"m\\" does not support thinking"}', '"m" does not support thinking'),
        (404, b"404 page not found", "404 page not found: no such API path here; check OLLAMA_URL"),
        (405, b"405 method not allowed", "405 method not allowed"),
        (502, b"<html>bad gateway</html>", "<html>bad gateway</html>"),
        (500, b'{"error":{"message":"nested"}}', "nested"),
    ],
)
def test_anything_else_is_a_502_with_the_upstream_message(
    status: int, body: bytes, message: str
) -> None:
    error = error_from_response(status, headers(), body)
    assert isinstance(error, OllamaError)
    assert (error.status_code, error.code) == (502, "OLLAMA_ERROR")
    assert error.details["upstream_message"] == message
    assert error.details["upstream_status"] == status


def test_empty_403_from_the_host_or_origin_guard_is_explained() -> None:
    error = error_from_response(403, headers(), b"")
    assert error.status_code == 502
    assert "Host or Origin" in error.details["upstream_message"]


def test_upstream_timeouts_are_504() -> None:
    assert isinstance(error_from_response(504, headers(), b""), OllamaTimeoutError)


@pytest.mark.parametrize(
    ("exc", "kind", "status"),
    [
        (httpx.ConnectError("refused"), OllamaUnavailableError, 503),
        (httpx.ConnectTimeout(""), OllamaUnavailableError, 503),
        (httpx.ReadTimeout(""), OllamaTimeoutError, 504),
        (httpx.WriteTimeout(""), OllamaTimeoutError, 504),
        (httpx.PoolTimeout(""), OllamaBusyError, 503),
        (httpx.RemoteProtocolError("closed"), OllamaUnavailableError, 503),
    ],
)
def test_transport_failures(exc: httpx.TransportError, kind: type[AppError], status: int) -> None:
    error = error_from_transport(exc)
    assert isinstance(error, kind)
    assert error.status_code == status


@asynccontextmanager
async def mocked_gateway(settings: Settings, handler: Handler) -> AsyncIterator[OllamaGateway]:
    async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as client:
        yield OllamaGateway(settings, client)


def chat_handler(chat: Handler) -> Handler:
    def handle(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/api/tags":
            return httpx.Response(200, json=TAGS)
        if request.url.path == "/api/ps":
            return httpx.Response(200, json={"models": []})
        return chat(request)

    return handle


@pytest.fixture
def mock_settings(settings_factory: Callable[..., Settings]) -> Settings:
    return settings_factory(ollama_url=[NODE], ollama_health_cache_seconds=0.0)


async def test_a_stream_that_ends_without_done_is_incomplete(mock_settings: Settings) -> None:
    body = b'{"message":{"role":"assistant","content":"Hel"},"done":false}\n'
    handler = chat_handler(lambda r: httpx.Response(200, content=body))
    async with mocked_gateway(mock_settings, handler) as gateway:
        async with gateway.open_chat("llama3.2", [{"role": "user", "content": "hi"}]) as stream:
            seen: list[ChatChunk] = []
            with pytest.raises(OllamaStreamError) as caught:
                await drain(stream, seen)
        assert [chunk.content for chunk in seen] == ["Hel"]
        assert caught.value.kind == "incomplete"
        assert "stream incomplete" in (gateway.registry.nodes[0].last_error or "")
        assert gateway.registry.nodes[0].in_flight == 0


async def test_a_single_object_reply_without_newline_is_one_done_chunk(
    mock_settings: Settings,
) -> None:
    reply = {
        "model": "llama3.2",
        "message": {"role": "assistant", "content": ""},
        "done": True,
        "done_reason": "load",
    }
    handler = chat_handler(lambda r: httpx.Response(200, content=json.dumps(reply).encode()))
    async with (
        mocked_gateway(mock_settings, handler) as gateway,
        gateway.open_chat("llama3.2", []) as stream,
    ):
        chunks = await collect(stream)
    assert len(chunks) == 1
    assert chunks[0].done
    assert chunks[0].done_reason == "load"


async def test_requests_carry_only_our_headers(mock_settings: Settings) -> None:
    seen: list[httpx.Request] = []

    def chat(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, content=b'{"done":true}\n')

    async with (
        mocked_gateway(mock_settings, chat_handler(chat)) as gateway,
        gateway.open_chat("llama3.2", [{"role": "user", "content": "hi"}]) as stream,
    ):
        assert [c.done for c in await collect(stream)] == [True]
    (request,) = seen
    assert request.headers["host"] == "ollama.internal:11434"
    assert "origin" not in request.headers
    assert "cookie" not in request.headers
    assert request.headers["accept"] == "application/x-ndjson"
    assert json.loads(request.content) == {
        "model": "llama3.2:latest",
        "messages": [{"role": "user", "content": "hi"}],
        "stream": True,
    }


async def test_non_json_upstream_answers_never_leak_raw(mock_settings: Settings) -> None:
    handler = chat_handler(lambda r: httpx.Response(500, content=b"<html>panic</html>"))
    async with mocked_gateway(mock_settings, handler) as gateway:
        with pytest.raises(OllamaError) as caught:
            await gateway.chat_once("llama3.2", [{"role": "user", "content": "hi"}])
    assert caught.value.status_code == 502
    assert caught.value.details["upstream_message"] == "<html>panic</html>"


async def test_a_200_that_is_not_json_is_an_ollama_error(mock_settings: Settings) -> None:
    handler = chat_handler(lambda r: httpx.Response(200, content=b"Ollama is running"))
    async with mocked_gateway(mock_settings, handler) as gateway:
        with pytest.raises(OllamaError):
            await gateway.chat_once("llama3.2", [{"role": "user", "content": "hi"}])
        with pytest.raises(OllamaError):
            await gateway.show_model("llama3.2")


def test_the_client_has_explicit_limits_and_timeouts(
    settings_factory: Callable[..., Settings],
) -> None:
    settings = settings_factory(
        ollama_connect_timeout_seconds=1.5, ollama_timeout_seconds=120, ollama_max_connections=7
    )
    client = build_client(settings)
    assert client.timeout.connect == 1.5
    assert client.timeout.read == 120
    transport = client._transport
    assert isinstance(transport, Http11Transport)
    assert transport.max_connections == 7
    assert not client.trust_env
