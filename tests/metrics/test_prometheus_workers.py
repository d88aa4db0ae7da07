"""Prometheus multi-process mode: two uvicorn workers, one exposition that counts both."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from tests.conftest import TEST_SECRET
from tests.fixtures.ports import free_port
from tests.metrics.conftest import METRICS_TOKEN, sample_value

pytestmark = pytest.mark.slow

REQUESTS = 40


SERVE = ["-m", "ollama_web", "serve", "--workers", "2"]
UVICORN = [
    *("-m", "uvicorn", "ollama_web.main:app", "--workers", "2"),
    *("--no-proxy-headers", "--log-level", "warning"),
]


@pytest.mark.parametrize(
    ("command", "in_dotenv"),
    [(UVICORN, False), (SERVE, True), (UVICORN, True)],
    ids=["uvicorn-environment", "serve-dotenv", "uvicorn-dotenv"],
)
def test_every_worker_is_counted_whichever_answers_the_scrape(
    tmp_path: Path, command: list[str], in_dotenv: bool
) -> None:
    """PROMETHEUS_MULTIPROC_DIR works from the environment and from `.env` (which only the
    settings read: prometheus-client reads os.environ)."""
    multiproc = tmp_path / "prometheus"
    env = {
        **{
            k: v
            for k, v in os.environ.items()
            if k not in {"DATABASE_URL", "REDIS_URL", "PROMETHEUS_MULTIPROC_DIR"}
        },
        "SECRET_KEY": TEST_SECRET,
        "DATA_DIR": str(tmp_path / "data"),
        "LOG_DIR": str(tmp_path / "logs"),
        "BACKUP_DIR": str(tmp_path / "backups"),
        "OLLAMA_URL": "http://127.0.0.1:9",
        "BACKUP_ENABLED": "false",
        "RATE_LIMIT_ENABLED": "false",
        "METRICS_TOKEN": METRICS_TOKEN,
    }
    if in_dotenv:
        (tmp_path / ".env").write_text(f"PROMETHEUS_MULTIPROC_DIR={multiproc}\n")
    else:
        multiproc.mkdir()
        env["PROMETHEUS_MULTIPROC_DIR"] = str(multiproc)
    migrate = [sys.executable, "-m", "ollama_web", "migrate"]
    subprocess.run(migrate, env=env, cwd=tmp_path, check=True, capture_output=True)
    port = free_port()
    args = [sys.executable, *command, "--host", "127.0.0.1", "--port", str(port)]
    server = subprocess.Popen(args, env=env, cwd=tmp_path, stderr=subprocess.PIPE, text=True)
    base = f"http://127.0.0.1:{port}"
    token = {"Authorization": f"Bearer {METRICS_TOKEN}"}
    # No keep-alive: every request is a new connection the kernel hands to either worker.
    fresh = httpx.Limits(max_keepalive_connections=0)
    try:
        with httpx.Client(base_url=base, limits=fresh, timeout=10) as client:
            deadline = time.monotonic() + 30
            workers: set[int] = set()
            while len(workers) < 2 and time.monotonic() < deadline:
                assert server.poll() is None, server.communicate()[1]
                try:
                    workers.add(client.get("/metrics", headers=token).json()["worker"]["pid"])
                except httpx.TransportError:
                    time.sleep(0.1)
            assert len(workers) == 2, "both workers answered"
            for _ in range(REQUESTS):
                assert client.get("/info").status_code == 200
            scrapes = [client.get("/metrics/prometheus", headers=token).text for _ in range(6)]
    finally:
        server.terminate()
        server.communicate(timeout=30)
    labels = {"method": "GET", "route": "/info", "status": "200"}
    counts = {sample_value(text, "ollama_web_http_requests_total", **labels) for text in scrapes}
    assert counts == {REQUESTS}, "every scrape sums both workers"
    assert list(multiproc.glob("*.db")), "the workers wrote their values there"
