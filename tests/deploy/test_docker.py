"""The Dockerfile and `.dockerignore`: lint, structure, and the commands they rely on."""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path
from typing import Any

import pytest
from fastapi import FastAPI

from ollama_web import cli
from tests.deploy.dockerfile import (
    build_args,
    dockerignore_excludes,
    env_values,
    exec_form,
    stages,
)
from tests.deploy.tools import ROOT, describe, read, require_tool, run
from tests.fixtures.ports import free_port

pytestmark = pytest.mark.tools

DOCKERFILE = read("Dockerfile")
RUNTIME = stages(DOCKERFILE)[-1]


def test_hadolint_finds_no_warning() -> None:
    hadolint = require_tool("hadolint")
    result = run([hadolint, "--failure-threshold", "warning", "Dockerfile"], cwd=ROOT)
    assert result.returncode == 0, describe(result)


def test_image_is_multi_stage_on_slim_python_311() -> None:
    found = stages(DOCKERFILE)
    assert len(found) >= 2
    args = build_args(DOCKERFILE)
    bases = {stage.base.replace("${PYTHON_IMAGE}", args.get("PYTHON_IMAGE", "")) for stage in found}
    assert all(base.startswith("python:3.11-slim") for base in bases), bases


def test_runtime_stage_gets_only_the_built_virtualenv() -> None:
    copies = RUNTIME.all("COPY") + RUNTIME.all("ADD")
    assert copies, "the runtime stage copies nothing"
    for args in copies:
        assert args.startswith("--from="), f"runtime copies from the build context: {args}"
    assert RUNTIME.all("RUN"), "the runtime stage creates its user and directories"
    assert not any("pip install" in args for args in RUNTIME.all("RUN"))


def test_runtime_runs_as_an_unprivileged_user() -> None:
    user = RUNTIME.last("USER")
    assert user is not None
    name = user.split(":")[0]
    assert name not in {"root", "0"}


def test_volumes_port_and_environment() -> None:
    volumes = " ".join(RUNTIME.all("VOLUME"))
    for path in ("/app/data", "/app/logs", "/app/backups"):
        assert path in volumes
    env = env_values(RUNTIME)
    assert env["DATA_DIR"] == "/app/data"
    assert env["LOG_DIR"] == "/app/logs"
    assert env["BACKUP_DIR"] == "/app/backups"
    assert env["ENVIRONMENT"] == "production"
    assert {"PORT", "WORKERS"} <= env.keys()
    assert RUNTIME.last("EXPOSE") == env["PORT"]


def test_command_takes_workers_and_port_from_the_environment(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """The image's CMD, run through the real CLI: PORT and WORKERS come from the env."""
    command = exec_form(RUNTIME.last("CMD") or "[]")
    assert command[:2] == ["ollama-web", "serve"]
    captured: dict[str, Any] = {}

    def supervise(config: Any) -> int:  # several workers: uvicorn's supervisor, not run
        captured.update(host=config.host, port=config.port, workers=config.workers)
        captured["app"] = config.app
        return 0

    monkeypatch.setattr(cli, "_supervise", supervise)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("PORT", "8123")
    monkeypatch.setenv("WORKERS", "3")
    assert cli.main(command[1:]) == 0
    assert captured["host"] == "0.0.0.0"
    assert captured["port"] == 8123
    assert captured["workers"] == 3
    assert captured["app"] == "ollama_web.main:app"


def _healthcheck_command() -> list[str]:
    healthcheck = RUNTIME.last("HEALTHCHECK")
    assert healthcheck is not None
    _, _, command = healthcheck.partition(" CMD ")
    argv = exec_form(command.strip())
    assert argv[0] == "python", "the slim image has no curl: the probe must use python"
    return [sys.executable, *argv[1:]]


async def test_healthcheck_probes_liveness_and_fails_when_down(
    app: FastAPI, live_server: Any
) -> None:
    argv = _healthcheck_command()
    assert "/health/live" in " ".join(argv)
    async with live_server(app) as base_url:
        port = base_url.rsplit(":", 1)[1]
        # In a thread: the server runs on this event loop and must keep answering.
        up = await asyncio.to_thread(run, argv, env={**os.environ, "PORT": port}, timeout=10)
        assert up.returncode == 0, describe(up)
    down = run(argv, env={**os.environ, "PORT": str(free_port())}, timeout=10)
    assert down.returncode != 0


@pytest.mark.parametrize(
    ("path", "excluded"),
    [
        ("pyproject.toml", False),
        ("README.md", False),
        ("src/ollama_web/app.py", False),
        ("src/ollama_web/migrations/versions/0001_initial_schema.py", False),
        (".env", True),
        (".venv/bin/python", True),
        (".git/HEAD", True),
        ("data/ollama_web.db", True),
        ("data/.secret_key", True),
        ("backups/ollama_web_backup_20240101_120000.db.gz", True),
        ("logs/app.log", True),
        ("tests/conftest.py", True),
        ("src/ollama_web/__pycache__/app.cpython-311.pyc", True),
        ("src/ollama_web.egg-info/PKG-INFO", True),
    ],
)
def test_dockerignore_keeps_secrets_and_state_out_of_the_context(path: str, excluded: bool) -> None:
    assert dockerignore_excludes(read(".dockerignore"), path) is excluded


def test_every_file_the_build_copies_is_in_the_context() -> None:
    ignore = read(".dockerignore")
    build = stages(DOCKERFILE)[0]
    for args in build.all("COPY"):
        *sources, _destination = args.split()
        for source in sources:
            assert (ROOT / source).exists(), source
            assert not dockerignore_excludes(ignore, source.rstrip("/")), source
