"""A burst of first requests with a fresh key must not exhaust the connection pool: the
throttled `last_used_at` write goes through the request's own transaction."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx


async def test_burst_of_first_requests_with_a_fresh_key_completes(
    client: httpx.AsyncClient, regular_user: Any
) -> None:
    async def one() -> int:
        response = await client.get("/api/auth/me", headers=regular_user.headers)
        return response.status_code

    statuses = await asyncio.wait_for(asyncio.gather(*(one() for _ in range(60))), timeout=25)
    assert statuses == [200] * 60
