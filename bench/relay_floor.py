#!/usr/bin/env python3
"""What relaying one paced token costs Python on this machine, with no framework at all.

bench/streaming.py measures the server's CPU per token in the paced regime (each token in a
read and a write of its own, as from a real Ollama), and bench/floor_app.py what FastAPI,
uvicorn and httpx cost for the same relay. This goes below both: three processes on loopback,
a source sending Ollama's chunked NDJSON lines (100 streams x 50 tokens/s), the relay
(measured: process CPU time / tokens), and a sink. The relay is plain `asyncio.Protocol`s on
uvloop, callbacks only (no task, no ASGI, no pool), in two forms:

- bytes: each received chunk is written on as it came (the cost of the loop and two sockets);
- sse: httptools parses the chunked body, each line goes through `json.loads`, each token
  becomes an SSE frame with an id, chunk-encoded to the client (the least any SSE relay of
  Ollama does).

Prints the numbers and writes bench/results/relay_floor.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import time
from typing import Any, cast

import httptools
import uvloop
from chat_harness import free_port, write_result

LINE = (
    b'{"model":"llama3.2","created_at":"2026-11-30T10:00:00.000000Z",'
    b'"message":{"role":"assistant","content":" word"},"done":false}\n'
)
RESPONSE_HEAD = (
    b"HTTP/1.1 200 OK\r\nContent-Type: application/x-ndjson\r\nTransfer-Encoding: chunked\r\n\r\n"
)
SSE_HEAD = (
    b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n"
)


class _Sink(asyncio.Protocol):
    def data_received(self, data: bytes) -> None:
        return None


def sink(port: int, seconds: float) -> None:
    async def main() -> None:
        server = await asyncio.get_running_loop().create_server(_Sink, "127.0.0.1", port)
        await asyncio.sleep(seconds)
        server.close()

    uvloop.run(main())


def source(port: int, streams: int, rate: float, seconds: float) -> None:
    """`streams` connections to the relay, each a chunked NDJSON body, one line every
    1/`rate` seconds, their starts spread over one interval."""

    async def one(index: int) -> None:
        _, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(RESPONSE_HEAD)
        await asyncio.sleep(index / streams / rate)
        chunk = b"%x\r\n%s\r\n" % (len(LINE), LINE)
        next_at = time.perf_counter()
        end = next_at + seconds
        while time.perf_counter() < end:
            writer.write(chunk)
            next_at += 1 / rate
            await asyncio.sleep(max(0.0, next_at - time.perf_counter()))
        writer.close()

    async def main() -> None:
        await asyncio.gather(*(one(i) for i in range(streams)))

    uvloop.run(main())


class _Downstream(asyncio.Protocol):
    transport: asyncio.Transport

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass


class _Relay(asyncio.Protocol):
    """One upstream connection; its bytes or tokens go to one downstream connection."""

    tokens = 0

    def __init__(self, sink_port: int, sse: bool) -> None:
        self.sink_port = sink_port
        self.sse = sse
        self.down: _Downstream | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.tail = b""
        self.event_id = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        asyncio.get_running_loop().create_task(self._connect())

    async def _connect(self) -> None:
        loop = asyncio.get_running_loop()
        _, self.down = await loop.create_connection(_Downstream, "127.0.0.1", self.sink_port)
        if self.sse:
            self.down.transport.write(SSE_HEAD)

    def data_received(self, data: bytes) -> None:
        if self.sse:
            self.parser.feed_data(data)
            return
        _Relay.tokens += data.count(b'"done":')
        if self.down is not None:
            self.down.transport.write(data)

    def on_body(self, body: bytes) -> None:
        *lines, self.tail = (self.tail + body).split(b"\n")
        frames = []
        for line in lines:
            text = json.loads(line)["message"]["content"]
            self.event_id += 1
            frames.append(
                f'id: {self.event_id}\nevent: token\ndata: {{"content":{json.dumps(text)}}}\n\n'
            )
        _Relay.tokens += len(frames)
        if frames and self.down is not None:
            frame = "".join(frames).encode()
            self.down.transport.write(b"%x\r\n%s\r\n" % (len(frame), frame))


def relay(port: int, sink_port: int, sse: bool, warmup: float, seconds: float, out: Any) -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        server = await loop.create_server(lambda: _Relay(sink_port, sse), "127.0.0.1", port)
        await asyncio.sleep(warmup)
        cpu, tokens = time.process_time(), _Relay.tokens
        await asyncio.sleep(seconds)
        out.put((time.process_time() - cpu, _Relay.tokens - tokens))
        server.close()

    uvloop.run(main())


def measure(sse: bool, streams: int, rate: float, seconds: float) -> dict[str, Any]:
    relay_port, sink_port = free_port(), free_port()
    warmup = 2.0
    out: Any = multiprocessing.Queue()
    processes = [
        multiprocessing.Process(target=sink, args=(sink_port, seconds + warmup + 5)),
        multiprocessing.Process(
            target=relay, args=(relay_port, sink_port, sse, warmup, seconds, out)
        ),
        multiprocessing.Process(target=source, args=(relay_port, streams, rate, seconds + 3)),
    ]
    try:
        for process in processes:
            process.start()
            time.sleep(0.3)  # each listens before the next connects
        cpu, tokens = out.get(timeout=seconds + warmup + 30)
    finally:  # the source first: a relay still writing to a gone sink reports each stream
        for process in reversed(processes):
            process.terminate()
            process.join()
    return {
        "relay": "sse" if sse else "bytes",
        "streams": streams,
        "tokens_per_second_each": rate,
        "tokens_relayed": tokens,
        "cpu_us_per_token": round(cpu / tokens * 1e6, 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--streams", type=int, default=100)
    parser.add_argument("--rate", type=float, default=50.0, help="tokens per second per stream")
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--rounds", type=int, default=2, help="alternating runs of each form")
    args = parser.parse_args()
    runs = [
        measure(sse, args.streams, args.rate, args.seconds)
        for _ in range(args.rounds)
        for sse in (False, True)
    ]
    for run in runs:
        print(f"{run['relay']:5s}  {run['tokens_relayed']:6d} tokens  {run['cpu_us_per_token']} µs")
    path = write_result("relay_floor", {"runs": runs})
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
