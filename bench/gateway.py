#!/usr/bin/env python3
"""The Ollama gateway: listing with a node down, pooled-client overhead, connection reuse.

Starts the Ollama emulator (in a thread with its own event loop, so its connection counter
can be read) and `ollama-web serve` on loopback, with OLLAMA_URL = the emulator plus a
blackholed address (a TCP connect that never completes). Then, in one run:

1. `GET /api/models` through the app with that node down: every answer must come within
   OLLAMA_CONNECT_TIMEOUT_SECONDS + 50 ms (the down node is retried when its back-off ends,
   which costs at most the connect timeout), and the emulator must see no new TCP connection
   per request (OLLAMA_HEALTH_CACHE_SECONDS=0, so every listing reaches the emulator).
2. The pooled gateway client vs a direct httpx client to the same emulator, interleaved:
   a non-streamed chat and a streamed chat; the gateway may add at most 1 ms at p50, and
   opens no new connection after warm-up.

Prints the numbers and writes bench/results/gateway.json.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx

from ollama_web.core.config import Settings
from ollama_web.emulator import EmulatorConfig, ModelSpec, OllamaEmulator
from ollama_web.ollama.lifespan import gateway_scope

RESULTS = Path(__file__).resolve().parent / "results"
HI = [{"role": "user", "content": "Hi"}]
LIST_MARGIN_MS = 50.0
OVERHEAD_TARGET_MS = 1.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class EmulatorThread:
    """The emulator on its own event loop in a daemon thread."""

    def __init__(self, config: EmulatorConfig) -> None:
        self.config = config
        self.emulator: OllamaEmulator | None = None
        self._ready = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._thread = threading.Thread(target=lambda: asyncio.run(self._main()), daemon=True)

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        async with OllamaEmulator(self.config) as emulator:
            self.emulator = emulator
            self._ready.set()
            await self._stop.wait()

    def __enter__(self) -> OllamaEmulator:
        self._thread.start()
        if not self._ready.wait(10) or self.emulator is None:
            raise RuntimeError("the emulator did not start")
        return self.emulator

    def __exit__(self, *exc_info: object) -> None:
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(10)


class Blackhole:
    """A listener with a full accept queue that never accepts: connects hang."""

    def __init__(self) -> None:
        self.server = socket.socket()
        self.server.bind(("127.0.0.1", 0))
        self.server.listen(0)
        self.port = self.server.getsockname()[1]
        self.fillers: list[socket.socket] = []
        for _ in range(3):
            filler = socket.socket()
            filler.setblocking(False)
            with contextlib.suppress(BlockingIOError):
                filler.connect(("127.0.0.1", self.port))
            self.fillers.append(filler)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def close(self) -> None:
        for sock in [*self.fillers, self.server]:
            sock.close()


def start_app(directory: str, ollama_urls: list[str], connect_timeout: float) -> tuple[Any, str]:
    port = free_port()
    env = {
        **{k: v for k, v in os.environ.items() if k not in {"SECRET_KEY", "DATABASE_URL"}},
        "DATA_DIR": f"{directory}/data",
        "LOG_DIR": f"{directory}/logs",
        "BACKUP_DIR": f"{directory}/backups",
        "OLLAMA_URL": ",".join(ollama_urls),
        "OLLAMA_CONNECT_TIMEOUT_SECONDS": str(connect_timeout),
        "OLLAMA_HEALTH_CACHE_SECONDS": "0",
        "RATE_LIMIT_ENABLED": "false",
        "BACKUP_ENABLED": "false",
        "LOG_LEVEL": "WARNING",
    }
    process = subprocess.Popen(
        [sys.executable, "-m", "ollama_web", "serve", "--port", str(port)],
        env=env,
        cwd=directory,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    base_url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            httpx.get(f"{base_url}/health/live", timeout=1).raise_for_status()
            return process, base_url
        except httpx.HTTPError:
            time.sleep(0.02)
    process.terminate()
    raise RuntimeError("the app did not start")


def summary(samples_ms: list[float]) -> dict[str, float]:
    ordered = sorted(samples_ms)
    return {
        "n": len(ordered),
        "p50_ms": round(statistics.median(ordered), 3),
        "p95_ms": round(ordered[int(0.95 * (len(ordered) - 1))], 3),
        "max_ms": round(ordered[-1], 3),
    }


async def bench_listing(
    base_url: str, emulator: OllamaEmulator, connect_timeout: float, duration: float
) -> dict[str, Any]:
    async with httpx.AsyncClient(base_url=base_url, timeout=30) as client:
        setup = await client.post(
            "/api/auth/setup", json={"username": "bench", "password": "bench-password-1234"}
        )
        setup.raise_for_status()
        headers = {"Authorization": f"Bearer {setup.json()['api_key']}"}
        # Warm what every first request pays (pool connection, compiled auth queries) on a
        # route that never calls Ollama, so the first listing measures the nodes' cost.
        (await client.get("/api/auth/me", headers=headers)).raise_for_status()
        started = time.perf_counter()
        first = await client.get("/api/models", headers=headers)
        first_ms = (time.perf_counter() - started) * 1000
        first.raise_for_status()
        opened_before = emulator.connections_opened
        samples: list[float] = []
        statuses: set[int] = set()
        deadline = time.monotonic() + duration
        while time.monotonic() < deadline:
            started = time.perf_counter()
            response = await client.get("/api/models", headers=headers)
            samples.append((time.perf_counter() - started) * 1000)
            statuses.add(response.status_code)
            await asyncio.sleep(0.01)
        opened = emulator.connections_opened - opened_before
    down = [n for n in first.json()["nodes"] if n["status"] == "down"]
    limit_ms = connect_timeout * 1000 + LIST_MARGIN_MS
    worst = max([first_ms, *samples])
    return {
        "connect_timeout_seconds": connect_timeout,
        "first_request_ms": round(first_ms, 3),
        "down_node_reported": bool(down),
        "down_node_error": down[0]["error"] if down else None,
        "statuses": sorted(statuses),
        **summary(samples),
        "worst_ms": round(worst, 3),
        "backoff_retries_seen": sum(1 for ms in samples if ms >= connect_timeout * 1000),
        "limit_ms": limit_ms,
        "within_limit": worst <= limit_ms,
        "requests_after_warmup": len(samples),
        "emulator_connections_opened_after_warmup": opened,
    }


Operation = Callable[[], Awaitable[object]]


async def interleaved(direct: Operation, gateway: Operation, rounds: int) -> dict[str, Any]:
    for _ in range(20):  # warm-up: pools filled, caches primed
        await direct()
        await gateway()
    direct_ms: list[float] = []
    gateway_ms: list[float] = []
    for _ in range(rounds):
        for operation, samples in ((direct, direct_ms), (gateway, gateway_ms)):
            started = time.perf_counter()
            await operation()
            samples.append((time.perf_counter() - started) * 1000)
    direct_summary, gateway_summary = summary(direct_ms), summary(gateway_ms)
    added = gateway_summary["p50_ms"] - direct_summary["p50_ms"]
    return {
        "direct": direct_summary,
        "gateway": gateway_summary,
        "added_p50_ms": round(added, 3),
        "within_target": added <= OVERHEAD_TARGET_MS,
    }


async def bench_overhead(emulator: OllamaEmulator, rounds: int) -> dict[str, Any]:
    settings = Settings(_env_file=None, ollama_url=[emulator.url])
    body = {"model": "llama3.2:latest", "messages": HI}
    async with (
        httpx.AsyncClient(timeout=30) as direct_client,
        gateway_scope(settings) as gateway,
    ):

        async def direct_once() -> object:
            response = await direct_client.post(
                f"{emulator.url}/api/chat", json={**body, "stream": False}
            )
            return response.json()

        async def direct_stream() -> object:
            lines = []
            async with direct_client.stream(
                "POST", f"{emulator.url}/api/chat", json={**body, "stream": True}
            ) as response:
                async for line in response.aiter_lines():
                    if line:
                        lines.append(json.loads(line))
            return lines

        async def gateway_once() -> object:
            return await gateway.chat_once("llama3.2", HI)

        async def gateway_stream() -> object:
            async with gateway.open_chat("llama3.2", HI) as stream:
                return [chunk async for chunk in stream]

        await gateway_once()
        await direct_once()
        opened_before = emulator.connections_opened
        once = await interleaved(direct_once, gateway_once, rounds)
        streamed = await interleaved(direct_stream, gateway_stream, rounds)
        # Both clients were warm: any connection opened now would be a per-request one.
        opened = emulator.connections_opened - opened_before
    return {
        "chat_stream_false": once,
        "chat_streamed": streamed,
        "emulator_connections_opened_during_runs": opened,
        "requests_during_runs": 4 * (rounds + 20),
    }


async def run(args: argparse.Namespace) -> dict[str, Any]:
    config = EmulatorConfig(
        models=[ModelSpec.preset("llama3.2"), ModelSpec.preset("qwen3")],
        reply_tokens=args.reply_tokens,
    )
    blackhole = Blackhole()
    try:
        with EmulatorThread(config) as emulator, tempfile.TemporaryDirectory() as directory:
            urls = [emulator.url, blackhole.url]
            process, base_url = start_app(directory, urls, args.connect_timeout)
            try:
                listing = await bench_listing(
                    base_url, emulator, args.connect_timeout, args.duration
                )
            finally:
                process.terminate()
                process.wait(timeout=30)
            overhead = await bench_overhead(emulator, args.rounds)
    finally:
        blackhole.close()
    return {
        "models_with_one_node_down": listing,
        "pooled_client_overhead": overhead,
        "targets": {
            "models_with_node_down_ms": "connect timeout + 50",
            "added_p50_ms": OVERHEAD_TARGET_MS,
            "new_connections_per_request": 0,
        },
        "cpus": os.cpu_count(),
    }


def report(results: dict[str, Any]) -> None:
    listing = results["models_with_one_node_down"]
    overhead = results["pooled_client_overhead"]
    print("GET /api/models with one node blackholed (through the app):")
    print(
        f"  first {listing['first_request_ms']:.1f} ms; then p50 {listing['p50_ms']:.2f} ms, "
        f"p95 {listing['p95_ms']:.2f} ms; worst {listing['worst_ms']:.1f} ms "
        f"(limit {listing['limit_ms']:.0f} ms: {'ok' if listing['within_limit'] else 'FAIL'})"
    )
    print(
        f"  {listing['backoff_retries_seen']} later request(s) retried the node after its "
        "back-off (each costs at most the connect timeout)"
    )
    print(
        f"  down node reported: {listing['down_node_reported']} ({listing['down_node_error']}); "
        f"statuses {listing['statuses']}"
    )
    print(
        f"  new emulator connections over {listing['requests_after_warmup']} requests: "
        f"{listing['emulator_connections_opened_after_warmup']}"
    )
    for key, label in (("chat_stream_false", "chat (stream:false)"), ("chat_streamed", "chat")):
        numbers = overhead[key]
        print(
            f"{label}: direct p50 {numbers['direct']['p50_ms']:.3f} ms, gateway p50 "
            f"{numbers['gateway']['p50_ms']:.3f} ms, added {numbers['added_p50_ms']:+.3f} ms "
            f"(target <= {OVERHEAD_TARGET_MS} ms: {'ok' if numbers['within_target'] else 'FAIL'})"
        )
    print(
        f"new emulator connections during {overhead['requests_during_runs']} chat requests: "
        f"{overhead['emulator_connections_opened_during_runs']}"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--connect-timeout", type=float, default=2.0)
    parser.add_argument("--duration", type=float, default=6.0, help="seconds of listing")
    parser.add_argument("--rounds", type=int, default=500)
    parser.add_argument("--reply-tokens", type=int, default=8)
    args = parser.parse_args()
    results = asyncio.run(run(args))
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "gateway.json").write_text(json.dumps(results, indent=2) + "\n")
    report(results)
    listing = results["models_with_one_node_down"]
    overhead = results["pooled_client_overhead"]
    passed = (
        listing["within_limit"]
        and listing["emulator_connections_opened_after_warmup"] == 0
        and overhead["chat_stream_false"]["within_target"]
        and overhead["chat_streamed"]["within_target"]
        and overhead["emulator_connections_opened_during_runs"] == 0
    )
    return 0 if passed else 1


if __name__ == "__main__":
    raise SystemExit(main())
