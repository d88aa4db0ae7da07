#!/usr/bin/env python3
"""What the server's own code costs per relayed token, with no socket and no kernel.

bench/streaming.py measures the whole server process's CPU per token (sockets, event loop,
kernel, and every answer's own work spread over its tokens); this measures the Python path
one token takes through our code, in one process, with fake transports on both sides. A
token line of Ollama's chunked NDJSON is handed to the upstream connection's
`data_received`, as the event loop hands it, and goes:

- parse: the connection (httptools), the pumped body, the NDJSON line, the `ChatChunk`
  (`ChatStream.relay` with a callback that does nothing);
- generation: + the durable generation's callback (the text kept, the SSE frame made and
  logged, the metrics), with no client attached;
- client: + one attached SSE response writing the frame through uvicorn's own `send`
  (chunked encoding) to the response's transport, as a real stream does;
- minimal: for scale, the least any Python relay does per token (httptools' parse, a
  `json.loads`, an SSE frame, chunk encoding: the `sse` relay of bench/relay_floor.py).

Each is timed over `--tokens` calls, best of seven rounds, the garbage collector paused
during each (its cost is in bench/streaming.py's process CPU). Prints the numbers and writes
bench/results/token_path.json.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import logging
import time
from collections.abc import Callable
from typing import Any

import httpx
import uvloop
from chat_harness import write_result
from relay_floor import _Downstream, _Relay
from uvicorn.protocols.http.flow_control import FlowControl
from uvicorn.protocols.http.httptools_impl import RequestResponseCycle

from ollama_web.chat.generation import Generation, GenerationSpec
from ollama_web.chat.sse import SERVER_SEND, SSEResponse
from ollama_web.conversations.schemas import MessagePublic
from ollama_web.core.http_guard import _HeadHold
from ollama_web.db.base import utcnow
from ollama_web.ollama.chat import ChatStream
from ollama_web.ollama.chunks import ChatChunk
from ollama_web.ollama.connection import Connection, ResponseStream
from ollama_web.ollama.http11 import BODY_EXTENSION
from ollama_web.ollama.nodes import Node

LINE = (
    b'{"model":"llama3.2","created_at":"2026-11-30T10:00:00.000000Z",'
    b'"message":{"role":"assistant","content":" word"},"done":false}\n'
)
PIECE = b"%x\r\n%s\r\n" % (len(LINE), LINE)
"""One token as it comes off Ollama's socket: a chunk of the chunked body, one line."""
HEAD = (
    b"HTTP/1.1 200 OK\r\nContent-Type: application/x-ndjson\r\nTransfer-Encoding: chunked\r\n\r\n"
)
ROUNDS = 7


class FakeTransport:
    """Takes writes and counts their bytes; never full, never closing."""

    def __init__(self) -> None:
        self.written = 0
        self.closing = False

    def write(self, data: bytes) -> None:
        self.written += len(data)

    def is_closing(self) -> bool:
        return self.closing

    def close(self) -> None:
        self.closing = True

    def pause_reading(self) -> None:
        return None

    def resume_reading(self) -> None:
        return None

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return default


def upstream() -> tuple[Connection, ChatStream]:
    """A connection whose response head came, and the `ChatStream` reading its body."""
    loop = asyncio.get_running_loop()
    connection = Connection(loop, (b"http", "127.0.0.1", 11434))
    connection.connection_made(FakeTransport())  # type: ignore[arg-type]
    connection.start()
    connection.data_received(HEAD)
    body = ResponseStream(connection, 300.0, lambda _: None)
    response = httpx.Response(
        200, headers={"content-type": "application/x-ndjson"}, extensions={BODY_EXTENSION: body}
    )
    node = Node(url="http://127.0.0.1:11434", index=0, address="http://127.0.0.1:11434")

    async def opener() -> tuple[Node, httpx.Response]:
        return node, response

    return connection, ChatStream(opener, lambda _: None, lambda _node, _why: None)


class Gateway:
    """What a generation opens its chat with: the one `ChatStream` made above."""

    def __init__(self, stream: ChatStream) -> None:
        self.stream = stream

    def open_chat(self, *_: Any, **__: Any) -> ChatStream:
        return self.stream


def generation(stream: ChatStream) -> Generation:
    now = utcnow()
    answer = MessagePublic(
        id="a" * 32, conversation_id="c" * 32, parent_id="q" * 32, role="assistant",
        content="", status="pending", created_at=now, sibling_ids=["a" * 32],
    )  # fmt: skip
    spec = GenerationSpec("u" * 32, "c" * 32, "q" * 32, answer, "llama3.2:latest", [])
    # No checkpoint falls due while timed (its interval is long): nothing touches `writes`.
    return Generation(spec, Gateway(stream), None, 1e9)  # type: ignore[arg-type]


