"""`/metrics`, `/metrics/summary`, `/metrics/prometheus`: access, exact counts, templates,
slow requests and queries, and the chat hooks."""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from ollama_web.emulator import OllamaEmulator
from ollama_web.metrics import chat as chat_metrics
from ollama_web.metrics import http as http_metrics
from ollama_web.metrics.prometheus import prometheus
from tests.conftest import asgi_client
from tests.fixtures.auth import create_test_user
from tests.metrics.conftest import METRICS_TOKEN, MetricsApp, sample_value

TOKEN = {"Authorization": f"Bearer {METRICS_TOKEN}"}


async def _metrics(client: httpx.AsyncClient) -> dict[str, Any]:
    response = await client.get("/metrics", headers=TOKEN)
    assert response.status_code == 200
    body: dict[str, Any] = response.json()
    return body


async def _prometheus(client: httpx.AsyncClient) -> str:
    response = await client.get("/metrics/prometheus", headers=TOKEN)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    return response.text


def _endpoint(body: dict[str, Any], name: str) -> dict[str, Any]:
    empty = {"requests": 0, "errors": 0, "slow": 0}
    endpoint: dict[str, Any] = body["endpoints"].get(name, empty)
    return endpoint


async def test_access_needs_an_admin_or_the_metrics_token(metrics_app: MetricsApp) -> None:
    app = await metrics_app()
    admin = await create_test_user(app, role="admin")
    user = await create_test_user(app)
    async with asgi_client(app) as client:
        for path in ("/metrics", "/metrics/summary", "/metrics/prometheus"):
            assert (await client.get(path)).status_code == 401
            assert (await client.get(path, headers=user.headers)).status_code == 403
            assert (await client.get(path, headers=admin.headers)).status_code == 200
            assert (await client.get(path, headers=TOKEN)).status_code == 200
            wrong = await client.get(path, headers={"Authorization": "Bearer not-the-token"})
            assert wrong.status_code == 401


async def test_metrics_can_be_switched_off(metrics_app: MetricsApp) -> None:
    app = await metrics_app(metrics_enabled=False)
    async with asgi_client(app) as client:
        response = await client.get("/metrics", headers=TOKEN)
    assert response.status_code == 404
    assert getattr(app.state, "metrics", None) is None


async def test_numbers_move_by_exactly_the_requests_made(metrics_app: MetricsApp) -> None:
    app = await metrics_app()
    async with asgi_client(app) as client:
        before = await _metrics(client)
        prom_before = await _prometheus(client)
        for _ in range(3):
            assert (await client.get("/info")).status_code == 200
        random_ids = [uuid.uuid4().hex for _ in range(2)]
        for item_id in random_ids:
            assert (await client.get(f"/probe/items/{item_id}")).status_code == 200
        probes = [f"/wp-admin/{uuid.uuid4().hex}.php" for _ in range(4)]
        for path in probes:
            assert (await client.get(path)).status_code == 404
        assert (await client.get("/api/auth/me")).status_code == 401
        after = await _metrics(client)
        prom_after = await _prometheus(client)

    # 10 requests, plus the first /metrics and /metrics/prometheus calls themselves.
    assert after["total_requests"] - before["total_requests"] == 12
    assert after["total_errors"] - before["total_errors"] == 5
    moved = {
        name: _endpoint(after, name)["requests"] - _endpoint(before, name)["requests"]
        for name in after["endpoints"]
    }
    assert moved == {
        "GET /info": 3,
        "GET /probe/items/{item_id}": 2,
        "GET <unmatched>": 4,
        "GET /api/auth/me": 1,
        "GET /metrics": 1,
        "GET /metrics/prometheus": 1,
    }
    assert _endpoint(after, "GET <unmatched>")["errors"] == 4
    assert _endpoint(after, "GET /api/auth/me")["status"] == {"4xx": 1}
    text = str(after)
    assert not any(item_id in text for item_id in random_ids), "labels are templates"
    assert "wp-admin" not in text
    assert "wp-admin" not in prom_after

    def prom(route: str, status: str) -> float:
        labels = {"method": "GET", "route": route, "status": status}
        name = "ollama_web_http_requests_total"
        return sample_value(prom_after, name, **labels) - sample_value(prom_before, name, **labels)

    assert prom("/info", "200") == 3
    assert prom("/probe/items/{item_id}", "200") == 2
    assert prom("<unmatched>", "404") == 4
    assert prom("/api/auth/me", "401") == 1


