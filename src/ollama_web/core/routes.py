"""The app's routes one by one, as this FastAPI serves them."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import fastapi.routing


def each_route(routes: list[Any]) -> Iterable[Any]:
    """Every route of `routes` (an app's), each matching with its full path and carrying
    the app's dependencies. Recent FastAPI keeps an included router whole in `app.routes`
    (it matches, but says not which route) and yields its routes through
    `iter_route_contexts`; older versions copy them into `app.routes`."""
    contexts: Callable[[list[Any]], Iterable[Any]] | None = getattr(
        fastapi.routing, "iter_route_contexts", None
    )
    return contexts(routes) if contexts is not None else routes
