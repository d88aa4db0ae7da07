"""`GET /metrics`, `/metrics/summary`, `/metrics/prometheus` (admin or METRICS_TOKEN)."""

from __future__ import annotations

import os
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response

from ollama_web.core.dependencies import CoreDep
from ollama_web.core.state import CoreState
from ollama_web.metrics import chat
from ollama_web.metrics.dependencies import MetricsAccess
from ollama_web.metrics.http import HttpStats
from ollama_web.metrics.middleware import STATE_ATTRIBUTE
from ollama_web.metrics.prometheus import PROMETHEUS_CONTENT_TYPE, multiprocess_dir, prometheus

router = APIRouter(
    prefix="/metrics",
    tags=["monitoring"],
    dependencies=[MetricsAccess],
    responses={
        403: {"description": "Not an administrator and no METRICS_TOKEN (FORBIDDEN)"},
        404: {"description": "METRICS_ENABLED=false"},
    },
)

SUMMARY_TOP = 5


def _stats(request: Request) -> HttpStats:
    stats = getattr(request.app.state, STATE_ATTRIBUTE, None)
    assert isinstance(stats, HttpStats)
    return stats


def full_metrics(stats: HttpStats, core: CoreState) -> dict[str, Any]:
    snapshot = stats.snapshot()
    return {
        "uptime_seconds": round(core.uptime_seconds, 3),
        **snapshot,
        "slow_queries": {
            "threshold_ms": core.settings.slow_query_ms,
            "count": core.slow_queries.count,
        },
        "chat": chat.stats().snapshot(),
        "worker": {
            "pid": os.getpid(),
            "scope": "these numbers are this worker process's; "
            "/metrics/prometheus aggregates every worker",
            "prometheus_multiprocess": multiprocess_dir() is not None,
        },
    }


@router.get(
    "",
    summary="Performance metrics of this worker (JSON)",
    description=(
        "Totals since this worker started: `total_requests`, `total_errors` (status >= 400), "
        "`server_errors` (>= 500), `error_rate`, `requests_per_second` (since start) and "
        "`requests_per_second_1m`; `response_time_ms` {avg, p50, p95, p99, max} over the "
        "most recent responses (time to response headers); `slow_requests` and "
        '`slow_queries` {threshold_ms, count}; `endpoints` keyed by "METHOD /route/'
        '{template}" (unmatched paths share "<unmatched>") with the same figures each; '
        "`chat` {active_generations, generations_started, generations_finished, "
        "tokens_relayed, tokens_per_second, time_to_first_token_ms {p50, p95, count}, "
        "upstream_errors {node: count}}; `uptime_seconds`; `worker`. With several workers "
        "each answers for itself; /metrics/prometheus aggregates them."
    ),
)
async def metrics(request: Request, core: CoreDep) -> dict[str, Any]:
    return full_metrics(_stats(request), core)


@router.get("/summary", summary="A short overview: totals, p95, busiest and slowest endpoints")
async def metrics_summary(request: Request, core: CoreDep) -> dict[str, Any]:
    full = full_metrics(_stats(request), core)
    endpoints: dict[str, dict[str, Any]] = full["endpoints"]

    def top(key: str) -> list[dict[str, Any]]:
        ranked = sorted(endpoints.items(), key=lambda item: item[1][key], reverse=True)
        return [{"endpoint": name, key: values[key]} for name, values in ranked[:SUMMARY_TOP]]

    return {
        "uptime_seconds": full["uptime_seconds"],
        "total_requests": full["total_requests"],
        "total_errors": full["total_errors"],
        "error_rate": full["error_rate"],
        "requests_per_second": full["requests_per_second"],
        "p95_ms": full["response_time_ms"]["p95"],
        "slow_requests": full["slow_requests"]["count"],
        "slow_queries": full["slow_queries"]["count"],
        "active_generations": full["chat"]["active_generations"],
        "busiest_endpoints": top("requests"),
        "slowest_endpoints": top("p95_ms"),
    }


@router.get(
    "/prometheus",
    summary="Prometheus text exposition (all workers in multi-process mode)",
    response_class=Response,
    responses={200: {"content": {PROMETHEUS_CONTENT_TYPE: {}}}},
)
async def metrics_prometheus() -> Response:
    chat.stats().export_tokens()
    return Response(prometheus().render(), media_type=PROMETHEUS_CONTENT_TYPE)
