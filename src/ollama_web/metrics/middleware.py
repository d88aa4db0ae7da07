"""Pure ASGI request metrics: counts, response times, errors, slow requests.

A response is counted when its headers are sent (a stream counts as soon as it starts), under
its route template (`scope["route"].path`, set by the router) or "<unmatched>". A request
that raises before answering counts as a 500; one that ends without any answer (the client
went away first) as 499. Requests slower than SLOW_REQUEST_MS are counted, and logged with
their request id: the first ten of each second one by one (`SLOW_LOG_LINES_PER_SECOND`),
the rest of that second in one line when it is over (a burst of load must not also flood
the log). A route whose answer is a whole generation (`timed_by_the_model`) is never a slow
request: its time is the model's, not the server's (it is still in the response times).
Inactive when METRICS_ENABLED=false (no stats object in the app state).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any, TypeVar

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ollama_web.metrics.http import HttpStats, normalise_method
from ollama_web.metrics.prometheus import prometheus
from ollama_web.middleware.request_context import CLIENT_CLOSED, route_template

logger = logging.getLogger("ollama_web.metrics")

STATE_ATTRIBUTE = "metrics"
_TIMED_BY_THE_MODEL = "_ollama_web_timed_by_the_model"
Endpoint = TypeVar("Endpoint", bound=Callable[..., Any])


def timed_by_the_model(endpoint: Endpoint) -> Endpoint:
    """Mark a route's endpoint whose response waits for a whole generation (`POST
    /api/chat/message`): however long it takes, it is not a slow request."""
    setattr(endpoint, _TIMED_BY_THE_MODEL, True)
    return endpoint


def _timed_by_the_model(scope: Scope) -> bool:
    endpoint = getattr(scope.get("route"), "endpoint", None)
    return getattr(endpoint, _TIMED_BY_THE_MODEL, False) is True


def _stats_of(scope: Scope) -> HttpStats | None:
    app = scope.get("app")
    stats = getattr(getattr(app, "state", None), STATE_ATTRIBUTE, None)
    return stats if isinstance(stats, HttpStats) else None


def _export_slow_queries(scope: Scope, stats: HttpStats) -> None:
    core: Any = getattr(getattr(scope.get("app"), "state", None), "core", None)
    count = getattr(getattr(core, "slow_queries", None), "count", 0)
    if isinstance(count, int) and count > stats.slow_queries_exported:
        prometheus().slow_queries.inc(count - stats.slow_queries_exported)
        stats.slow_queries_exported = count


def record(scope: Scope, stats: HttpStats, status: int, seconds: float) -> None:
    method = normalise_method(scope.get("method"))
    template = route_template(scope)
    duration_ms = seconds * 1000
    slow = stats.record(
        f"{method} {template}", status, duration_ms, may_be_slow=not _timed_by_the_model(scope)
    )
    metrics = prometheus()
    metrics.requests.labels(method=method, route=template, status=str(status)).inc()
    metrics.duration.labels(method=method, route=template).observe(seconds)
    if slow:
        metrics.slow_requests.labels(method=method, route=template).inc()
        if stats.slow_log.allow():
            _log_slow(scope, method, template, status, duration_ms, stats.slow_request_ms)
    _export_slow_queries(scope, stats)


def _log_slow(
    scope: Scope, method: str, template: str, status: int, duration_ms: float, threshold: int
) -> None:
    request_id = (scope.get("state") or {}).get("request_id", "-")
    logger.warning(
        "slow request %s %s %d %.0f ms (threshold %d ms) [request_id=%s]",
        method,
        template,
        status,
        duration_ms,
        threshold,
        request_id,
        extra={
            "fields": {
                "event": "slow_request",
                "method": method,
                "route": template,
                "status": status,
                "duration_ms": round(duration_ms, 2),
                "request_id": request_id,
            }
        },
    )


class MetricsMiddleware:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        stats = _stats_of(scope) if scope["type"] == "http" else None
        if stats is None:
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        recorded = False

        async def send_and_count(message: Message) -> None:
            nonlocal recorded
            if message["type"] == "http.response.start" and not recorded:
                recorded = True
                record(scope, stats, int(message["status"]), time.perf_counter() - started)
            await send(message)

        try:
            await self.app(scope, receive, send_and_count)
        except Exception:
            if not recorded:
                recorded = True
                record(scope, stats, 500, time.perf_counter() - started)
            raise
        finally:
            if not recorded:
                record(scope, stats, CLIENT_CLOSED, time.perf_counter() - started)
