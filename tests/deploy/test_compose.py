"""docker-compose.yml (and the scale-out override): valid for Compose and the compose-spec."""

from __future__ import annotations

import io
import os
import re
import shutil
from pathlib import Path
from typing import Any

import pytest
from ruamel.yaml import YAML

from tests.deploy.tools import ROOT, describe, read, require_tool, run

pytestmark = pytest.mark.tools

COMPOSE_FILES = ("docker-compose.yml", "docker-compose.scale.yml")
GRACEFUL_SHUTDOWN_SECONDS = 30  # uvicorn's timeout_graceful_shutdown in `ollama-web serve`


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """A copy of the deployment files with `.env` made from `.env.example`, as documented."""
    for name in (*COMPOSE_FILES, "Dockerfile", ".dockerignore"):
        shutil.copyfile(ROOT / name, tmp_path / name)
    shutil.copyfile(ROOT / ".env.example", tmp_path / ".env")
    return tmp_path


def compose(project: Path, *args: str, **env: str) -> Any:
    """Run docker-compose in `project` with a clean environment plus `env`."""
    binary = require_tool("docker-compose")
    clean = {key: value for key, value in os.environ.items() if not key.startswith("COMPOSE_")}
    return run([binary, *args], cwd=project, env={**clean, **env})


def resolved(project: Path, *args: str, **env: str) -> dict[str, Any]:
    result = compose(project, *args, "config", **env)
    assert result.returncode == 0, describe(result)
    loaded: dict[str, Any] = YAML(typ="safe").load(io.StringIO(result.stdout))
    return loaded


def seconds(duration: str) -> float:
    units = {"h": 3600, "m": 60, "s": 1, "ms": 0.001}
    return sum(
        float(value) * units[unit] for value, unit in re.findall(r"([\d.]+)(ms|h|m|s)", duration)
    )


def test_compose_config_is_valid(project: Path) -> None:
    result = compose(project, "-f", "docker-compose.yml", "config", "-q")
    assert result.returncode == 0, describe(result)
    assert "WARNING" not in result.stderr, result.stderr


def test_compose_files_match_the_compose_spec_schema() -> None:
    checker = require_tool("check-jsonschema")
    result = run([checker, "--builtin-schema", "vendor.compose-spec", *COMPOSE_FILES], cwd=ROOT)
    assert result.returncode == 0, describe(result)


def test_backend_ollama_and_named_volumes(project: Path) -> None:
    config = resolved(project, "-f", "docker-compose.yml")
    services = config["services"]
    assert {"backend", "ollama"} <= services.keys()
    assert services["ollama"]["image"].startswith("ollama/ollama")
    backend = services["backend"]
    mounts = {volume.split(":")[1]: volume.split(":")[0] for volume in backend["volumes"]}
    for path in ("/app/data", "/app/logs", "/app/backups"):
        assert mounts[path] in config["volumes"], f"{path} is not on a named volume"
    environment = backend["environment"]
    assert environment["OLLAMA_URL"] == "http://ollama:11434"
    assert environment["ENVIRONMENT"] == "production"
    # The placeholder from .env.example reaches the server, which refuses it in production.
    assert environment["SECRET_KEY"] == "change-me-generate-with-openssl-rand-hex-32"
    assert "DATABASE_URL" not in environment
    assert "REDIS_URL" not in environment
    assert backend["ports"][0].startswith("127.0.0.1:8000:8000")
    assert seconds(backend["stop_grace_period"]) > GRACEFUL_SHUTDOWN_SECONDS


def test_postgres_and_redis_are_opt_in_profiles(project: Path) -> None:
    services = resolved(project, "-f", "docker-compose.yml")["services"]
    assert services["postgres"]["profiles"] == ["postgres"]
    assert services["redis"]["profiles"] == ["redis"]
    assert "profiles" not in services["backend"]
    assert "profiles" not in services["ollama"]


def test_scale_override_points_the_backend_at_postgres_and_redis(project: Path) -> None:
    with (project / ".env").open("a", encoding="utf-8") as env_file:
        env_file.write(
            "COMPOSE_FILE=docker-compose.yml:docker-compose.scale.yml\n"
            "COMPOSE_PROFILES=postgres,redis\n"
            "POSTGRES_PASSWORD=0123abcd\n"
        )
    config = resolved(project)
    backend = config["services"]["backend"]
    environment = backend["environment"]
    assert (
        environment["DATABASE_URL"] == "postgresql://ollama_web:0123abcd@postgres:5432/ollama_web"
    )
    assert environment["REDIS_URL"] == "redis://redis:6379/0"
    assert backend["depends_on"]["postgres"]["condition"] == "service_healthy"
    assert backend["depends_on"]["redis"]["condition"] == "service_healthy"
    postgres = config["services"]["postgres"]["environment"]
    assert postgres["POSTGRES_PASSWORD"] == "0123abcd"
    assert postgres["POSTGRES_USER"] == "ollama_web"
    assert postgres["POSTGRES_DB"] == "ollama_web"
    services = compose(project, "config", "--services")
    assert set(services.stdout.split()) == {"backend", "ollama", "postgres", "redis"}


def test_scale_override_refuses_to_run_without_a_postgres_password(project: Path) -> None:
    result = compose(
        project, "-f", "docker-compose.yml", "-f", "docker-compose.scale.yml", "config"
    )
    assert result.returncode != 0
    assert "POSTGRES_PASSWORD" in result.stderr


def test_compose_needs_the_env_file_it_documents(tmp_path: Path) -> None:
    shutil.copyfile(ROOT / "docker-compose.yml", tmp_path / "docker-compose.yml")
    result = compose(tmp_path, "-f", "docker-compose.yml", "config", "-q")
    assert result.returncode != 0
    assert ".env" in result.stderr
    assert "cp .env.example .env" in read("docker-compose.yml")
