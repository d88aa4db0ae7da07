"""The operator's documents stay true to the code: settings, commands, endpoints, API list."""

from __future__ import annotations

import argparse
import importlib.util
import re
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pydantic
import pytest
from pydantic import SecretStr

from ollama_web.app import create_app
from ollama_web.cli import build_parser
from ollama_web.core.config import Environment, Settings, secret_is_strong
from ollama_web.core.startup import describe_settings_error
from tests.deploy.tools import ROOT, describe, read, run

pytestmark = pytest.mark.tools

SETTINGS_VARIABLES = sorted(name.upper() for name in Settings.model_fields)
ENV_LINE = re.compile(r"^(?:# )?([A-Z][A-Z0-9_]*)=(.*)$", re.MULTILINE)
PLACEHOLDER_LINE = "SECRET_KEY=change-me-generate-with-openssl-rand-hex-32"
GENERATOR = ROOT / "scripts" / "gen_api_endpoints.py"
DOCUMENTS = ("DEPLOYMENT.md", "SECURITY.md")


@pytest.fixture
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """No setting from the test process's environment (fixtures set some) may leak in."""
    for name in SETTINGS_VARIABLES:
        monkeypatch.delenv(name, raising=False)


def env_example() -> dict[str, str]:
    return dict(ENV_LINE.findall(read(".env.example")))


def test_api_endpoints_md_is_up_to_date() -> None:
    result = run([sys.executable, str(GENERATOR), "--check"], cwd=ROOT)
    assert result.returncode == 0, describe(result)


def _generator() -> ModuleType:
    spec = importlib.util.spec_from_file_location("gen_api_endpoints", GENERATOR)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_generator_detects_a_stale_file_and_rewrites_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    generator = _generator()
    output = tmp_path / "API_ENDPOINTS.md"
    output.write_text(read("API_ENDPOINTS.md").replace("GET /health/live", "GET /gone"))
    assert generator.main(["--check", "--output", str(output)]) == 1
    assert "stale" in capsys.readouterr().err
    assert generator.main(["--output", str(output)]) == 0
    assert output.read_text(encoding="utf-8") == read("API_ENDPOINTS.md")
    assert generator.main(["--check", "--output", str(output)]) == 0


def test_api_endpoints_md_lists_every_operation_once() -> None:
    schema = create_app(Settings(_env_file=None)).openapi()
    expected = {
        f"{method.upper()} {path}"
        for path, item in schema["paths"].items()
        for method in item
        if method in {"get", "post", "put", "patch", "delete"}
    }
    listed = re.findall(r"^([A-Z]+ /\S*) — .+$", read("API_ENDPOINTS.md"), re.MULTILINE)
    assert sorted(listed) == sorted(expected)


@pytest.mark.parametrize("variable", SETTINGS_VARIABLES)
def test_every_setting_is_in_env_example(variable: str) -> None:
    assert variable in env_example(), f"{variable} is missing from .env.example"


@pytest.mark.parametrize("variable", SETTINGS_VARIABLES)
def test_every_setting_is_in_deployment_md(variable: str) -> None:
    assert re.search(rf"\b{variable}\b", read("DEPLOYMENT.md")), variable


@pytest.mark.usefixtures("clean_environment")
def test_env_example_defaults_are_the_real_defaults(tmp_path: Path) -> None:
    """Uncommenting every line of .env.example changes nothing but the placeholder secret."""
    lines = [
        f"{name}={value}"
        for name, value in env_example().items()
        if name in SETTINGS_VARIABLES and value != ""
    ]
    env_file = tmp_path / ".env"
    env_file.write_text("\n".join(lines) + "\n", encoding="utf-8")
    documented = Settings(_env_file=env_file).model_dump()
    defaults = Settings(_env_file=None).model_dump()
    differences = {
        name: (documented[name], defaults[name])
        for name in defaults
        if documented[name] != defaults[name] and name != "secret_key"
    }
    assert differences == {}


@pytest.mark.usefixtures("clean_environment")
def test_deployment_md_defaults_are_the_real_defaults() -> None:
    """Each configuration-reference row whose default is one literal states the real one."""
    rows = re.findall(r"^\| `([A-Z_]+)` \| `([^`\s]+)` \|", read("DEPLOYMENT.md"), re.MULTILINE)
    documented = {name: value for name, value in rows if name in SETTINGS_VARIABLES}
    assert len(documented) >= 40, "the configuration reference table is missing"
    defaults = Settings(_env_file=None).model_dump()
    stated = Settings(_env_file=None, **{k.lower(): v for k, v in documented.items()}).model_dump()
    differences = {
        name: (stated[name.lower()], defaults[name.lower()])
        for name in documented
        if stated[name.lower()] != defaults[name.lower()]
    }
    assert differences == {}


