"""In-process HTTP statistics behind `GET /metrics` (this worker process only).

Requests are keyed by "METHOD /route/{template}" — never the raw path — and unmatched paths
share "<unmatched>", so probing random URLs cannot grow memory. Percentiles come from a
bounded window of the most recent response times (per endpoint and overall). A response
time is measured from the request's arrival to its response headers (for a stream, the
time until it starts streaming).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections import Counter, deque
from dataclasses import dataclass, field
from typing import Any

logger = logging.getLogger("ollama_web.metrics")

ENDPOINT_WINDOW = 1000
SLOW_LOG_LINES_PER_SECOND = 10
OVERALL_WINDOW = 10000
RATE_WINDOW_SECONDS = 60
KNOWN_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


def normalise_method(method: str | None) -> str:
    method = (method or "").upper()
    return method if method in KNOWN_METHODS else "OTHER"


def percentile(sorted_values: list[float], fraction: float) -> float:
    """Nearest-rank percentile of an already sorted list (0.0 when empty)."""
    if not sorted_values:
        return 0.0
    rank = max(1, math.ceil(fraction * len(sorted_values)))
    return sorted_values[rank - 1]


def summarise(window: deque[float]) -> dict[str, float]:
    values = sorted(window)
    count = len(values)
    return {
        "avg": round(sum(values) / count, 3) if count else 0.0,
        "p50": round(percentile(values, 0.50), 3),
        "p95": round(percentile(values, 0.95), 3),
        "p99": round(percentile(values, 0.99), 3),
        "max": round(values[-1], 3) if count else 0.0,
    }


def _status_class(status: int) -> str:
    return f"{status // 100}xx" if 100 <= status < 600 else "other"


@dataclass
class EndpointStats:
    requests: int = 0
    errors: int = 0
    server_errors: int = 0
    slow: int = 0
    total_ms: float = 0.0
    statuses: Counter[str] = field(default_factory=Counter)
    window: deque[float] = field(default_factory=lambda: deque(maxlen=ENDPOINT_WINDOW))

    def record(self, status: int, duration_ms: float, slow: bool) -> None:
        self.requests += 1
        self.errors += status >= 400
        self.server_errors += status >= 500
        self.slow += slow
        self.total_ms += duration_ms
        self.statuses[_status_class(status)] += 1
        self.window.append(duration_ms)

    def snapshot(self) -> dict[str, Any]:
        times = summarise(self.window)
        return {
            "requests": self.requests,
            "errors": self.errors,
            "server_errors": self.server_errors,
            "error_rate": round(self.errors / self.requests, 4) if self.requests else 0.0,
            "slow": self.slow,
            "avg_ms": round(self.total_ms / self.requests, 3) if self.requests else 0.0,
            "p50_ms": times["p50"],
            "p95_ms": times["p95"],
            "p99_ms": times["p99"],
            "max_ms": times["max"],
            "status": dict(sorted(self.statuses.items())),
        }


class RecentRate:
    """Events per second over the last minute, in one-second buckets."""

    def __init__(self, seconds: int = RATE_WINDOW_SECONDS) -> None:
        self.seconds = seconds
        self._counts = [0] * seconds
        self._stamps = [-1] * seconds

    def add(self, now: float) -> None:
        second = int(now)
        index = second % self.seconds
        if self._stamps[index] != second:
            self._stamps[index] = second
            self._counts[index] = 0
        self._counts[index] += 1

    def per_second(self, now: float) -> float:
        oldest = int(now) - self.seconds
        total = sum(c for c, s in zip(self._counts, self._stamps, strict=True) if s > oldest)
        return round(total / self.seconds, 3)


class LogBudget:
    """At most `per_second` log lines a second for one kind of event; the rest of a second
    are summed up in one line when it is over. The events themselves are all counted
    elsewhere (the metrics); this only keeps a burst of them from flooding the log."""

    def __init__(self, per_second: int, what: str) -> None:
        self.per_second = per_second
        self.what = what
        self._second = -math.inf  # when the current second began (monotonic)
        self._lines = 0
        self.held_back = 0

    def allow(self) -> bool:
        """May this event have its own line? (False: it is counted for the summary.)"""
        now = time.monotonic()
        if now - self._second >= 1.0:
            self.flush()
            self._second = now
            self._lines = 0
        if self._lines < self.per_second:
            self._lines += 1
            return True
        if not self.held_back:  # the summary goes out when this second is over
            with contextlib.suppress(RuntimeError):  # no loop: the next event flushes
                asyncio.get_running_loop().call_later(self._second + 1.0 - now, self.flush)
        self.held_back += 1
        return False

    def flush(self) -> None:
        if not self.held_back:
            return
        count, self.held_back = self.held_back, 0
        logger.warning(
            "%d more %s in the last second, not logged one by one",
            count,
            self.what,
            extra={"fields": {"event": "log_lines_held_back", "what": self.what, "count": count}},
        )


class HttpStats:
    """Totals, rates, response times and the per-endpoint breakdown of one process."""

    def __init__(self, slow_request_ms: int) -> None:
        self.slow_request_ms = slow_request_ms
        self.started = time.monotonic()
        self.total = 0
        self.errors = 0
        self.server_errors = 0
        self.slow = 0
        self.total_ms = 0.0
        self.window: deque[float] = deque(maxlen=OVERALL_WINDOW)
        self.endpoints: dict[str, EndpointStats] = {}
        self.recent = RecentRate()
        self.slow_queries_exported = 0
        self.slow_log = LogBudget(SLOW_LOG_LINES_PER_SECOND, "slow requests")

    def record(
        self, endpoint: str, status: int, duration_ms: float, *, may_be_slow: bool = True
    ) -> bool:
        """Count one response; True when it was slower than SLOW_REQUEST_MS (never for one
        that `may_be_slow` not: see `middleware.timed_by_the_model`)."""
        slow = may_be_slow and duration_ms >= self.slow_request_ms
        self.total += 1
        self.errors += status >= 400
        self.server_errors += status >= 500
        self.slow += slow
        self.total_ms += duration_ms
        self.window.append(duration_ms)
        self.recent.add(time.monotonic())
        stats = self.endpoints.get(endpoint)
        if stats is None:
            stats = self.endpoints[endpoint] = EndpointStats()
        stats.record(status, duration_ms, slow)
        return slow

    def snapshot(self) -> dict[str, Any]:
        now = time.monotonic()
        uptime = max(now - self.started, 1e-9)
        times = summarise(self.window)
        return {
            "total_requests": self.total,
            "total_errors": self.errors,
            "server_errors": self.server_errors,
            "error_rate": round(self.errors / self.total, 4) if self.total else 0.0,
            "requests_per_second": round(self.total / uptime, 3),
            "requests_per_second_1m": self.recent.per_second(now),
            "response_time_ms": {
                "avg": round(self.total_ms / self.total, 3) if self.total else 0.0,
                "p50": times["p50"],
                "p95": times["p95"],
                "p99": times["p99"],
                "max": times["max"],
                "window": len(self.window),
            },
            "slow_requests": {"threshold_ms": self.slow_request_ms, "count": self.slow},
            "endpoints": {name: stats.snapshot() for name, stats in sorted(self.endpoints.items())},
        }
