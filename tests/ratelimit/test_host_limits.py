"""Request rate limits the workers of one host count together without Redis (WORKERS > 1):
in a file of DATA_DIR. Before, each process counted on its own, and a client spread over N
workers had N budgets. With one worker the count stays in memory."""

from __future__ import annotations

import asyncio
import stat
import time
from pathlib import Path

import httpx
import pytest

from ollama_web.ratelimit.host_storage import REQUESTS_FILE_NAME
from tests.conftest import asgi_client
from tests.fixtures.ports import free_port
from tests.ratelimit.conftest import (
    LimitedApp,
    fresh_client_address,
    start_server,
    two_servers_share_one_budget,
    wait_live,
)


async def _spread(clients: list[httpx.AsyncClient], count: int) -> list[httpx.Response]:
    """`count` requests of one client address at once, taken in turn by `clients`."""
    headers = {"X-Forwarded-For": fresh_client_address()}
    return list(
        await asyncio.gather(
            *(clients[i % len(clients)].get("/info", headers=headers) for i in range(count))
        )
    )


async def test_two_workers_without_redis_let_exactly_5_of_200_through(
    limited_app: LimitedApp, tmp_path: Path
) -> None:
    """Two apps on one DATA_DIR, as two workers of a host: one budget."""
    settings = {"workers": 2, "rate_limit_per_minute": 5, "trusted_proxies": "127.0.0.1"}
    first, second = await limited_app(**settings), await limited_app(**settings)
    async with asgi_client(first) as one, asgi_client(second) as two:
        responses = await _spread([one, two], 200)
    statuses = [response.status_code for response in responses]
    assert statuses.count(200) == 5
    assert statuses.count(429) == 195
    passed = sorted(
        int(r.headers["x-ratelimit-remaining"]) for r in responses if r.status_code == 200
    )
    assert passed == [0, 1, 2, 3, 4], "each request reports the window its own entry went into"
    counted = tmp_path / "data" / REQUESTS_FILE_NAME
    assert stat.S_IMODE(counted.stat().st_mode) == 0o600


async def test_one_worker_counts_in_memory(limited_app: LimitedApp, tmp_path: Path) -> None:
    """The default (WORKERS=1) pays for no file: two such apps count each on its own."""
    settings = {"rate_limit_per_minute": 5, "trusted_proxies": "127.0.0.1"}
    first, second = await limited_app(**settings), await limited_app(**settings)
    async with asgi_client(first) as one, asgi_client(second) as two:
        responses = await _spread([one, two], 40)
    assert [r.status_code for r in responses].count(200) == 10
    assert not (tmp_path / "data" / REQUESTS_FILE_NAME).exists()


async def test_with_redis_unreachable_two_workers_count_in_the_hosts_file(
    limited_app: LimitedApp, tmp_path: Path
) -> None:
    """REDIS_URL set and Redis down: the workers of a host fall back to the file together,
    not each to its memory, and /health says which fallback counts."""
    settings = {
        "workers": 2,
        "redis_url": f"redis://127.0.0.1:{free_port()}/0",
        "rate_limit_per_minute": 5,
        "trusted_proxies": "127.0.0.1",
    }
    first, second = await limited_app(**settings), await limited_app(**settings)
    async with asgi_client(first) as one, asgi_client(second) as two:
        responses = await _spread([one, two], 40)
        health = (await one.get("/health")).json()
    assert [r.status_code for r in responses].count(200) == 5
    assert health["components"]["redis"]["status"] == "unhealthy"
    assert health["components"]["redis"]["rate_limits"] == "host fallback"
    assert (tmp_path / "data" / REQUESTS_FILE_NAME).exists()


@pytest.mark.slow
async def test_two_server_processes_on_one_data_dir_let_exactly_5_of_200_through(
    tmp_path: Path,
) -> None:
    """Two real servers, WORKERS=2, one DATA_DIR, no Redis (before: 10 of 200)."""
    await two_servers_share_one_budget(tmp_path, DATA_DIR=str(tmp_path / "data"), WORKERS="2")


@pytest.mark.slow
async def test_serve_with_two_workers_lets_exactly_5_of_200_through(tmp_path: Path) -> None:
    """`ollama-web serve --workers 2` without WORKERS in the environment: the flag reaches
    the workers, which count together (before: up to 10, as the kernel spread the
    connections)."""
    process, base_url = start_server(tmp_path, "served", workers=2)
    try:
        await wait_live(base_url, process)
        relay = tmp_path / "served" / "data" / "generation-relay"
        deadline = time.monotonic() + 30
        while len(list(relay.glob("*.sock"))) < 2:  # the second worker is up too
            assert process.poll() is None
            assert time.monotonic() < deadline, "the second worker did not start"
            await asyncio.sleep(0.05)
        limits = httpx.Limits(max_connections=200)
        async with httpx.AsyncClient(base_url=base_url, timeout=30, limits=limits) as client:
            responses = await _spread([client], 200)
    finally:
        process.terminate()
        error = process.communicate(timeout=30)[1]
    statuses = [response.status_code for response in responses]
    assert statuses.count(200) == 5, error
    assert statuses.count(429) == 195
    assert (tmp_path / "served" / "data" / REQUESTS_FILE_NAME).exists()
