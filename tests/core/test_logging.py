"""Log files: access lines, JSON mode, and secrets never written."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ollama_web.core.config import Settings
from ollama_web.core.logging import redact
from tests.conftest import asgi_client

SECRETS = [
    "owk_SuperSecretKeyValue1234567890abcdef",
    "hunter2-password-value",
    "csrf-token-value-987654321",
    "session-cookie-value-123456789",
]


def test_redact_masks_every_kind_of_secret() -> None:
    line = (
        "Authorization: Bearer abc.def.ghi X-API-Key: owk_abc123 "
        '{"password": "p@ss", "new_password": "n3w"} ow_session=s3ss; csrf_token=c5rf'
    )
    redacted = redact(line)
    for secret in ("abc.def.ghi", "owk_abc123", "p@ss", "n3w", "s3ss", "c5rf"):
        assert secret not in redacted


async def _exercise(settings: Settings, app_factory: Callable[[Settings], Any]) -> Path:
    app = await app_factory(settings)
    async with asgi_client(app) as client:
        headers = {
            "Authorization": f"Bearer {SECRETS[0]}",
            "X-API-Key": SECRETS[0],
            "X-CSRF-Token": SECRETS[2],
            "Cookie": f"ow_session={SECRETS[3]}",
        }
        await client.get("/health", headers=headers)
        await client.post(
            "/api/auth/login",
            json={"username": "someone", "password": SECRETS[1]},
            headers=headers,
        )
        await client.get("/nope", headers=headers)
    return Path(settings.log_dir)


async def test_secrets_never_reach_any_log_file(
    settings_factory: Callable[..., Settings], app_factory: Callable[[Settings], Any]
) -> None:
    log_dir = await _exercise(settings_factory(log_level="DEBUG"), app_factory)
    files = list(log_dir.glob("*.log*"))
    assert files
    text = "".join(path.read_text() for path in files)
    assert "GET /health 200" in text
    for secret in SECRETS:
        assert secret not in text


async def test_structured_logging_writes_json_access_lines(
    settings_factory: Callable[..., Settings], app_factory: Callable[[Settings], Any]
) -> None:
    log_dir = await _exercise(settings_factory(structured_logging=True), app_factory)
    lines = (log_dir / "access.log").read_text().splitlines()
    records = [json.loads(line) for line in lines]
    health = next(r for r in records if r["route"] == "/health")
    assert health["status"] == 200
    assert health["method"] == "GET"
    assert health["duration_ms"] >= 0
    assert len(health["request_id"]) == 32
    unmatched = next(r for r in records if r["status"] == 404)
    assert unmatched["route"] == "<unmatched>"
    for secret in SECRETS:
        assert secret not in "\n".join(lines)
