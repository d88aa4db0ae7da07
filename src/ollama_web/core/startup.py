"""Load settings for a command, turning invalid configuration into a clear message."""

from __future__ import annotations

import sys

import pydantic

from ollama_web.core.config import Settings

EXIT_CONFIG_ERROR = 78  # EX_CONFIG from sysexits.h


class ConfigurationError(Exception):
    pass


def describe_settings_error(exc: pydantic.ValidationError) -> str:
    lines = ["Invalid configuration:"]
    for err in exc.errors():
        name = "_".join(str(part) for part in err.get("loc", ()) if isinstance(part, str)).upper()
        message = str(err.get("msg", "invalid value")).removeprefix("Value error, ")
        lines.append(f"  {name or 'SETTINGS'}: {message}")
    lines.append("Fix the environment variable(s) above (or .env) and start again.")
    return "\n".join(lines)


def load_settings() -> Settings:
    try:
        return Settings()
    except pydantic.ValidationError as exc:
        raise ConfigurationError(describe_settings_error(exc)) from None


def load_settings_or_exit() -> Settings:
    try:
        return load_settings()
    except ConfigurationError as exc:
        print(exc, file=sys.stderr)
        raise SystemExit(EXIT_CONFIG_ERROR) from None
