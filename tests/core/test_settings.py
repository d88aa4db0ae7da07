"""Settings: defaults, parsing, secret handling, and refusal of invalid configuration."""

from __future__ import annotations

import os
import secrets
import stat
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pydantic
import pytest
from pydantic import SecretStr

from ollama_web.core.config import Settings, normalise_ollama_url, secret_is_strong
from ollama_web.core.secrets import load_or_create_secret, secret_file
from ollama_web.core.startup import EXIT_CONFIG_ERROR, ConfigurationError, load_settings
from tests.conftest import asgi_client


def _python(*args: str, env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    """`python *args` in a process of its own (the command line as an operator runs it)."""
    return subprocess.run(
        [sys.executable, *args], capture_output=True, text=True, env=env, cwd=cwd,
        timeout=60, check=False,
    )  # fmt: skip


def test_comma_separated_lists_are_parsed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OLLAMA_URL", "http://a:11434, b ,https://c.example")
    monkeypatch.setenv("CORS_ORIGINS", "http://x.test,http://y.test/")
    monkeypatch.setenv("TRUSTED_PROXIES", "10.0.0.0/8,127.0.0.1")
    settings = Settings(_env_file=None)  # type: ignore[call-arg]
    assert settings.ollama_url == ["http://a:11434", "http://b:11434", "https://c.example"]
    assert settings.cors_origins == ["http://x.test", "http://y.test"]
    assert settings.trusted_proxies == ["10.0.0.0/8", "127.0.0.1"]


def test_ollama_host_rules_match_ollama() -> None:
    assert normalise_ollama_url("localhost") == "http://localhost:11434"
    assert normalise_ollama_url("10.1.2.3:9999") == "http://10.1.2.3:9999"
    assert normalise_ollama_url("[::1]") == "http://[::1]:11434"
    assert normalise_ollama_url("[::1]:9999") == "http://[::1]:9999"
    assert normalise_ollama_url("proxy:secret@gpu1") == "http://proxy:secret@gpu1:11434"
    assert normalise_ollama_url("http://host") == "http://host"
    assert normalise_ollama_url("https://host/prefix/") == "https://host/prefix"


@pytest.mark.parametrize(
    ("variable", "value", "fragment"),
    [
        ("PORT", "not-a-port", "PORT"),
        ("RATE_LIMIT_PER_MINUTE", "0", "RATE_LIMIT_PER_MINUTE"),
        ("LOG_LEVEL", "LOUD", "LOG_LEVEL"),
        ("CORS_ORIGINS", "*", "CORS_ORIGINS"),
        ("TRUSTED_PROXIES", "not-an-ip", "TRUSTED_PROXIES"),
        ("DATABASE_URL", "mysql://x", "DATABASE_URL"),
        ("DATABASE_URL", "postgresql+psycopg://u:p@h/d", "DATABASE_URL"),
        ("DATABASE_URL", "sqlite+pysqlite:///x.db", "DATABASE_URL"),
        ("DATABASE_URL", "sqlitefoo://x", "DATABASE_URL"),
        ("DATABASE_URL", "not a url", "DATABASE_URL"),
        ("DATABASE_URL", "postgresql://h/d?sslmode=sometimes", "DATABASE_URL"),
        # asyncpg would fail every connection on these (a traceback, before): named at start.
        ("DATABASE_URL", "postgresql://h/d?options=-cx", "'options' is not understood"),
        ("DATABASE_URL", "postgresql://h/d?sslrootcert=a&sslrootcert=b", "more than once"),
        ("DATABASE_URL", "postgresql://h/d?connect_timeout=soon", "connect_timeout must"),
        ("DATABASE_URL", "postgresql://h/d?connect_timeout=0", "connect_timeout must"),
        ("DATABASE_URL", "postgresql://h/d?prepared_statement_cache_size=-1", "whole number"),
        ("OLLAMA_URL", "ftp://x", "OLLAMA_URL"),
        ("OLLAMA_URL", "http://[::1", "OLLAMA_URL"),
        ("OLLAMA_URL", "http://localhost:99999", "OLLAMA_URL"),
        ("OLLAMA_URL", "http://localhost:0", "OLLAMA_URL"),
        ("OLLAMA_URL", "http://a b", "OLLAMA_URL"),
        ("OLLAMA_URL", "http://", "OLLAMA_URL"),
        ("OLLAMA_URL", "http://ok:11434,http://:80", "OLLAMA_URL"),
        ("DATABASE_URL", "postgresql://u:pw@Leak:Me9/x@127.0.0.1:5432/db", "percent-encode"),
        # Told apart by what is shown of them: the same node twice, whatever the users.
        ("OLLAMA_URL", "http://a:Me9@gpu1:11434,http://b:Me9@gpu1:11434", "gpu1:11434 more"),
        # Accepted before, then a timedelta overflow (a traceback) once the server started.
        ("BACKUP_INTERVAL_HOURS", "inf", "BACKUP_INTERVAL_HOURS"),
        ("BACKUP_INTERVAL_HOURS", "1e300", "BACKUP_INTERVAL_HOURS"),
        ("BACKUP_INTERVAL_HOURS", "1e11", "BACKUP_INTERVAL_HOURS"),
        ("GENERATION_CHECKPOINT_SECONDS", "inf", "GENERATION_CHECKPOINT_SECONDS"),
        ("BACKUP_RETENTION_DAYS", str(10**12), "BACKUP_RETENTION_DAYS"),
        # No browser sends these: the page they were meant for was silently refused.
        ("CORS_ORIGINS", "not a url", "is not an origin"),
        ("CORS_ORIGINS", "https://chat.example.com/app", "is not an origin"),
        ("CORS_ORIGINS", "http://localhost:5173,null", "is not an origin"),
        # The redis client refused these in the lifespan: a traceback and exit 3, before.
        ("REDIS_URL", "localhost:6379", "REDIS_URL"),
        ("REDIS_URL", "http://:Me9@cache", "REDIS_URL"),
        ("REDIS_URL", "redis://:Me9@cache:port", "REDIS_URL"),
        ("LOG_BACKUP_COUNT", str(10**12), "LOG_BACKUP_COUNT"),
    ],
)
def test_invalid_values_are_refused_naming_the_variable(
    monkeypatch: pytest.MonkeyPatch, variable: str, value: str, fragment: str
) -> None:
    monkeypatch.chdir(Path(__file__).parent)
    monkeypatch.setenv(variable, value)
    with pytest.raises(ConfigurationError) as info:
        load_settings()
    assert fragment in str(info.value)
    assert "Me9" not in str(info.value)  # no piece of a password


@pytest.mark.parametrize(
    "secret",
    [
        None,
        "generate-with-openssl-rand-hex-32",
        " GENERATE-WITH-OPENSSL-RAND-HEX-32 ",
        "change-me-generate-with-openssl-rand-hex-32",
        "change-me-generate-with-openssl-rand-hex-32 ",
        "your-secret-key-here-change-in-production",
        "an-example-key-0123456789abcdefghijklmnop",
        "placeholder-0123456789abcdefghijklmnopqrs",
        "GENERATE_WITH_OPENSSL_RAND_HEX_32",
        "my-generate-with-openssl-rand-hex-32-key",
        "run: openssl rand -hex 32 and paste it here",
        "short",
        "a" * 32,
        "0" * 64,
        "ab" * 32,
        "0123456" * 10,
    ],
)
def test_production_refuses_missing_weak_or_placeholder_secret(secret: str | None) -> None:
    with pytest.raises(pydantic.ValidationError, match="SECRET_KEY") as info:
        Settings(_env_file=None, environment="production", secret_key=secret)  # type: ignore[call-arg]
    assert "openssl rand -hex 32" in str(info.value)


@pytest.mark.parametrize(
    "secret",
    [
        secrets.token_hex(32),
        secrets.token_hex(16),
        secrets.token_urlsafe(32),
        secrets.token_hex(32).upper(),
        "correct-horse-battery-staple-exchange-rate",  # "exchange" is not "change"
        "tangible-counterexample-quietly-orbit-7",
    ],
    ids=["hex-32", "hex-16", "urlsafe-32", "hex-32-upper", "exchange-rate", "counterexample"],
)
def test_production_accepts_strong_secret(secret: str) -> None:
    settings = Settings(_env_file=None, environment="production", secret_key=secret)  # type: ignore[call-arg]
    assert settings.is_production


@pytest.mark.parametrize("token", ["x", "metrics", "change-me-metrics-token-0123456789abc"])
def test_production_refuses_a_weak_metrics_token(token: str) -> None:
    """It reads the metrics without an account: as hard to guess as the secret key."""
    strong = secrets.token_hex(32)
    with pytest.raises(pydantic.ValidationError, match="METRICS_TOKEN"):
        Settings(_env_file=None, environment="production", secret_key=strong, metrics_token=token)  # type: ignore[call-arg]
    development = Settings(_env_file=None, metrics_token=token)  # type: ignore[call-arg]
    assert development.metrics_token is not None
    for accepted in (None, secrets.token_hex(32)):
        settings = Settings(
            _env_file=None, environment="production", secret_key=strong, metrics_token=accepted
        )  # type: ignore[call-arg]
        assert settings.is_production


def test_origins_are_kept_as_a_browser_sends_them() -> None:
    settings = Settings(_env_file=None, cors_origins="https://Chat.Example.com/,http://[::1]:8080")  # type: ignore[call-arg]
    assert settings.cors_origins == ["https://chat.example.com", "http://[::1]:8080"]


def test_generated_key_passes_the_production_check(
    settings_factory: Callable[..., Settings],
) -> None:
    key = load_or_create_secret(settings_factory(secret_key=None))
    assert secret_is_strong(SecretStr(key))


def test_weak_secret_exits_78_naming_secret_key(tmp_path: Path) -> None:
    env = {
        **os.environ,
        "ENVIRONMENT": "production",
        "SECRET_KEY": "a" * 32,
        "DATA_DIR": str(tmp_path),
    }
    result = _python("-m", "ollama_web", "migrate", "--status", env=env, cwd=tmp_path)
    assert result.returncode == EXIT_CONFIG_ERROR
    assert "SECRET_KEY has fewer than" in result.stderr
    assert "openssl rand -hex 32" in result.stderr


def test_missing_secret_is_generated_once_with_mode_0600(
    settings_factory: Callable[..., Settings],
) -> None:
    settings = settings_factory(secret_key=None)
    first = load_or_create_secret(settings)
    path = secret_file(settings)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert len(first) >= 32
    assert load_or_create_secret(settings) == first


def test_placeholder_secret_in_development_uses_generated_key(
    settings_factory: Callable[..., Settings],
) -> None:
    settings = settings_factory(secret_key="generate-with-openssl-rand-hex-32")
    assert load_or_create_secret(settings) != "generate-with-openssl-rand-hex-32"


@pytest.mark.parametrize(
    ("variable", "value"),
    [("PORT", "99999"), ("BACKUP_INTERVAL_HOURS", "inf"), ("REDIS_URL", "localhost:6379")],
)
def test_serve_refuses_invalid_setting_with_message_not_traceback(
    tmp_path: Path, variable: str, value: str
) -> None:
    env = {**os.environ, variable: value, "DATA_DIR": str(tmp_path)}
    result = _python("-m", "ollama_web", "serve", env=env, cwd=tmp_path)
    assert result.returncode == EXIT_CONFIG_ERROR
    assert variable in result.stderr
    assert "Traceback" not in result.stderr


def _numbers() -> dict[str, tuple[type, float | None]]:
    """Every numeric setting: its type and its upper bound (None when it has none)."""
    found: dict[str, tuple[type, float | None]] = {}
    for name, field in Settings.model_fields.items():
        if field.annotation in (int, float):
            bounds = [getattr(rule, "le", None) for rule in field.metadata]
            found[name] = (field.annotation, next((b for b in bounds if b is not None), None))
    return found


def test_every_number_has_an_upper_bound_and_refuses_infinity() -> None:
    """An unbounded number took `inf` or 10**12 and failed once the server ran."""
    numbers = _numbers()
    assert "backup_interval_hours" in numbers
    assert [name for name, (_, bound) in numbers.items() if bound is None] == []
    for name, (kind, bound) in numbers.items():
        assert bound is not None
        for value in ("inf", "1e300", str(int(bound) + 1)) if kind is float else (10**12,):
            with pytest.raises(pydantic.ValidationError, match=name):
                Settings(_env_file=None, **{name: value})


async def test_the_server_runs_with_every_number_at_its_upper_bound(
    settings_factory: Callable[..., Settings],
    app_factory: Callable[[Settings], Any],
) -> None:
    """The bounds are values the server works with: it starts, takes its startup backup
    (pruned by BACKUP_RETENTION_DAYS), schedules the next (BACKUP_INTERVAL_HOURS), sweeps
    answers (GENERATION_CHECKPOINT_SECONDS) and answers, all at the largest values."""
    # The argon2 cost is not used here (no password is hashed): 4 GiB a hash is for none.
    unused = {"password_hash_memory_kib", "password_hash_time_cost"}
    largest = {name: bound for name, (_, bound) in _numbers().items() if name not in unused}
    settings = settings_factory(**largest, backup_enabled=True, rate_limit_enabled=True)
    app = await app_factory(settings)
    async with asgi_client(app) as client:
        health = await client.get("/health")
        assert health.status_code == 200, health.text
        login = await client.post("/api/auth/login", json={"username": "x", "password": "y"})
        assert login.status_code == 401, login.text
    runtime = app.state.backups
    await runtime.startup_backup_done()
    assert runtime.health()["status"] == "healthy"


@pytest.mark.parametrize(
    "command",
    [["-m", "ollama_web", "serve"], ["-m", "uvicorn", "ollama_web.main:app", "--port", "9"]],
    ids=["ollama-web-serve", "uvicorn-main-app"],
)
def test_production_without_secret_refuses_to_start(tmp_path: Path, command: list[str]) -> None:
    env = {**os.environ, "ENVIRONMENT": "production", "DATA_DIR": str(tmp_path)}
    env.pop("SECRET_KEY", None)
    result = _python(*command, env=env, cwd=tmp_path)
    assert result.returncode == EXIT_CONFIG_ERROR
    assert "SECRET_KEY" in result.stderr
    assert "openssl rand -hex 32" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize(
    ("database_url", "async_url"),
    [
        ("postgresql://u:p%40ss@h:5432/d", "postgresql+asyncpg://u:p%40ss@h:5432/d"),
        ("postgres://u@h/d", "postgresql+asyncpg://u@h/d"),
        ("postgresql+asyncpg://h/d?ssl=require", "postgresql+asyncpg://h/d?ssl=require"),
        ("postgresql://h/d?sslmode=disable", "postgresql+asyncpg://h/d?ssl=disable"),
        ("postgresql://h/d?sslmode=verify-full", "postgresql+asyncpg://h/d?ssl=verify-full"),
        (
            "postgresql://h/d?sslmode=verify-ca&sslrootcert=/ca.pem&connect_timeout=5",
            "postgresql+asyncpg://h/d?connect_timeout=5&ssl=verify-ca&sslrootcert=%2Fca.pem",
        ),
        (
            "postgresql://u@/d?host=/run/postgresql",
            "postgresql+asyncpg://u@/d?host=%2Frun%2Fpostgresql",
        ),
        ("sqlite:///rel/x.db", "sqlite+aiosqlite:///rel/x.db"),
        ("sqlite+aiosqlite:////abs/x.db", "sqlite+aiosqlite:////abs/x.db"),
    ],
)
def test_database_url_is_given_its_async_driver_and_asyncpg_ssl(
    database_url: str, async_url: str
) -> None:
    settings = Settings(_env_file=None, database_url=database_url)  # type: ignore[call-arg]
    assert settings.async_database_url == async_url


def test_ollama_url_credentials_are_kept_and_kept_out_of_errors() -> None:
    """user:password@ is legitimate (Basic credentials for a proxy in front of Ollama)."""
    assert normalise_ollama_url("https://proxy:secret@gpu1:443") == "https://proxy:secret@gpu1:443"
    with pytest.raises(ValueError, match="port must be 1-65535") as info:
        normalise_ollama_url("http://proxy:secret@gpu1:99999")
    assert "secret" not in str(info.value)


def test_blank_optional_values_mean_unset(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in (
        "REDIS_URL",
        "METRICS_TOKEN",
        "SECRET_KEY",
        "DATABASE_URL",
        "PROMETHEUS_MULTIPROC_DIR",
    ):
        monkeypatch.setenv(name, "")
    settings = Settings(_env_file=None)  # type: ignore[call-arg]
    assert settings.prometheus_multiproc_dir is None
    assert settings.redis_url is None
    assert settings.metrics_token is None
    assert settings.secret_key is None
    assert settings.database_url is None
