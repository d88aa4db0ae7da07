"""The one typed settings object, read from the environment and `.env`."""

from __future__ import annotations

import ipaddress
import itertools
import re
from enum import StrEnum
from functools import cached_property
from pathlib import Path
from typing import Annotated, Any

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from ollama_web.core.database_url import to_async_database_url

# Values that must never protect a production server: the specification's example and the
# `.env.example` value (compared stripped, case-insensitively); then anything shorter than
# 32 characters, made of few distinct characters, or holding a placeholder's words.
PLACEHOLDER_SECRETS = frozenset(
    {
        "generate-with-openssl-rand-hex-32",
        "change-me-generate-with-openssl-rand-hex-32",
    }
)
# Whole words (separated by anything but letters and digits): "exchange" is not "change".
PLACEHOLDER_WORDS = frozenset({"change", "changeme", "example", "placeholder", "yoursecret"})
# The placeholders' instruction, however written ("GENERATE_WITH_OPENSSL_RAND_HEX_32",
# "my-generate-with-openssl-rand-hex-32-key"): compared with the letters and digits only.
PLACEHOLDER_CORE = "opensslrand"
_ORIGIN = re.compile(r"https?://(\[[0-9a-f:.]+\]|[a-z0-9]([a-z0-9.-]*[a-z0-9])?)(:[0-9]{1,5})?")
"""A browser's `Origin`: scheme, host, optional port; no path, no user info."""
MIN_SECRET_LENGTH = 32
MAX_WORKERS = 64
# Every number has an upper bound, far above any sensible value. Without one, a float took
# `inf` or `1e300` and an integer any size, and the server failed after validation instead
# of being refused, naming the variable: a timedelta overflow at start (BACKUP_INTERVAL_HOURS,
# GENERATION_CHECKPOINT_SECONDS) or in every backup's pruning (BACKUP_RETENTION_DAYS), a
# rotation that would check 10**12 file names (LOG_BACKUP_COUNT).
GIB = 1024**3
HOUR_MS = 3_600_000
# Each request counted in a moving window is kept until it leaves the window.
MAX_PER_MINUTE = 100_000
# The largest context a conversation may ask for (the bound of MAX_NUM_CTX).
NUM_CTX_CEILING = 4_194_304
# `aaaa...`, `0000...`, `abab...`. Not 10: a random 32-character hex key (128 bits, from
# `openssl rand -hex 16`) has fewer than 10 distinct characters about once in 12,000.
MIN_SECRET_DISTINCT_CHARACTERS = 8


class Environment(StrEnum):
    DEVELOPMENT = "development"
    PRODUCTION = "production"


class LogLevel(StrEnum):
    DEBUG = "DEBUG"
    INFO = "INFO"
    WARNING = "WARNING"
    ERROR = "ERROR"
    CRITICAL = "CRITICAL"


def _split_csv(value: Any) -> Any:
    if isinstance(value, str):
        return [part.strip() for part in value.split(",") if part.strip()]
    return value


CsvList = Annotated[list[str], NoDecode]