async def test_response_times_and_rates_are_reported(metrics_app: MetricsApp) -> None:
    app = await metrics_app()
    async with asgi_client(app) as client:
        for _ in range(5):
            await client.get("/probe/slow")
        body = await _metrics(client)
        summary = (await client.get("/metrics/summary", headers=TOKEN)).json()
    slow = _endpoint(body, "GET /probe/slow")
    assert slow["requests"] == 5
    assert 30 <= slow["p50_ms"] <= slow["p95_ms"] <= slow["p99_ms"] <= slow["max_ms"]
    assert slow["avg_ms"] >= 30
    times = body["response_time_ms"]
    assert times["p50"] <= times["p95"] <= times["p99"] <= times["max"]
    assert body["requests_per_second"] > 0
    assert body["requests_per_second_1m"] > 0
    assert body["error_rate"] == 0
    assert body["uptime_seconds"] > 0
    assert set(summary) >= {"total_requests", "error_rate", "p95_ms", "busiest_endpoints"}
    assert summary["slowest_endpoints"][0]["endpoint"] == "GET /probe/slow"


async def test_slow_requests_are_logged_with_request_id_and_counted(
    metrics_app: MetricsApp,
) -> None:
    app = await metrics_app(slow_request_ms=10)
    async with asgi_client(app) as client:
        before = await _metrics(client)
        prom_before = await _prometheus(client)
        response = await client.get("/probe/slow", headers={"X-Request-ID": "slow-probe-42"})
        after = await _metrics(client)
        prom_after = await _prometheus(client)
    assert response.headers["x-request-id"] == "slow-probe-42"
    assert after["slow_requests"]["count"] - before["slow_requests"]["count"] >= 1
    assert after["slow_requests"]["threshold_ms"] == 10
    assert _endpoint(after, "GET /probe/slow")["slow"] == 1
    labels = {"method": "GET", "route": "/probe/slow"}
    name = "ollama_web_http_slow_requests_total"
    assert sample_value(prom_after, name, **labels) - sample_value(prom_before, name, **labels) == 1
    log = (app.state.settings.log_dir / "app.log").read_text(encoding="utf-8")
    line = next(line for line in log.splitlines() if "slow-probe-42" in line)
    assert "slow request GET /probe/slow 200" in line


async def test_a_whole_answer_s_time_is_the_model_s_not_a_slow_request(
    metrics_app: MetricsApp, ollama_emulator: OllamaEmulator
) -> None:
    """`POST /api/chat/message` lasts as long as the answer: never logged or counted as
    slow (it would be every time), still in the response times; other routes still are."""
    ollama_emulator.config.reply_tokens = 20
    ollama_emulator.config.tokens_per_second = 400.0  # ~50 ms, over the threshold
    app = await metrics_app(
        slow_request_ms=10, ollama_url=[ollama_emulator.url], ollama_health_cache_seconds=0.0
    )
    user = await create_test_user(app)
    async with asgi_client(app) as client:
        prom_before = await _prometheus(client)
        answered = await client.post(
            "/api/chat/message",
            json={"model": "llama3.2", "content": "hello"},
            headers={**user.headers, "X-Request-ID": "whole-answer-1"},
        )
        await client.get("/probe/slow", headers={"X-Request-ID": "slow-probe-43"})
        after = await _metrics(client)
        prom_after = await _prometheus(client)
    assert answered.status_code == 200, answered.text
    chat = _endpoint(after, "POST /api/chat/message")
    assert chat["requests"] == 1
    assert chat["max_ms"] >= 40
    assert chat["slow"] == 0
    assert _endpoint(after, "GET /probe/slow")["slow"] == 1
    name = "ollama_web_http_slow_requests_total"
    labels = {"method": "POST", "route": "/api/chat/message"}
    assert sample_value(prom_after, name, **labels) == sample_value(prom_before, name, **labels)
    log = (app.state.settings.log_dir / "app.log").read_text(encoding="utf-8")
    assert "whole-answer-1" not in log
    assert "slow-probe-43" in log


async def test_slow_queries_are_counted(metrics_app: MetricsApp) -> None:
    app = await metrics_app()
    async with asgi_client(app) as client:
        before = await _metrics(client)
        prom_before = await _prometheus(client)
        app.state.core.slow_queries.count += 2  # what the engine's recorder does
        after = await _metrics(client)
        prom_after = await _prometheus(client)
    assert after["slow_queries"]["count"] - before["slow_queries"]["count"] == 2
    name = "ollama_web_db_slow_queries_total"
    assert sample_value(prom_after, name) - sample_value(prom_before, name) == 2


