#!/usr/bin/env python3
"""Write API_ENDPOINTS.md from the application's OpenAPI schema.

    python scripts/gen_api_endpoints.py            # (re)write API_ENDPOINTS.md
    python scripts/gen_api_endpoints.py --check    # exit 1 if API_ENDPOINTS.md is stale

The app is built with every optional feature on and no lifespan (nothing is started, no
database is touched), so the list is the same on every machine and in every environment.
One line per operation: `METHOD /path — summary`, grouped by tag in the order of the schema's
`tags` list (then of first appearance).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUTPUT = ROOT / "API_ENDPOINTS.md"
METHODS = ("get", "post", "put", "patch", "delete", "head", "options", "trace")
# Values that make every route exist whatever the environment of the caller says.
FIXED_SETTINGS: dict[str, Any] = {
    "environment": "development",
    "secret_key": "api-endpoints-generator-0123456789abcdef",
    "metrics_enabled": True,
    "backup_enabled": True,
    "rate_limit_enabled": True,
    "csrf_protection_enabled": True,
    "security_headers_enabled": True,
}


def build_schema() -> dict[str, Any]:
    from ollama_web.app import create_app
    from ollama_web.core.config import Settings

    settings = Settings(_env_file=None, **FIXED_SETTINGS)
    schema: dict[str, Any] = create_app(settings).openapi()
    return schema


def _summary(operation: dict[str, Any]) -> str:
    summary = str(operation.get("summary") or "").strip()
    if not summary:
        description = str(operation.get("description") or "").strip()
        summary = description.splitlines()[0] if description else ""
    summary = summary or str(operation.get("operationId", ""))
    if operation.get("deprecated"):
        summary += " (deprecated)"
    return summary


def operations(schema: dict[str, Any]) -> list[tuple[str, str, str, str]]:
    """(tag, METHOD, path, summary) for every operation, in the schema's order."""
    rows = []
    for path, item in schema.get("paths", {}).items():
        for method in METHODS:
            operation = item.get(method)
            if operation is None:
                continue
            tags = operation.get("tags") or ["other"]
            rows.append((str(tags[0]), method.upper(), path, _summary(operation)))
    return rows


def render(schema: dict[str, Any]) -> str:
    info = schema.get("info", {})
    rows = operations(schema)
    tags: list[str] = [str(tag["name"]) for tag in schema.get("tags", [])]
    for tag, *_ in rows:
        if tag not in tags:
            tags.append(tag)
    lines = [
        "# API endpoints",
        "",
        f"{info.get('title', 'API')} {info.get('version', '')}".rstrip()
        + f" — {len(rows)} operations. Generated from the OpenAPI schema by"
        " `scripts/gen_api_endpoints.py`; do not edit by hand (the test suite fails when this"
        " file is stale).",
        "",
        "The interactive reference is served by the running server at `/docs` (Swagger UI)"
        " and `/redoc`; the schema itself at `/openapi.json`. Error bodies are always"
        ' `{"error", "message", "details", "request_id"}`.',
    ]
    for tag in tags:
        lines += ["", f"## {tag}", "", "```text"]
        lines += [f"{m} {p} — {s}" for t, m, p, s in rows if t == tag]
        lines.append("```")
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if the file is stale")
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT, help="file to write")
    args = parser.parse_args(argv)
    text = render(build_schema())
    output: Path = args.output
    if args.check:
        current = output.read_text(encoding="utf-8") if output.exists() else ""
        if current != text:
            print(
                f"{output.name} is stale: run `python scripts/gen_api_endpoints.py`",
                file=sys.stderr,
            )
            return 1
        print(f"{output.name} is up to date")
        return 0
    output.write_text(text, encoding="utf-8")
    print(f"wrote {output} ({text.count(chr(10))} lines)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