class Settings(BaseSettings):
    """Every setting of the server. Invalid values stop the server at start."""

    model_config = SettingsConfigDict(
        env_file=".env", env_file_encoding="utf-8", extra="ignore", case_sensitive=False
    )

    environment: Environment = Environment.DEVELOPMENT
    secret_key: SecretStr | None = None

    # Paths and services
    data_dir: Path = Path("./data")
    log_dir: Path = Path("./logs")
    backup_dir: Path = Path("./backups")
    database_url: str | None = None
    # PostgreSQL: the longest a connection or one statement of a request may take; then
    # the request answers 503 DATABASE_UNAVAILABLE instead of waiting on a lost server.
    database_timeout_seconds: float = Field(default=15.0, gt=0, le=3600)
    redis_url: str | None = None
    migrate_on_startup: bool = True

    # Server (used by `ollama-web serve`)
    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=1, le=65535)
    workers: int = Field(default=1, ge=1, le=MAX_WORKERS)
    # After SIGTERM: how long running answers may go on before they are stored interrupted.
    shutdown_grace_seconds: float = Field(default=25.0, ge=0, le=3600)

    # Ollama
    ollama_url: CsvList = Field(default_factory=lambda: ["http://localhost:11434"])
    ollama_connect_timeout_seconds: float = Field(default=2.0, gt=0, le=60)
    ollama_timeout_seconds: float = Field(default=300.0, gt=0, le=3600)
    ollama_list_timeout_seconds: float = Field(default=5.0, gt=0, le=120)
    ollama_health_cache_seconds: float = Field(default=5.0, ge=0, le=300)
    ollama_max_connections: int = Field(default=100, ge=1, le=10000)

    # HTTP
    cors_origins: CsvList = Field(default_factory=lambda: ["http://localhost:5173"])
    trusted_proxies: CsvList = Field(default_factory=list)
    max_request_bytes: int = Field(default=10 * 1024 * 1024, ge=1024, le=GIB)

    # Sessions and keys
    session_timeout_minutes: int = Field(default=60, ge=1, le=60 * 24 * 365)
    session_max_age_hours: int = Field(default=24 * 7, ge=1, le=24 * 365)
    cookie_secure: bool = False
    api_key_expiry_days: int = Field(default=0, ge=0, le=3650)
    api_key_rotation_grace_minutes: int = Field(default=60, ge=0, le=60 * 24 * 90)
    max_api_keys_per_user: int = Field(default=100, ge=1, le=100_000)
    # argon2id cost (argon2-cffi's RFC 9106 low-memory profile by default); tests lower it.
    password_hash_time_cost: int = Field(default=3, ge=1, le=20)
    password_hash_memory_kib: int = Field(default=65536, ge=64, le=4 * 1024 * 1024)

    # Rate limiting
    rate_limit_enabled: bool = True
    rate_limit_per_minute: int = Field(default=100, ge=1, le=MAX_PER_MINUTE)
    rate_limit_auth_per_minute: int = Field(default=5, ge=1, le=MAX_PER_MINUTE)
    rate_limit_chat_per_minute: int = Field(default=20, ge=1, le=MAX_PER_MINUTE)
    login_max_failures: int = Field(default=5, ge=1, le=1000)
    login_failure_window_minutes: int = Field(default=15, ge=1, le=7 * 24 * 60)

    # Protection
    csrf_protection_enabled: bool = True
    security_headers_enabled: bool = True
    hsts_enabled: bool = False

    # Chat
    chat_continue_on_disconnect: bool = True
    chat_disconnect_grace_seconds: float = Field(default=10.0, ge=0, le=3600)
    max_message_chars: int = Field(default=100_000, ge=1, le=10_000_000)
    max_images_per_message: int = Field(default=4, ge=0, le=64)
    max_image_bytes: int = Field(default=5 * 1024 * 1024, ge=1, le=GIB)
    max_concurrent_generations_per_user: int = Field(default=3, ge=1, le=100_000)
    # chat/options.py: what a conversation's options may ask of the node's runner.
    max_num_ctx: int = Field(default=131_072, ge=1, le=NUM_CTX_CEILING)
    runner_options_admin_only: bool = True
    sse_keepalive_seconds: float = Field(default=15.0, gt=0, le=3600)
    generation_checkpoint_seconds: float = Field(default=1.0, gt=0, le=300)

    # Backups
    backup_enabled: bool = True
    backup_retention_days: int = Field(default=30, ge=0, le=36500)
    backup_max_count: int = Field(default=50, ge=1, le=100_000)
    backup_interval_hours: float = Field(default=24.0, ge=0, le=24 * 365)

    # Monitoring and logs
    metrics_enabled: bool = True
    metrics_token: SecretStr | None = None
    # Exported to the environment before prometheus-client loads (it reads it there only).
    prometheus_multiproc_dir: Path | None = None
    slow_request_ms: int = Field(default=1000, ge=1, le=HOUR_MS)
    slow_query_ms: int = Field(default=200, ge=1, le=HOUR_MS)
    log_level: LogLevel = LogLevel.INFO
    structured_logging: bool = False
    log_max_bytes: int = Field(default=10 * 1024 * 1024, ge=1024, le=100 * GIB)
    log_backup_count: int = Field(default=10, ge=0, le=1000)

    @field_validator("ollama_url", "cors_origins", "trusted_proxies", mode="before")
    @classmethod
    def _csv(cls, value: Any) -> Any:
        return _split_csv(value)

    @field_validator("log_level", mode="before")
    @classmethod
    def _upper_level(cls, value: Any) -> Any:
        return value.upper() if isinstance(value, str) else value

    @field_validator("ollama_url")
    @classmethod
    def _ollama_urls(cls, value: list[str]) -> list[str]:
        if not value:
            raise ValueError("at least one Ollama URL is required")
        urls = [normalise_ollama_url(url) for url in value]
        shown = [public_url(url) for url in urls]
        for url in shown:
            if shown.count(url) > 1:
                # Nodes are told apart by what is shown of them, never by credentials.
                raise ValueError(f"lists the node {url} more than once")
        return urls

    @field_validator("trusted_proxies")
    @classmethod
    def _proxies(cls, value: list[str]) -> list[str]:
        for entry in value:
            ipaddress.ip_network(entry, strict=False)
        return value

    @field_validator("cors_origins")
    @classmethod
    def _origins(cls, value: list[str]) -> list[str]:
        if "*" in value:
            raise ValueError("a wildcard origin cannot be used with credentials; list origins")
        origins = [origin.rstrip("/").lower() for origin in value]  # as a browser sends it
        for origin in origins:
            if not _ORIGIN.fullmatch(origin):
                # No browser would send it: the page it was meant for is silently refused.
                raise ValueError(f"{origin!r} is not an origin: scheme://host[:port]")
        return origins

    @field_validator(
        "redis_url", "metrics_token", "secret_key", "prometheus_multiproc_dir", mode="before"
    )
    @classmethod
    def _blank_is_unset(cls, value: Any) -> Any:
        # `REDIS_URL=` in a .env means "not configured", not an empty URL.
        return None if isinstance(value, str) and not value.strip() else value

    @field_validator("secret_key", mode="before")
    @classmethod
    def _strip_secret(cls, value: Any) -> Any:
        return value.strip() if isinstance(value, str) else value

    @field_validator("redis_url")
    @classmethod
    def _redis_url(cls, value: str | None) -> str | None:
        if value is None:
            return None
        from redis.connection import parse_url  # imported only when Redis is configured

        # Refused here, as the client would refuse it once the server started (a traceback
        # from the lifespan, exit 3, restarted by a supervisor for ever). Its message
        # names the problem, never the URL (which may hold a password).
        parse_url(value.strip())  # type: ignore[no-untyped-call]
        return value.strip()

    @field_validator("database_url")
    @classmethod
    def _database_url(cls, value: str | None) -> str | None:
        if value is None or not value.strip():
            return None
        to_async_database_url(value.strip())  # refuses what the server could not use
        return value.strip()

    @model_validator(mode="after")
    def _production_secret(self) -> Settings:
        problem = secret_problem(self.secret_key)
        if self.environment is Environment.PRODUCTION and problem is not None:
            raise ValueError(
                f"SECRET_KEY {problem}, which ENVIRONMENT=production refuses; "
                "set it to a random value made with `openssl rand -hex 32`"
            )
        # A bearer that reads the metrics without an account: as hard to guess as the key.
        token_problem = secret_problem(self.metrics_token)
        if (
            self.environment is Environment.PRODUCTION
            and self.metrics_token is not None
            and token_problem is not None
        ):
            raise ValueError(
                f"METRICS_TOKEN {token_problem}, which ENVIRONMENT=production refuses; "
                "set it to a random value made with `openssl rand -hex 32`, or unset it"
            )
        return self

    @property
    def embedded_database_file(self) -> Path | None:
        """The default SQLite file in DATA_DIR; None when DATABASE_URL names a database."""
        return self.data_dir / "ollama_web.db" if self.database_url is None else None

    @cached_property
    def async_database_url(self) -> str:
        """The SQLAlchemy URL with an async driver."""
        embedded = self.embedded_database_file
        if embedded is not None:
            from sqlalchemy.engine import URL

            # Built, not pasted: DATA_DIR is a path, not a piece of URL. `?`, `#` or `%20`
            # in it are escaped here, and SQLAlchemy reads back the same path. A relative
            # `file:...` would be a URI to SQLite (built with SQLITE_USE_URI): `./` first.
            path = embedded.as_posix()
            path = f"./{path}" if path.startswith("file:") else path
            return URL.create("sqlite+aiosqlite", database=path).render_as_string()
        return to_async_database_url(str(self.database_url))

    @property
    def is_sqlite(self) -> bool:
        return self.async_database_url.startswith("sqlite")

    @property
    def sqlite_file(self) -> Path | None:
        """The SQLite database file; None for PostgreSQL and an in-memory database."""
        if not self.is_sqlite:
            return None
        if self.embedded_database_file is not None:
            return self.embedded_database_file
        from sqlalchemy.engine import make_url

        database = make_url(self.async_database_url).database
        return Path(database) if database and database != ":memory:" else None

    @property
    def is_production(self) -> bool:
        return self.environment is Environment.PRODUCTION


