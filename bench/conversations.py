#!/usr/bin/env python3
"""Conversation reads with a big history: one user, 10 000 conversations, 200 000 messages.

Starts the app (uvicorn, one worker, SQLite in a fresh DATA_DIR; the emulator only so the
server has an Ollama), creates the user, seeds the history straight into the database with
SQL (so the FTS5 triggers index it as they would live), then measures through HTTP:

- the first page of `GET /api/conversations` (50 items);
- search `GET /api/conversations?q=<word>` for words drawn from the vocabulary (Zipf-shaped
  frequencies: a typical word is in a few hundred messages), and separately for the most
  common words (in tens of thousands of messages);
  and for a Japanese word in no message (a substring search, which reads every message);
- `GET /api/conversations/{id}` of a 500-message conversation;
- `POST /api/conversations/import` of a 10 000-message export (a 4 MB body), while another
  connection asks `GET /health/live` every 5 ms: how long the import takes, and how long
  the other requests waited (the event loop held by the import holds every stream too).

Prints the numbers and writes bench/results/conversations.json.
Targets (issue 5): list p99 <= 15 ms, search p99 <= 50 ms, open p99 <= 30 ms. (The import
has no target: its stall is measured to keep it short.)
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import sqlite3
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import uvloop
from chat_harness import Connection, Server, percentiles, setup_user, start_emulator, write_result

CONVERSATIONS = 10_000
MESSAGES = 200_000
BIG = 500
VOCABULARY = 20_000


def _words(rng: random.Random) -> list[str]:
    letters = "abcdefghijklmnopqrstuvwxyz"
    words: set[str] = set()
    while len(words) < VOCABULARY:
        words.add("".join(rng.choice(letters) for _ in range(rng.randint(4, 9))))
    return sorted(words)


def _id(prefix: str, number: int) -> str:
    return f"{prefix}{number:031x}"


def seed(database: str, user_id: str, rng: random.Random) -> tuple[list[str], str]:
    """Insert the history; returns (vocabulary by frequency rank, the big conversation)."""
    vocabulary = _words(rng)
    weights = [1 / (rank + 1) ** 1.07 for rank in range(VOCABULARY)]
    start = datetime(2025, 1, 1, tzinfo=UTC)
    per_conversation = [(MESSAGES - BIG) // (CONVERSATIONS - 1)] * (CONVERSATIONS - 1)
    per_conversation[0] += (MESSAGES - BIG) - sum(per_conversation)
    per_conversation.append(BIG)
    conversations, messages = [], []
    number = 0
    for index, count in enumerate(per_conversation):
        conversation_id = _id("c", index)
        parent = None
        for position in range(count):
            number += 1
            moment = start + timedelta(minutes=index * 5, seconds=position)
            text = " ".join(rng.choices(vocabulary, weights, k=rng.randint(8, 24)))
            message_id = _id("m", number)
            role = "user" if position % 2 == 0 else "assistant"
            stamp = moment.strftime("%Y-%m-%d %H:%M:%S.%f")
            messages.append((message_id, conversation_id, parent, role, text, "complete", stamp))
            parent = message_id
        stamp = (start + timedelta(minutes=index * 5 + 4)).strftime("%Y-%m-%d %H:%M:%S.%f")
        title = " ".join(rng.choices(vocabulary[:2000], k=4))
        conversations.append((conversation_id, user_id, title, parent, stamp, stamp))
    connection = sqlite3.connect(database, timeout=30)
    with connection:
        connection.executemany(
            "INSERT INTO conversations (id, user_id, title, model, options, pinned, archived, "
            "title_generated, active_leaf_id, created_at, updated_at) "
            "VALUES (?, ?, ?, 'llama3.2:latest', '{}', 0, 0, 1, ?, ?, ?)",
            conversations,
        )
        connection.executemany(
            "INSERT INTO messages (id, conversation_id, parent_id, role, content, status, "
            "created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            [(*m, m[-1]) for m in messages],
        )
    connection.execute("ANALYZE")
    connection.close()
    return vocabulary, _id("c", CONVERSATIONS - 1)


async def measure(
    base: str, api_key: str, vocabulary: list[str], big: str, rounds: int, rng: random.Random
) -> dict[str, Any]:
    headers = {"Authorization": f"Bearer {api_key}"}
    connection = await Connection.to(base)

    async def timed(path: str) -> tuple[float, bytes]:
        started = time.perf_counter()
        status, body = await connection.request("GET", path, headers=headers)
        elapsed = time.perf_counter() - started
        if status != 200:
            raise RuntimeError(f"{path}: HTTP {status} {body[:200]!r}")
        return elapsed, body

    for _ in range(20):  # warm up
        await timed("/api/conversations")
        await timed(f"/api/conversations/{big}")
    result: dict[str, Any] = {}
    samples = [(await timed("/api/conversations"))[0] for _ in range(rounds)]
    _, page = await timed("/api/conversations")
    result["list_first_page"] = {**percentiles(samples), "items": len(json.loads(page)["items"])}
    opened = [(await timed(f"/api/conversations/{big}"))[0] for _ in range(rounds)]
    _, body = await timed(f"/api/conversations/{big}")
    result["open_500_messages"] = {
        **percentiles(opened),
        "messages": len(json.loads(body)["messages"]),
    }
    typical, hits = [], []
    for word in rng.sample(vocabulary[50:], rounds):
        elapsed, body = await timed(f"/api/conversations?q={word}")
        typical.append(elapsed)
        hits.append(len(json.loads(body)["items"]))
    result["search_typical_word"] = {
        **percentiles(typical),
        "mean_hits_on_first_page": round(sum(hits) / len(hits), 1),
    }
    common = [
        (await timed(f"/api/conversations?q={word}"))[0]
        for word in vocabulary[:10] * (rounds // 10)
    ]
    result["search_most_common_words"] = percentiles(common)
    two = [
        (await timed(f"/api/conversations?q={a}+{b}"))[0]
        for a, b in zip(
            rng.sample(vocabulary[50:], rounds // 2),
            rng.sample(vocabulary[50:2000], rounds // 2),
            strict=True,
        )
    ]
    result["search_two_words"] = percentiles(two)
    # A Japanese word found in no message: a substring search reads every message (see
    # conversations/search.py `terms`), the worst case of that path.
    absent = [(await timed("/api/conversations?q=%E6%9D%B1%E4%BA%AC"))[0] for _ in range(20)]
    result["search_unspaced_word_absent"] = percentiles(absent)
    connection.close()
    result["import_10000_messages"] = await measure_import(base, headers)
    return result


def _export_document(messages: int) -> dict[str, Any]:
    """A conversation's JSON export: one branch of `messages` messages, ~400 bytes each."""
    created = "2026-01-01T00:00:00Z"
    items: list[dict[str, Any]] = []
    for number in range(messages):
        items.append(
            {
                "id": f"m{number:06d}",
                "parent_id": items[-1]["id"] if items else None,
                "role": "user" if number % 2 == 0 else "assistant",
                "content": f"message {number} " + "lorem ipsum dolor sit amet " * 14,
                "created_at": created,
            }
        )
    conversation = {
        "id": "imported", "title": "Imported", "model": "llama3.2:latest",
        "created_at": created, "updated_at": created, "active_leaf_id": items[-1]["id"],
    }  # fmt: skip
    return {
        "format": "ollama-web.conversation",
        "version": 1,
        "exported_at": created,
        "conversation": conversation,
        "messages": items,
    }


