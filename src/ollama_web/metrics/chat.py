"""Chat metrics hooks, called by the chat engine on its hot path.

    from ollama_web.metrics import chat as chat_metrics

    chat_metrics.generation_started()          # once per generation, when it starts
    chat_metrics.time_to_first_token(seconds)  # once, when the first token arrives
    chat_metrics.tokens_relayed(n)             # per relayed chunk (n tokens, usually 1)
    chat_metrics.upstream_error(node_url)      # when an Ollama node call fails
    chat_metrics.generation_finished()         # exactly once per started generation
                                               # (success, stop, error: use `finally`)

They are synchronous, never await, do no I/O and take no asyncio locks. `tokens_relayed`
only adds to an integer; the Prometheus token counter is brought up to date when a
generation finishes and when metrics are read. The numbers are per process (in
multi-process mode the Prometheus exposition sums the workers).

"Tokens per second" is tokens relayed divided by generation-seconds (the time integral of
the number of active generations), i.e. the average speed of one stream.
"""

from __future__ import annotations

import time
from collections import deque
from typing import Any

from ollama_web.metrics.http import percentile
from ollama_web.metrics.prometheus import prometheus

TTFT_WINDOW = 1000
MAX_NODES = 64
OTHER_NODE = "other"


class ChatStats:
    def __init__(self) -> None:
        self.active = 0
        self.started = 0
        self.finished = 0
        self.tokens = 0
        self.tokens_unexported = 0
        self.generation_seconds = 0.0
        self._last_change = time.monotonic()
        self.ttft: deque[float] = deque(maxlen=TTFT_WINDOW)
        self.ttft_count = 0
        self.upstream_errors: dict[str, int] = {}

    def advance(self) -> None:
        now = time.monotonic()
        self.generation_seconds += self.active * (now - self._last_change)
        self._last_change = now

    def export_tokens(self) -> None:
        if self.tokens_unexported:
            pending, self.tokens_unexported = self.tokens_unexported, 0
            prometheus().tokens.inc(pending)

    def snapshot(self) -> dict[str, Any]:
        self.advance()
        self.export_tokens()
        ttft = sorted(self.ttft)
        speed = self.tokens / self.generation_seconds if self.generation_seconds > 0 else 0.0
        return {
            "active_generations": self.active,
            "generations_started": self.started,
            "generations_finished": self.finished,
            "tokens_relayed": self.tokens,
            "tokens_per_second": round(speed, 3),
            "time_to_first_token_ms": {
                "p50": round(percentile(ttft, 0.50) * 1000, 3),
                "p95": round(percentile(ttft, 0.95) * 1000, 3),
                "count": self.ttft_count,
            },
            "upstream_errors": dict(sorted(self.upstream_errors.items())),
        }


_stats = ChatStats()


def stats() -> ChatStats:
    return _stats


def generation_started() -> None:
    _stats.advance()
    _stats.active += 1
    _stats.started += 1
    metrics = prometheus()
    metrics.generations.inc()
    metrics.generations_active.inc()


def generation_finished() -> None:
    _stats.advance()
    if _stats.active > 0:
        _stats.active -= 1
        prometheus().generations_active.dec()
    _stats.finished += 1
    _stats.export_tokens()


def tokens_relayed(n: int = 1) -> None:
    if n > 0:
        _stats.tokens += n
        _stats.tokens_unexported += n


def time_to_first_token(seconds: float) -> None:
    if seconds >= 0:
        _stats.ttft.append(seconds)
        _stats.ttft_count += 1
        prometheus().time_to_first_token.observe(seconds)


def upstream_error(node_url: str) -> None:
    node = node_url if node_url in _stats.upstream_errors else node_url[:200]
    if node not in _stats.upstream_errors and len(_stats.upstream_errors) >= MAX_NODES:
        node = OTHER_NODE
    _stats.upstream_errors[node] = _stats.upstream_errors.get(node, 0) + 1
    prometheus().upstream_errors.labels(node=node).inc()