def secret_problem(secret: SecretStr | None) -> str | None:
    """Why this key must not protect a production server; None when it may."""
    if secret is None:
        return "is not set"
    value = secret.get_secret_value().strip()
    lowered = value.lower()
    tokens = re.split(r"[^a-z0-9]+", lowered)
    words = {*tokens, *(first + second for first, second in itertools.pairwise(tokens))}
    squeezed = "".join(tokens)
    if lowered in PLACEHOLDER_SECRETS or words & PLACEHOLDER_WORDS or PLACEHOLDER_CORE in squeezed:
        return "is a placeholder"
    if len(value) < MIN_SECRET_LENGTH:
        return f"is shorter than {MIN_SECRET_LENGTH} characters"
    if len(set(value)) < MIN_SECRET_DISTINCT_CHARACTERS:
        return f"has fewer than {MIN_SECRET_DISTINCT_CHARACTERS} distinct characters"
    return None


def secret_is_strong(secret: SecretStr | None) -> bool:
    return secret_problem(secret) is None


def normalise_ollama_url(url: str) -> str:
    """Apply Ollama's OLLAMA_HOST rules: no scheme -> http; no port -> 11434 (unless a scheme
    was given, then the scheme's default port is implied)."""
    url = url.strip()
    if url.endswith("://"):
        raise ValueError(f"Ollama URL {url!r} has no host")
    url = url.rstrip("/")
    if "://" not in url:
        authority, _, rest = url.partition("/")
        host = authority.rpartition("@")[2]  # user:password@ may come first
        if ":" not in host.rpartition("]")[2]:  # `[::1]` has no port, `[::1]:80` has one
            authority = f"{authority}:11434"
        url = f"http://{authority}" + (f"/{rest}" if rest else "")
    _check_ollama_url(url)
    return url


