"""The real server: `ollama-web serve` and `uvicorn ollama_web.main:app` on an empty DATA_DIR,
with no Ollama running and no .env."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from tests.fixtures.ports import free_port

pytestmark = pytest.mark.slow


def _wait_health(port: int, deadline: float) -> tuple[dict[str, object], float]:
    started = time.monotonic()
    while time.monotonic() < deadline:
        try:
            response = httpx.get(f"http://127.0.0.1:{port}/health", timeout=1.0)
        except httpx.TransportError:
            time.sleep(0.02)
            continue
        return response.json(), time.monotonic() - started
    raise AssertionError("the server did not answer /health in time")


@pytest.mark.parametrize(
    "command",
    [
        ["-m", "ollama_web", "serve", "--host", "127.0.0.1", "--port", "{port}"],
        ["-m", "uvicorn", "ollama_web.main:app", "--host", "127.0.0.1", "--port", "{port}"],
        # Migrated once by the supervisor before the two workers start.
        ["-m", "ollama_web", "serve", "--workers", "2", "--host", "127.0.0.1", "--port", "{port}"],
    ],
    ids=["ollama-web-serve", "uvicorn-main-app", "ollama-web-serve-2-workers"],
)
def test_fresh_server_answers_health_degraded_without_ollama(
    tmp_path: Path, command: list[str]
) -> None:
    port = free_port()
    dead_port = free_port()
    env = {
        **{k: v for k, v in os.environ.items() if k not in {"SECRET_KEY", "DATABASE_URL"}},
        "DATA_DIR": str(tmp_path / "data"),
        "LOG_DIR": str(tmp_path / "logs"),
        "BACKUP_DIR": str(tmp_path / "backups"),
        "OLLAMA_URL": f"http://127.0.0.1:{dead_port}",
    }
    args = [sys.executable, *(part.format(port=port) for part in command)]
    process = subprocess.Popen(args, env=env, cwd=tmp_path, stderr=subprocess.PIPE, text=True)
    try:
        started = time.monotonic()
        # The start is timed by bench/startup.py; here it only has to come, even on a
        # loaded machine (the answer of a process that hangs never does).
        body, _ = _wait_health(port, started + 30)
        assert body["status"] == "degraded"
        components = body["components"]
        assert isinstance(components, dict)
        assert components["database"]["status"] == "healthy"
        assert components["ollama"]["status"] == "unhealthy"
        assert components["ollama"]["nodes"][0]["status"] == "down"
        secret = tmp_path / "data" / ".secret_key"
        assert secret.stat().st_mode & 0o777 == 0o600
        _probes_answer_head_and_slashes_are_not_redirected(port)
    finally:
        process.terminate()
        _, stderr = process.communicate(timeout=30)
    # uvicorn re-raises SIGTERM after a clean shutdown, so -SIGTERM is a graceful exit too.
    assert process.returncode in (0, -signal.SIGTERM), stderr
    assert "Application shutdown complete" in stderr
    assert "Traceback" not in stderr


def _probes_answer_head_and_slashes_are_not_redirected(port: int) -> None:
    base = f"http://127.0.0.1:{port}"
    for path in ("/health", "/health/live", "/health/ready", "/info"):
        head = httpx.head(base + path, timeout=5.0)
        assert (head.status_code, head.content) == (200, b""), path
        assert head.headers["content-type"] == "application/json"
    slash = httpx.get(base + "/api/conversations/", headers={"Host": "evil.example"}, timeout=5.0)
    assert slash.status_code == 404
    assert "location" not in slash.headers
    assert slash.json()["error"] == "NOT_FOUND"


@pytest.mark.parametrize(
    "command",
    [
        ["-m", "ollama_web", "serve", "--workers", "1"],
        ["-m", "ollama_web", "serve", "--workers", "2"],
        ["-m", "uvicorn", "ollama_web.main:app"],
    ],
    ids=["serve", "serve-2-workers", "uvicorn-main-app"],
)
def test_a_server_that_fails_to_start_says_why_in_one_line_and_exits_3(
    tmp_path: Path, command: list[str]
) -> None:
    """A start that fails for what the server runs on (here, its secret key file is a
    directory) is one line and exit 3, whatever the command and number of workers: uvicorn
    printed Starlette's traceback, and its supervisor of several workers returned
    normally, so `serve` exited 0 (a service manager took it for a clean stop)."""
    (tmp_path / "data" / ".secret_key").mkdir(parents=True)
    env = {
        **{k: v for k, v in os.environ.items() if k not in {"SECRET_KEY", "DATABASE_URL"}},
        "DATA_DIR": str(tmp_path / "data"),
        "LOG_DIR": str(tmp_path / "logs"),
        "BACKUP_DIR": str(tmp_path / "backups"),
        "OLLAMA_URL": f"http://127.0.0.1:{free_port()}",
    }
    args = [sys.executable, *command, "--port", str(free_port())]
    result = subprocess.run(args, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert result.returncode == 3, result.stderr
    assert "cannot start: [Errno 21] Is a directory" in result.stderr
    assert "Traceback" not in result.stderr


def test_a_server_whose_migration_fails_says_why_in_one_line_and_exits_3(tmp_path: Path) -> None:
    """The migration runs in a child process; its failure was raised again as a bare
    RuntimeError, and uvicorn printed Starlette's whole traceback for it."""
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "ollama_web.db").write_bytes(b"this is not a database" * 100)
    env = {
        **{k: v for k, v in os.environ.items() if k not in {"SECRET_KEY", "DATABASE_URL"}},
        "DATA_DIR": str(tmp_path / "data"),
        "LOG_DIR": str(tmp_path / "logs"),
        "BACKUP_DIR": str(tmp_path / "backups"),
        "OLLAMA_URL": f"http://127.0.0.1:{free_port()}",
    }
    args = [sys.executable, "-m", "ollama_web", "serve", "--port", str(free_port())]
    result = subprocess.run(args, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert result.returncode == 3, result.stderr
    assert "cannot start: the database migration failed: " in result.stderr
    assert "Traceback" not in result.stderr
