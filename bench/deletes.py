#!/usr/bin/env python3
"""Large deletions on SQLite, and what another user's writes wait meanwhile.

One server (one worker, SQLite, the emulator as Ollama). A user with `--conversations`
conversations of `--messages` messages each (imported), and the admin's conversation of
`--messages` messages. While another connection creates a conversation every 10 ms (a
write, as a chat's stored turn is), the admin deletes:

- its own conversation (`DELETE /api/conversations/{id}`): one transaction;
- the user (`DELETE /api/admin/users/{id}`): on SQLite the user is disabled, their
  conversations go ~2 000 messages a transaction, then the account.

For each: how long it took, and the creates' latency meanwhile (the longest is how long
the deletion held the database's only write lock at a stretch). Prints the numbers and
writes bench/results/deletes.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from typing import Any

from chat_harness import (
    Connection,
    Server,
    login,
    percentiles,
    setup_user,
    start_emulator,
    write_result,
)

from conversations import _export_document

PASSWORD = "bench-password-123456"


async def _while_writing(
    base: str, admin: dict[str, str], method: str, path: str
) -> dict[str, Any]:
    """`method path` as the admin, while another connection creates conversations."""
    deleter, writer = await Connection.to(base), await Connection.to(base)
    waits: list[float] = []
    statuses: set[int] = set()
    busy = True

    async def write() -> None:
        while busy:
            started = time.perf_counter()
            status, _ = await writer.request(
                "POST", "/api/conversations", {"model": "llama3.2", "title": "x"}, headers=admin
            )
            waits.append(time.perf_counter() - started)
            statuses.add(status)
            await asyncio.sleep(0.01)

    writing = asyncio.get_running_loop().create_task(write())
    await asyncio.sleep(0.5)
    before = len(waits)
    started = time.perf_counter()
    status, body = await deleter.request(method, path, headers=admin)
    took = time.perf_counter() - started
    await asyncio.sleep(0.2)
    busy = False
    await writing
    deleter.close()
    writer.close()
    if status != 204:
        raise RuntimeError(f"{method} {path}: HTTP {status} {body[:200]!r}")
    return {
        "seconds": round(took, 3),
        "writes_meanwhile": percentiles(waits[before:]),
        "write_statuses": sorted(statuses),
    }


async def run(conversations: int, messages: int) -> dict[str, Any]:
    emulator, url = start_emulator("--models", "llama3.2")
    server = Server(url)
    server.start()
    try:
        base = server.base
        key, _ = await setup_user(base)
        admin = {"Authorization": f"Bearer {key}"}
        connection = await Connection.to(base)
        status, body = await connection.request(
            "POST", "/api/admin/users", {"username": "large", "password": PASSWORD}, headers=admin
        )
        if status != 201:
            raise RuntimeError(f"create user: HTTP {status} {body[:200]!r}")
        user_id = json.loads(body)["id"]
        user = await login(base, "large")
        document = _export_document(messages)
        started = time.perf_counter()
        for _ in range(conversations):
            status, body = await connection.request(
                "POST", "/api/conversations/import", document, headers=user
            )
            if status != 201:
                raise RuntimeError(f"import: HTTP {status} {body[:200]!r}")
        status, body = await connection.request(
            "POST", "/api/conversations/import", document, headers=admin
        )
        own = json.loads(body)["id"]
        seeded = time.perf_counter() - started
        connection.close()
        return {
            "database": "sqlite",
            "user_messages": conversations * messages,
            "seed_seconds": round(seeded, 1),
            "delete_conversation": {
                "messages": messages,
                **await _while_writing(base, admin, "DELETE", f"/api/conversations/{own}"),
            },
            "delete_user": await _while_writing(
                base, admin, "DELETE", f"/api/admin/users/{user_id}"
            ),
        }
    finally:
        server.stop()
        emulator.terminate()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--conversations", type=int, default=100)
    parser.add_argument("--messages", type=int, default=1000)
    args = parser.parse_args()
    result = asyncio.run(run(args.conversations, args.messages))
    for name, value in result.items():
        print(f"{name}: {value}")
    print(f"wrote {write_result('deletes', result)}")


if __name__ == "__main__":
    main()
