#!/usr/bin/env python3
"""Stop and re-attach through another server process than the answer's, without Redis.

Two single-worker servers side by side on one DATA_DIR and SQLite database (what the
workers of `serve --workers 2` are, with the port told apart so that each request's process
is known), the emulator as Ollama at 20 tokens/s. For each answer, streamed from server A:

- re-attach (`GET /api/chat/stream/{id}` with Last-Event-ID: 1, a fresh connection): time
  to the first event replayed, through A itself (local) and through B (relayed over the
  Unix sockets in DATA_DIR/generation-relay/);
- stop (`POST /api/chat/{id}/stop`, a fresh connection): time to its answer, which comes
  once the owner has closed the upstream and stored the answer, through A or B in turn.

With `--redis-url`, both servers get REDIS_URL and the same requests go through Redis
pub/sub instead, for comparison. Every request must answer 200 (a 409 GENERATION_ELSEWHERE
fails the run). Prints the numbers and writes bench/results/workers.json (workers-redis.json).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from typing import Any

from chat_harness import Connection, Server, percentiles, setup_user, start_emulator, write_result


async def _timed_first_event(base: str, path: str, headers: dict[str, str]) -> float:
    """Seconds from sending the re-attach to its first event's arrival."""
    connection = await Connection.to(base)
    try:
        started = time.perf_counter()
        connection.send("GET", path, headers=headers)
        status, response_headers = await connection.head()
        if status != 200:
            raise RuntimeError(f"re-attach answered {status}")
        async for chunk in connection.body(response_headers):
            if b"\n\n" in chunk or chunk.endswith(b"\n"):
                return time.perf_counter() - started
        raise RuntimeError("re-attach ended without an event")
    finally:
        connection.close()


async def _timed_stop(base: str, answer_id: str, headers: dict[str, str]) -> float:
    connection = await Connection.to(base)
    try:
        started = time.perf_counter()
        status, body = await connection.request(
            "POST", f"/api/chat/{answer_id}/stop", headers=headers
        )
        took = time.perf_counter() - started
    finally:
        connection.close()
    if status != 200 or json.loads(body)["message"]["status"] != "stopped":
        raise RuntimeError(f"stop answered {status}: {body[:200]!r}")
    return took


async def _one_answer(
    a: str, b: str, headers: dict[str, str], stop_through: str
) -> dict[str, float]:
    stream = await Connection.to(a)
    try:
        body = {"model": "llama3.2", "content": "Tell me a long story"}
        stream.send("POST", "/api/chat/stream", body, headers)
        status, response_headers = await stream.head()
        if status != 200:
            raise RuntimeError(f"chat answered {status}")
        events = stream.body(response_headers)
        first = await anext(events)
        while b"event: token" not in first:  # the start event, then the first token
            first += await anext(events)
        start = first.split(b"data: ", 1)[1].split(b"\n", 1)[0]
        answer_id = json.loads(start)["assistant_message_id"]
        path = f"/api/chat/stream/{answer_id}"
        resume = {**headers, "Last-Event-ID": "1"}
        times = {
            "reattach_local": await _timed_first_event(a, path, resume),
            "reattach_remote": await _timed_first_event(b, path, resume),
        }
        base = a if stop_through == "local" else b
        times[f"stop_{stop_through}"] = await _timed_stop(base, answer_id, headers)
        async for _ in events:  # to the done event of the stopped answer
            pass
        return times
    finally:
        stream.close()


async def run(answers: int, redis_url: str | None) -> dict[str, Any]:
    emulator, ollama_url = start_emulator("--tokens-per-second", "20", "--reply-tokens", "2000")
    redis = {"REDIS_URL": redis_url} if redis_url else {}
    a = Server(ollama_url, **redis)
    shared = {k: a.env[k] for k in ("DATA_DIR", "LOG_DIR", "BACKUP_DIR")}
    b = Server(ollama_url, **shared, **redis)
    try:
        a.start()
        b.start()
        key, _ = await setup_user(a.base)
        headers = {"Authorization": f"Bearer {key}"}
        samples: dict[str, list[float]] = {}
        for i in range(answers):
            measured = await _one_answer(
                a.base, b.base, headers, "local" if i % 2 == 0 else "remote"
            )
            for name, seconds in measured.items():
                samples.setdefault(name, []).append(seconds)
    finally:
        b.stop()
        a.stop()
        emulator.terminate()
    carrier = "redis" if redis_url else "host sockets"
    return {
        "answers": answers,
        "carrier": carrier,
        **{name: percentiles(s) for name, s in samples.items()},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--answers", type=int, default=60)
    parser.add_argument("--redis-url", help="relay through this Redis instead")
    args = parser.parse_args()
    result = asyncio.run(run(args.answers, args.redis_url))
    for name, value in result.items():
        print(f"{name}: {value}")
    print(f"wrote {write_result('workers-redis' if args.redis_url else 'workers', result)}")


if __name__ == "__main__":
    main()
