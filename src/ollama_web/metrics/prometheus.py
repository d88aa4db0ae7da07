"""Prometheus metrics (prometheus-client), correct with several worker processes.

The metric objects are process-wide and built on first use (not at import). Two modes:

- single process (default): `GET /metrics/prometheus` renders this process's metrics;
- multi-process: when PROMETHEUS_MULTIPROC_DIR is set (in the environment or `.env`:
  `environment` puts it where prometheus-client reads it), prometheus-client writes every
  worker's values to files in that directory and the exposition aggregates all of them, so
  any worker answers for the whole server. The directory is created if missing; it must
  be emptied before each start (`ExecStartPre=/bin/rm -rf "$DIR"`, or a tmpfs). Gauges of
  live values ("active generations") count only live workers; a stopping worker marks
  itself dead.

Labels are route templates, methods, status codes and configured Ollama node URLs — all
bounded sets.
"""

from __future__ import annotations

import os
from functools import cache

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
)

from ollama_web.metrics.environment import MULTIPROC_ENV

PROMETHEUS_CONTENT_TYPE = CONTENT_TYPE_LATEST
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
TTFT_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0)


def multiprocess_dir() -> str | None:
    return os.environ.get(MULTIPROC_ENV) or os.environ.get(MULTIPROC_ENV.lower()) or None


class PrometheusMetrics:
    def __init__(self) -> None:
        no_registry: CollectorRegistry | None = None
        self.requests = Counter(
            "ollama_web_http_requests",
            "HTTP responses by method, route template and status code.",
            ["method", "route", "status"],
            registry=no_registry,
        )
        self.duration = Histogram(
            "ollama_web_http_request_duration_seconds",
            "Time from request arrival to response headers.",
            ["method", "route"],
            buckets=LATENCY_BUCKETS,
            registry=no_registry,
        )
        self.slow_requests = Counter(
            "ollama_web_http_slow_requests",
            "Responses slower than SLOW_REQUEST_MS.",
            ["method", "route"],
            registry=no_registry,
        )
        self.slow_queries = Counter(
            "ollama_web_db_slow_queries",
            "SQL statements slower than SLOW_QUERY_MS.",
            registry=no_registry,
        )
        self.generations_active = Gauge(
            "ollama_web_generations_active",
            "Generations streaming right now.",
            multiprocess_mode="livesum",
            registry=no_registry,
        )
        self.generations = Counter(
            "ollama_web_generations", "Generations started.", registry=no_registry
        )
        self.tokens = Counter(
            "ollama_web_tokens_relayed",
            "Tokens relayed from Ollama to clients.",
            registry=no_registry,
        )
        self.time_to_first_token = Histogram(
            "ollama_web_time_to_first_token_seconds",
            "Time from the start of a generation to its first token.",
            buckets=TTFT_BUCKETS,
            registry=no_registry,
        )
        self.upstream_errors = Counter(
            "ollama_web_upstream_errors",
            "Failed calls to an Ollama node.",
            ["node"],
            registry=no_registry,
        )
        self._registry: CollectorRegistry | None = None

    def _single_process_registry(self) -> CollectorRegistry:
        if self._registry is None:
            registry = CollectorRegistry(auto_describe=True)
            for collector in (
                self.requests,
                self.duration,
                self.slow_requests,
                self.slow_queries,
                self.generations_active,
                self.generations,
                self.tokens,
                self.time_to_first_token,
                self.upstream_errors,
            ):
                registry.register(collector)
            self._registry = registry
        return self._registry

    def render(self) -> bytes:
        """The text exposition: every worker's values in multi-process mode."""
        if multiprocess_dir():
            registry = CollectorRegistry()
            multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
            return generate_latest(registry)
        return generate_latest(self._single_process_registry())


@cache
def prometheus() -> PrometheusMetrics:
    """The process-wide metric objects (built on first use)."""
    return PrometheusMetrics()


def mark_this_process_dead() -> None:
    """In multi-process mode, drop this worker's live gauges (call at shutdown)."""
    if multiprocess_dir():
        multiprocess.mark_process_dead(os.getpid())  # type: ignore[no-untyped-call]