# Read by a library the server uses rather than by Settings.
LIBRARY_VARIABLES: set[str] = set()


def test_env_example_has_nothing_the_server_or_compose_does_not_read() -> None:
    compose = read("docker-compose.yml") + read("docker-compose.scale.yml")
    unknown = [
        name
        for name in env_example()
        if name not in SETTINGS_VARIABLES
        and name not in LIBRARY_VARIABLES
        and not name.startswith("COMPOSE_")
        and name not in compose
    ]
    assert unknown == []


def test_secret_placeholder_is_refused_in_production() -> None:
    assert PLACEHOLDER_LINE in read(".env.example").splitlines()
    placeholder = PLACEHOLDER_LINE.split("=", 1)[1]
    assert not secret_is_strong(SecretStr(placeholder))
    with pytest.raises(pydantic.ValidationError, match="SECRET_KEY"):
        Settings(_env_file=None, environment=Environment.PRODUCTION, secret_key=placeholder)


def test_deployment_md_shows_the_invalid_configuration_message_as_it_is(
    clean_environment: None,
) -> None:
    """Troubleshooting quotes the message a production start without SECRET_KEY prints,
    every line of it (its heading, one line per variable, and the hint)."""
    with pytest.raises(pydantic.ValidationError) as refused:
        Settings(_env_file=None, environment=Environment.PRODUCTION)
    message = describe_settings_error(refused.value)
    assert len(message.splitlines()) == 3
    quoted = "\n".join(f"  {line}" for line in message.splitlines())
    assert f"  ```text\n{quoted}\n  ```" in read("DEPLOYMENT.md")


def _subcommands() -> set[str]:
    parser = build_parser()
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return set(action.choices)
    raise AssertionError("no subcommands")


@pytest.mark.parametrize("document", DOCUMENTS)
def test_documented_commands_exist(document: str) -> None:
    # `docker exec ollama-web ollama-web backup`: a container name, then the command.
    used = set(re.findall(r"\bollama-web (?!ollama-web\b)([a-z][a-z-]*)", read(document)))
    assert used, f"{document} shows no ollama-web command"
    assert used <= _subcommands(), used - _subcommands()


def _route_paths(routes: list[Any], prefix: str = "") -> list[str]:
    """Every route path, including routers FastAPI keeps as included-router wrappers."""
    paths = []
    for route in routes:
        included = getattr(route, "original_router", None)
        if included is not None:
            context = getattr(route, "include_context", None)
            paths += _route_paths(included.routes, prefix + getattr(context, "prefix", ""))
        elif isinstance(getattr(route, "path", None), str):
            paths.append(prefix + route.path)
    return paths


def _route_patterns() -> list[re.Pattern[str]]:
    """One regex per route; `{param}` matches one path segment, or more for `{param:path}`."""
    app = create_app(Settings(_env_file=None))
    paths = set(_route_paths(app.routes))
    assert "/health/live" in paths
    patterns = []
    for path in paths:
        regex = re.sub(r"\\\{[^}]+:path\\\}", ".+", re.escape(path))
        regex = re.sub(r"\\\{[^}]+\\\}", "[^/]+", regex)
        patterns.append(re.compile(f"^{regex}$"))
    return patterns


def _exists(mentioned: str, patterns: list[re.Pattern[str]]) -> bool:
    """A path matches a route; a prefix (`/api/chat/`, `/api/admin/...`) starts some route."""
    if mentioned.endswith(("/", "...")):
        prefix = mentioned.removesuffix("...")
        return any(p.pattern.removeprefix("^").startswith(re.escape(prefix)) for p in patterns)
    return any(p.match(mentioned) for p in patterns)


@pytest.mark.parametrize("document", DOCUMENTS)
def test_documented_endpoints_exist(document: str) -> None:
    patterns = _route_patterns()
    mentioned = set(
        re.findall(
            r"`(?:[A-Z]+ )?(/(?:api|health|metrics|backup|info|docs|redoc)[^`?\s]*)", read(document)
        )
    )
    assert mentioned, f"{document} names no endpoint"
    missing = sorted(path for path in mentioned if not _exists(path, patterns))
    assert missing == []