async def test_chat_hooks_feed_json_and_prometheus(metrics_app: MetricsApp) -> None:
    app: FastAPI = await metrics_app()
    node = f"http://node-{uuid.uuid4().hex[:8]}:11434"
    async with asgi_client(app) as client:
        before = (await _metrics(client))["chat"]
        prom_before = await _prometheus(client)
        chat_metrics.generation_started()
        during = (await _metrics(client))["chat"]
        chat_metrics.time_to_first_token(0.25)
        for _ in range(3):
            chat_metrics.tokens_relayed(10)
        chat_metrics.upstream_error(node)
        time.sleep(0.01)
        chat_metrics.generation_finished()
        after = (await _metrics(client))["chat"]
        prom_after = await _prometheus(client)
    assert during["active_generations"] == before["active_generations"] + 1
    assert after["active_generations"] == before["active_generations"]
    assert after["generations_started"] - before["generations_started"] == 1
    assert after["generations_finished"] - before["generations_finished"] == 1
    assert after["tokens_relayed"] - before["tokens_relayed"] == 30
    assert after["time_to_first_token_ms"]["count"] - before["time_to_first_token_ms"]["count"] == 1
    assert after["upstream_errors"][node] == 1
    assert after["tokens_per_second"] > 0

    def moved(name: str, **labels: str) -> float:
        return sample_value(prom_after, name, **labels) - sample_value(prom_before, name, **labels)

    assert moved("ollama_web_tokens_relayed_total") == 30
    assert moved("ollama_web_generations_total") == 1
    assert moved("ollama_web_upstream_errors_total", node=node) == 1
    assert moved("ollama_web_time_to_first_token_seconds_count") == 1
    assert moved("ollama_web_generations_active") == 0


def test_the_token_hook_only_counts_until_the_numbers_are_read() -> None:
    """Per token, the hook adds to a plain integer; Prometheus gets the sum when a
    generation ends or the numbers are read, never a counter update per token."""

    def exported() -> float:
        return sample_value(prometheus().render().decode(), "ollama_web_tokens_relayed_total")

    before = exported()
    for _ in range(1000):
        chat_metrics.tokens_relayed(1)
    assert exported() == before
    chat_metrics.stats().snapshot()
    assert exported() == before + 1000


@pytest.mark.parametrize("count", [1, 70])
def test_upstream_error_labels_stay_bounded(count: int) -> None:
    stats = chat_metrics.stats()
    for index in range(count):
        chat_metrics.upstream_error(f"http://bounded-{index}.invalid:11434")
    assert len(stats.upstream_errors) <= chat_metrics.MAX_NODES + 1


async def test_a_burst_of_slow_requests_is_summed_up_after_ten_lines(
    metrics_app: MetricsApp,
) -> None:
    """Each slow request is counted; the log gets a line each for the first ten of a second
    and, when that second is over, one line with how many more there were."""
    app = await metrics_app(slow_request_ms=10)
    async with asgi_client(app) as client:
        await asyncio.gather(*(client.get("/probe/slow") for _ in range(25)))
        after = await _metrics(client)
        await asyncio.sleep(1.1)  # the second is over: the summary is written
    assert _endpoint(after, "GET /probe/slow")["slow"] == 25
    slow = app.state.metrics.slow  # the burst's, and maybe a cold /metrics
    log = (app.state.settings.log_dir / "app.log").read_text(encoding="utf-8")
    assert log.count("slow request GET ") == 10
    assert f"{slow - 10} more slow requests in the last second, not logged one by one" in log


def test_the_log_budget_starts_again_each_second(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without an event loop the summary waits for the next event (no timer to run it)."""
    now = [1000.0]
    monkeypatch.setattr(http_metrics.time, "monotonic", lambda: now[0])
    lines: list[str] = []
    handler = logging.Handler()
    handler.emit = lambda record: lines.append(record.getMessage())  # type: ignore[method-assign]
    http_metrics.logger.addHandler(handler)
    try:
        budget = http_metrics.LogBudget(2, "things")
        assert [budget.allow() for _ in range(5)] == [True, True, False, False, False]
        now[0] += 0.99
        assert budget.allow() is False
        assert lines == []
        now[0] += 0.02
        assert [budget.allow() for _ in range(3)] == [True, True, False]
        assert lines == ["4 more things in the last second, not logged one by one"]
        assert budget.held_back == 1
    finally:
        http_metrics.logger.removeHandler(handler)