async def measure_import(base: str, headers: dict[str, str]) -> dict[str, Any]:
    document = _export_document(10_000)
    importer, poller = await Connection.to(base), await Connection.to(base)
    waits: list[float] = []
    importing = True

    async def poll() -> None:
        while importing:
            started = time.perf_counter()
            await poller.request("GET", "/health/live")
            waits.append(time.perf_counter() - started)
            await asyncio.sleep(0.005)

    polling = asyncio.get_running_loop().create_task(poll())
    await asyncio.sleep(0.1)
    started = time.perf_counter()
    status, body = await importer.request(
        "POST", "/api/conversations/import", document, headers=headers
    )
    took = time.perf_counter() - started
    importing = False
    await polling
    importer.close()
    poller.close()
    if status != 201:
        raise RuntimeError(f"import: HTTP {status} {body[:200]!r}")
    return {
        "messages": len(json.loads(body)["messages"]),
        "body_mb": round(len(json.dumps(document)) / 1e6, 1),
        "seconds": round(took, 3),
        "health_live_while_importing": percentiles(waits),
    }


async def main(rounds: int) -> dict[str, Any]:
    rng = random.Random(5)
    emulator, url = start_emulator("--models", "llama3.2")
    server = Server(url)
    try:
        server.start()
        api_key, user_id = await setup_user(server.base)
        started = time.perf_counter()
        vocabulary, big = seed(str(server.data_dir / "ollama_web.db"), user_id, rng)
        seeded = time.perf_counter() - started
        result = await measure(server.base, api_key, vocabulary, big, rounds, rng)
    finally:
        server.stop()
        emulator.terminate()
    return {
        "database": "sqlite",
        "conversations": CONVERSATIONS,
        "messages": MESSAGES,
        "seed_seconds": round(seeded, 1),
        **result,
    }


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--rounds", type=int, default=300)
    report = uvloop.run(main(parser.parse_args().rounds))
    print(json.dumps(report, indent=2))
    print(f"wrote {write_result('conversations', report)}")