def public_url(url: str) -> str:
    """`url` without its user info: `http://user:secret@host:11434` -> `http://host:11434`.
    Credentials for a proxy in front of Ollama stay in the requests, never in what is shown
    (health, model lists, metrics labels, logs, configuration errors)."""
    scheme, separator, rest = url.partition("://")
    authority, slash, path = rest.partition("/")
    return f"{scheme}{separator}{authority.rpartition('@')[2]}{slash}{path}"


def _check_ollama_url(url: str) -> None:
    """Refuse at start what every request to the node would fail on."""
    import httpx

    scheme = url.partition("://")[0]
    shown = public_url(url)
    if scheme not in ("http", "https"):
        raise ValueError(f"unsupported scheme in Ollama URL {shown!r}")
    if any(character.isspace() for character in url):
        raise ValueError(f"Ollama URL {shown!r} contains whitespace")
    try:
        parsed = httpx.URL(url)
    except httpx.InvalidURL as exc:
        raise ValueError(f"invalid Ollama URL {shown!r}: {exc}") from None
    if not parsed.host:
        raise ValueError(f"Ollama URL {shown!r} has no host")
    if parsed.port is not None and not 1 <= parsed.port <= 65535:
        raise ValueError(f"Ollama URL {shown!r}: the port must be 1-65535")
