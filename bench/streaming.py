#!/usr/bin/env python3
"""Chat streaming through the backend, side by side with a direct client to the same emulator.

Each scenario starts the Ollama emulator and the app (uvicorn, uvloop, one worker, SQLite in
a fresh DATA_DIR) as separate processes on loopback (with `--pin`, the server on a CPU of its
own: see `Placement`), then:

- ttft: time to the first token through the backend (`POST /api/chat/stream`, a new
  conversation each time) and directly (`POST /api/chat` on the emulator); added = backend -
  direct. "steady": 50 streams always in flight (20 tokens at 20 tokens/s each), their
  starts spread over one second, so new chats arrive one by one, ~50 a second. Its
  "continue" and "regenerate" parts are the same load with each client continuing a
  conversation of its own (one new conversation a client, then its next turns: the context
  grows by two messages a chat), or answering its first question again and again (each
  answer a new version beside the others); its "cookie" part sends new conversations with
  a browser's session cookie and CSRF token instead of an API key. "burst": 50 chats sent
  at the same instant, 10 times; the last one waits for the 49 before it.
- throughput: complete 20-token chats per second at 8 concurrent (emulator at full speed),
  and the latency of one chat alone.
- floor: the throughput and steady-TTFT loads on bench/floor_app.py, the thinnest FastAPI
  app relaying a chat (no authentication, database, middleware, title): what the framework
  alone costs.
- cpu: server process CPU time (utime + stime from /proc) / tokens relayed, at a paced
  rate (100 streams x 50 tokens/s: each token comes in a read of its own and leaves in a
  write of its own, as from a real Ollama) and in bursts (8 streams at full speed, 2000
  tokens). A burst's cost per token depends on how many tokens each read brings (with the
  server pinned to a CPU of its own, about one: close to the paced cost; unpinned, several).
  The paced load is also run on bench/floor_app.py (cpu_paced_floor): what FastAPI and
  uvicorn alone pay per token; and with answers of 1000 tokens (cpu_paced_long, 100
  streams, one answer each): what is left per token once each answer's own work (its
  request, stored turn, title, final write) is spread over five times more tokens.
  In those, each stream has its own clock, so the tokens of 100 streams come spread over
  each 20 ms. The cpu_paced_batched* runs are the same loads with the emulator's
  `--batched-decode`: the tokens of concurrent answers come at the model's shared decode
  steps, as from a runner decoding them in one batch (llama.cpp's continuous batching,
  Ollama with OLLAMA_NUM_PARALLEL > 1), so each wake of the server brings many tokens.
  bench/token_path.py times our own code's part of a token's cost, without sockets.
  bench/relay_floor.py measures the paced regime with no framework at all (uvloop
  protocols, httptools, json, SSE frames): what any Python relay of Ollama pays per token
  here.
- slow: 1000 concurrent streams at 10 tokens/s; peak resident memory of the server.

Prints the numbers and writes bench/results/streaming.json.
Targets (issue 5): added TTFT p50 <= 2 ms, p99 <= 10 ms; <= 25 us CPU per token;
>= 300 chats/s at 8 concurrent; 1000 slow streams in <= 300 MB.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import uvloop
from chat_harness import (
    Connection,
    Placement,
    Server,
    cpu_seconds,
    login,
    percentiles,
    rss_mb,
    setup_user,
    start_emulator,
    write_result,
)

MODEL = "llama3.2"
TOKEN_MARK = b"event: token"
DONE_MARK = b"event: done"


class Side:
    """How one request is made: through the backend or straight to the emulator."""

    def __init__(
        self,
        name: str,
        url: str,
        api_key: str | None = None,
        sse: bool = False,
        turn: str = "new",
        headers: dict[str, str] | None = None,
    ):
        self.name = name
        self.url = url
        self.api_key = api_key
        self.sse = sse or api_key is not None
        # "new": a new conversation each chat; after its first chat, a connection's chats
        # "continue" its conversation or "regenerate" its first answer.
        self.turn = turn
        self.headers = headers  # other credentials than the API key (a browser's cookie)

    async def chat(self, connection: Connection) -> tuple[float, float, int]:
        """One streamed chat: (time to first token, total time, tokens seen)."""
        started = time.perf_counter()
        if self.sse:
            auth = self.headers or (
                {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}
            )
            body = {"model": MODEL, "content": "Say something nice."}
            if self.turn == "continue" and connection.conversation_id is not None:
                body["conversation_id"] = connection.conversation_id
            elif self.turn == "regenerate" and connection.answer_id is not None:
                body = {"regenerate_message_id": connection.answer_id}
            connection.send("POST", "/api/chat/stream", body, auth)
            first_mark, end_mark = TOKEN_MARK, DONE_MARK
        else:
            body = {"model": MODEL, "messages": [{"role": "user", "content": "Say something."}]}
            connection.send("POST", "/api/chat", body)
            first_mark, end_mark = b'"done":false', b'"done":true'
        status, headers = await connection.head()
        if status != 200:
            raise RuntimeError(f"{self.name}: HTTP {status}")
        first = 0.0
        tokens = 0
        ended = False
        tail = b""
        async for chunk in connection.body(headers):
            if self.turn != "new" and connection.conversation_id is None:
                _note_start(connection, chunk)
            if not first and first_mark in chunk:
                first = time.perf_counter() - started
            tokens += chunk.count(first_mark)
            ended = ended or end_mark in chunk
            tail = (tail + chunk)[-400:]
        if not ended:
            raise RuntimeError(f"{self.name}: stream ended without done: ...{tail!r}")
        return first, time.perf_counter() - started, tokens


def _note_start(connection: Connection, chunk: bytes) -> None:
    """The conversation and answer ids of a `start` event in `chunk`, if there is one."""
    for line in chunk.split(b"\n"):
        if line.startswith(b"data: ") and b'"assistant_message_id"' in line:
            start = json.loads(line[6:])
            connection.conversation_id = start["conversation_id"]
            connection.answer_id = start["assistant_message_id"]


async def run_loops(
    side: Side,
    concurrency: int,
    seconds: float,
    on_result: Callable[[float, float, int], None],
    spread: float = 0.0,
) -> int:
    """`concurrency` keep-alive clients chatting back to back for `seconds`; chats done.
    With `spread`, client i starts i * spread / concurrency seconds late (steady arrivals)."""
    deadline = time.perf_counter() + seconds
    done = 0

    async def loop(index: int) -> None:
        nonlocal done
        await asyncio.sleep(index * spread / concurrency)
        connection = await Connection.to(side.url)
        try:
            while time.perf_counter() < deadline:
                on_result(*await side.chat(connection))
                done += 1
        finally:
            connection.close()

    await asyncio.gather(*(loop(i) for i in range(concurrency)))
    return done


class Scenario:
    """An emulator with the given knobs and a fresh server pointed at it."""

    def __init__(self, *emulator_args: str) -> None:
        self.emulator_args = emulator_args

    async def __aenter__(self) -> tuple[Side, Side, Server]:
        self.emulator, url = start_emulator("--models", MODEL, *self.emulator_args)
        self.server = Server(url)
        try:
            self.server.start()
            api_key, _ = await setup_user(self.server.base)
        except BaseException:  # a server that would not start leaves no emulator behind
            await self.__aexit__()
            raise
        return Side("direct", url), Side("backend", self.server.base, api_key), self.server

    async def __aexit__(self, *exc: object) -> None:
        self.server.stop()
        self.emulator.terminate()
        self.emulator.wait()


def _added(result: dict[str, Any]) -> dict[str, float]:
    return {
        key: round(result["backend"][key] - result["direct"][key], 3)
        for key in ("p50_ms", "p90_ms", "p99_ms")
    }


async def ttft(seconds: float) -> dict[str, Any]:
    """Steady: 50 streams always in flight, their starts spread over one stream's length (1 s),
    so about 50 new chats a second arrive one by one. Burst: 50 chats sent at the same instant
    (10 rounds); the last of them waits for the 49 before it to be admitted."""
    result: dict[str, Any] = {"concurrency": 50, "tokens_per_stream": 20, "tokens_per_second": 20}
    async with Scenario("--reply-tokens", "20", "--tokens-per-second", "20") as (
        direct,
        backend,
        _,
    ):
        await run_loops(backend, 8, 2.0, lambda *_: None)  # warm up (imports, pools, caches)
        steady: dict[str, Any] = {}
        burst: dict[str, Any] = {}
        for side in (direct, backend):
            samples: list[float] = []
            record = lambda first, *_, out=samples: out.append(first)  # noqa: E731
            await run_loops(side, 50, seconds, record, spread=1.0)
            steady[side.name] = percentiles(samples)
            for turn in ("continue", "regenerate", "cookie") if side is backend else ():
                later: list[float] = []
                if turn == "cookie":  # a new conversation each chat, as a browser logged in
                    cookie = await login(side.url)
                    again = Side("backend", side.url, side.api_key, headers=cookie)
                else:
                    again = Side("backend", side.url, side.api_key, turn=turn)
                keep = lambda first, *_, out=later: out.append(first)  # noqa: E731
                await run_loops(again, 50, seconds, keep, spread=1.0)
                steady[turn] = {"backend": percentiles(later)}
            samples = []
            connections = [await Connection.to(side.url) for _ in range(50)]
            for _ in range(10):
                for first, _total, _seen in await asyncio.gather(
                    *(side.chat(connection) for connection in connections)
                ):
                    samples.append(first)
            for connection in connections:
                connection.close()
            burst[side.name] = percentiles(samples)
        steady["added"] = _added(steady)
        for turn in ("continue", "regenerate", "cookie"):
            steady[turn]["added"] = _added({**steady[turn], "direct": steady["direct"]})
        burst["added"] = _added(burst)
    return {**result, "steady": steady, "burst": burst}


async def throughput(seconds: float) -> dict[str, Any]:
    result: dict[str, Any] = {"concurrency": 8, "tokens_per_chat": 20}
    async with Scenario("--reply-tokens", "20") as (direct, backend, server):
        await run_loops(backend, 8, 2.0, lambda *_: None)
        for side in (direct, backend):
            single: list[float] = []
            await run_loops(side, 1, 3.0, lambda _f, total, _t, out=single: out.append(total))
            totals: list[float] = []
            cpu_before = cpu_seconds(server.pid)
            started = time.perf_counter()
            chats = await run_loops(
                side, 8, seconds, lambda _f, total, _t, out=totals: out.append(total)
            )
            elapsed = time.perf_counter() - started
            result[side.name] = {
                "chats_per_second": round(chats / elapsed, 1),
                "chat_latency_at_8": percentiles(totals),
                "one_chat_alone": percentiles(single),
            }
            if side is backend:
                used = cpu_seconds(server.pid) - cpu_before
                result[side.name]["server_cpu_ms_per_chat"] = round(used / chats * 1000, 3)
    return result


async def floor(seconds: float) -> dict[str, Any]:
    """The throughput and steady-TTFT scenarios against bench/floor_app.py: FastAPI, uvicorn
    and httpx relaying the same chats with nothing else (no auth, database, middleware or
    title)."""
    result: dict[str, Any] = {"concurrency": 8, "tokens_per_chat": 20}
    async with _floor("--reply-tokens", "20") as (_, side, server):
        await run_loops(side, 8, 2.0, lambda *_: None)
        cpu_before = cpu_seconds(server.pid)
        started = time.perf_counter()
        chats = await run_loops(side, 8, seconds, lambda *_: None)
        elapsed = time.perf_counter() - started
        used = cpu_seconds(server.pid) - cpu_before
    result["chats_per_second"] = round(chats / elapsed, 1)
    result["server_cpu_ms_per_chat"] = round(used / chats * 1000, 3)
    steady: dict[str, Any] = {}
    async with _floor("--reply-tokens", "20", "--tokens-per-second", "20") as (direct, side, _):
        await run_loops(side, 8, 2.0, lambda *_: None)
        for one in (direct, side):
            samples: list[float] = []
            record = lambda first, *_, out=samples: out.append(first)  # noqa: E731
            await run_loops(one, 50, seconds, record, spread=1.0)
            steady["backend" if one is side else "direct"] = percentiles(samples)
    steady["added"] = _added(steady)
    result["ttft_steady_50"] = steady
    return result


@asynccontextmanager
async def _floor(*emulator_args: str) -> AsyncIterator[tuple[Side, Side, Server]]:
    emulator, url = start_emulator("--models", MODEL, *emulator_args)
    server = Server(url, app="floor_app:app")
    try:
        server.start()
        yield Side("direct", url), Side("floor", server.base, sse=True), server
    finally:
        server.stop()
        emulator.terminate()
        emulator.wait()


async def cpu_per_token(
    label: str,
    streams: int,
    tokens: int,
    tps: str,
    on_floor: bool = False,
    rounds: int = 2,
    batched: bool = False,
) -> dict[str, Any]:
    args = ["--reply-tokens", str(tokens)] + (["--tokens-per-second", tps] if tps else [])
    args += ["--batched-decode"] if batched else []
    async with _floor(*args) if on_floor else Scenario(*args) as (_, backend, server):
        await run_loops(backend, 4, 1.0, lambda *_: None)
        relayed = 0

        def count(_first: float, _total: float, seen: int) -> None:
            nonlocal relayed
            relayed += seen

        before = cpu_seconds(server.pid)

        async def one(connection: Connection) -> None:
            for _ in range(rounds):
                count(*await backend.chat(connection))

        connections = [await Connection.to(backend.url) for _ in range(streams)]
        await asyncio.gather(*(one(c) for c in connections))
        for connection in connections:
            connection.close()
        await asyncio.sleep(0.5)  # background title requests finish
        used = cpu_seconds(server.pid) - before
    return {
        "server": "floor_app" if on_floor else "backend",
        "regime": label,
        "streams": streams,
        "tokens_per_stream": tokens,
        "answers": streams * rounds,
        "tokens_relayed": relayed,
        "server_cpu_seconds": round(used, 3),
        "cpu_us_per_token": round(used / relayed * 1e6, 2),
    }


async def slow_streams(count: int, tokens: int) -> dict[str, Any]:
    async with Scenario("--reply-tokens", str(tokens), "--tokens-per-second", "10") as scenario:
        _, backend, server = scenario
        await run_loops(backend, 1, 0.1, lambda *_: None)  # the key's first use is recorded
        idle_rss = rss_mb(server.pid)
        peak = idle_rss
        firsts: list[float] = []
        complete = 0
        stop_sampling = asyncio.Event()

        async def sample() -> None:
            nonlocal peak
            while not stop_sampling.is_set():
                peak = max(peak, rss_mb(server.pid))
                await asyncio.sleep(0.25)

        async def one() -> None:
            nonlocal complete
            connection = await Connection.to(backend.url)
            try:
                first, _total, seen = await backend.chat(connection)
            finally:
                connection.close()
            firsts.append(first)
            complete += seen == tokens

        sampler = asyncio.create_task(sample())
        started = time.perf_counter()
        await asyncio.gather(*(one() for _ in range(count)))
        elapsed = time.perf_counter() - started
        stop_sampling.set()
        await sampler
    return {
        "streams": count,
        "tokens_per_stream": tokens,
        "tokens_per_second_each": 10,
        "streams_complete_with_every_token": complete,
        "wall_seconds": round(elapsed, 2),
        "server_rss_idle_mb": round(idle_rss, 1),
        "server_rss_peak_mb": round(peak, 1),
        "ttft_under_load": percentiles(firsts),
    }


async def main(args: argparse.Namespace) -> dict[str, Any]:
    steps: dict[str, Callable[[], Awaitable[dict[str, Any]]]] = {
        "ttft": lambda: ttft(args.seconds),
        "throughput": lambda: throughput(args.seconds),
        "floor": lambda: floor(args.seconds),
        "cpu_paced": lambda: cpu_per_token("paced", 100, 200, "50"),
        "cpu_paced_floor": lambda: cpu_per_token("paced", 100, 200, "50", on_floor=True),
        "cpu_paced_long": lambda: cpu_per_token("paced", 100, 1000, "50", rounds=1),
        "cpu_paced_batched": lambda: cpu_per_token("paced, batched", 100, 200, "50", batched=True),
        "cpu_paced_batched_floor": lambda: cpu_per_token(
            "paced, batched", 100, 200, "50", on_floor=True, batched=True
        ),
        "cpu_paced_batched_long": lambda: cpu_per_token(
            "paced, batched", 100, 1000, "50", rounds=1, batched=True
        ),
        "cpu_burst": lambda: cpu_per_token("burst", 8, 2000, ""),
        "slow_streams": lambda: slow_streams(args.slow_streams, args.slow_tokens),
    }
    Placement.pin = args.pin
    Placement.others()
    result: dict[str, Any] = {}
    for name in args.only or list(steps):
        print(f"== {name}", flush=True)
        result[name] = await steps[name]()
        print(result[name], flush=True)
    return result


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--slow-streams", type=int, default=1000)
    parser.add_argument("--slow-tokens", type=int, default=100)
    parser.add_argument(
        "--pin", action="store_true", help="the server on a CPU of its own, the rest on the others"
    )
    parser.add_argument(
        "--only",
        nargs="*",
        choices=[
            "ttft",
            "throughput",
            "floor",
            "cpu_paced",
            "cpu_paced_floor",
            "cpu_paced_long",
            "cpu_paced_batched",
            "cpu_paced_batched_floor",
            "cpu_paced_batched_long",
            "cpu_burst",
            "slow_streams",
        ],
    )
    arguments = parser.parse_args()
    report = uvloop.run(main(arguments))
    path = write_result("streaming" if not arguments.only else "streaming-partial", report)
    print(f"wrote {path}")
