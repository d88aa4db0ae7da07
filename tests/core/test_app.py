"""The application lifespan: long-lived objects are kept out of the cyclic collector."""

from __future__ import annotations

import gc

from ollama_web.app import create_app
from ollama_web.core.config import Settings


async def test_startup_freezes_what_lives_for_the_process_and_shutdown_releases_it(
    settings: Settings,
) -> None:
    gc.unfreeze()
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        frozen = gc.get_freeze_count()
        assert frozen > 10_000, "modules and the app are out of the collector's walk"
        gc.collect()
        assert gc.get_freeze_count() == frozen, "a full collection leaves them where they are"
    assert gc.get_freeze_count() == 0