def client_cycle() -> tuple[RequestResponseCycle, FakeTransport]:
    """uvicorn's per-request object, writing (through our head-holding wrapper, as
    `ollama-web serve` runs it) to a fake transport."""
    transport = FakeTransport()
    loop = asyncio.get_running_loop()
    cycle = RequestResponseCycle(
        scope={"type": "http", "method": "POST", "http_version": "1.1"},  # type: ignore[typeddict-item]
        transport=_HeadHold(transport, loop),  # type: ignore[arg-type]
        flow=FlowControl(transport),  # type: ignore[arg-type]
        logger=logging.getLogger("bench"),
        access_logger=logging.getLogger("bench.access"),
        access_log=False,
        default_headers=[],
        message_event=asyncio.Event(),
        expect_100_continue=False,
        keep_alive=True,
        on_response=lambda: None,
    )
    return cycle, transport


def timed(feed: Callable[[bytes], None], tokens: int) -> float:
    """µs a token, best of ROUNDS rounds of `tokens` calls, the garbage collector paused
    during each (the log grows by every token: its collections here would time the
    benchmark's own pile of frames, not a token's path)."""
    for _ in range(1000):
        feed(PIECE)
    best = float("inf")
    for _ in range(ROUNDS):
        gc.collect()
        gc.disable()
        try:
            started = time.perf_counter()
            for _ in range(tokens):
                feed(PIECE)
            best = min(best, (time.perf_counter() - started) / tokens)
        finally:
            gc.enable()
    return best * 1e6


async def settle() -> None:
    for _ in range(20):
        await asyncio.sleep(0)


async def parse(tokens: int) -> tuple[float, int]:
    connection, stream = upstream()
    seen = 0

    def on_chunk(chunk: ChatChunk) -> None:
        nonlocal seen
        seen += bool(chunk.content)

    async def relay() -> None:
        async with stream:
            await stream.relay(on_chunk)

    task = asyncio.create_task(relay())
    await settle()
    cost = timed(connection.data_received, tokens)
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    return cost, seen


async def through_generation(tokens: int, with_client: bool) -> tuple[float, int]:
    connection, stream = upstream()
    job = generation(stream)
    job.start(lambda _: None)
    gone = asyncio.Event()
    response: asyncio.Task[None] | None = None
    written: FakeTransport | None = None
    if with_client:
        cycle, written = client_cycle()

        async def receive() -> dict[str, Any]:
            await gone.wait()
            return {"type": "http.disconnect"}

        scope = {"type": "http", SERVER_SEND: cycle.send}
        sse = SSEResponse(lambda: job.log, keepalive_seconds=600)
        response = asyncio.create_task(sse(scope, receive, cycle.send))  # type: ignore[arg-type]
    await settle()
    cost = timed(connection.data_received, tokens)
    frames = len(job.log.frames)
    if written is not None and written.written < frames * 40:
        raise RuntimeError("the client was not written to")
    job.cancel()
    gone.set()
    await job.wait()
    if response is not None:
        await asyncio.gather(response, return_exceptions=True)
    return cost, frames - 1  # less the start event


def minimal() -> _Relay:
    """bench/relay_floor.py's SSE relay, its downstream a fake transport."""
    relay = _Relay(sink_port=0, sse=True)
    relay.down = _Downstream()
    relay.down.transport = FakeTransport()  # type: ignore[assignment]
    relay.parser.feed_data(HEAD)
    return relay


async def main(tokens: int) -> dict[str, Any]:
    results: dict[str, Any] = {"tokens_per_round": tokens, "rounds": ROUNDS}
    steps = {
        "parse": lambda: parse(tokens),
        "generation": lambda: through_generation(tokens, with_client=False),
        "client": lambda: through_generation(tokens, with_client=True),
    }
    for name, step in steps.items():
        cost, relayed = await step()
        if relayed < tokens * ROUNDS:
            raise RuntimeError(f"{name}: {relayed} tokens relayed of {tokens * ROUNDS}")
        results[f"{name}_us_per_token"] = round(cost, 2)
        print(f"{name:>10}: {cost:6.2f} µs a token", flush=True)
    results["minimal_us_per_token"] = round(timed(minimal().parser.feed_data, tokens), 2)
    print(f"{'minimal':>10}: {results['minimal_us_per_token']:6.2f} µs a token")
    return results


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--tokens", type=int, default=20_000)
    args = parser.parse_args()
    result = uvloop.run(main(args.tokens))
    print(f"wrote {write_result('token_path', result)}")
