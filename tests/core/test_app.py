"""The application and the cyclic collector: long-lived objects are kept out of its walk,
its youngest generation is swept less often, and a request leaves nothing for it."""

from __future__ import annotations

import gc
from collections.abc import Callable
from typing import Any

import httpx

from ollama_web.app import YOUNG_COLLECTION_THRESHOLD, create_app
from ollama_web.core.config import Settings
from ollama_web.core.http_guard import GuardedHttpToolsProtocol
from tests.fixtures.auth import create_test_user
from tests.fixtures.collector import unreachable_types
from tests.fixtures.servers import serve_app


async def test_startup_tunes_the_collector_and_shutdown_puts_it_back(
    settings: Settings,
) -> None:
    gc.unfreeze()
    thresholds = gc.get_threshold()
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        frozen = gc.get_freeze_count()
        assert frozen > 10_000, "modules and the app are out of the collector's walk"
        gc.collect()
        # A full collection leaves them where they are. (A few may be freed meanwhile, by
        # a task of the start finishing: ~7 of them, at no fixed moment.)
        assert frozen - gc.get_freeze_count() < 100
        assert gc.get_threshold() == (YOUNG_COLLECTION_THRESHOLD, *thresholds[1:])
    assert gc.get_freeze_count() == 0
    assert gc.get_threshold() == thresholds


async def test_a_served_request_leaves_no_cycle_for_the_collector(
    app_factory: Callable[[Settings], Any], settings: Settings
) -> None:
    """The server's per-request state (uvicorn's cycle, the scope and what hangs off it)
    is freed as soon as the request ends, not by a later collection: the scope keeps the
    server's `send` (a method of that cycle) only while the request runs."""
    app = await app_factory(settings)
    user = await create_test_user(app)
    async with (
        serve_app(app, http=GuardedHttpToolsProtocol) as base_url,
        httpx.AsyncClient(base_url=base_url) as client,
    ):
        await client.get("/health/live")  # warm: first-request caches are built
        with unreachable_types() as left:
            for _ in range(3):
                assert (await client.get("/health/live")).status_code == 200
                listed = await client.get("/api/conversations", headers=user.headers)
                assert listed.status_code == 200
    assert "RequestResponseCycle" not in left
    assert "AsyncExitStack" not in left
