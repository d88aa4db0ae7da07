"""/docs and /redoc render in a real browser under the Content-Security-Policy.

Runs headless Chromium when it is installed (Debian package `chromium`), else skips.
"""

from __future__ import annotations

import asyncio
import re
import shutil
import subprocess
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from fastapi import FastAPI

from ollama_web.core.config import Settings

pytestmark = pytest.mark.slow

BROWSER = shutil.which("chromium") or shutil.which("chromium-browser")
VIOLATION = re.compile(r"[^\n]*violates the following Content Security Policy directive[^\n]*")


def _render(url: str) -> tuple[str, str]:
    assert BROWSER is not None
    completed = subprocess.run(
        [
            BROWSER,
            "--headless=new",
            "--no-sandbox",
            "--disable-gpu",
            "--no-first-run",
            "--enable-logging=stderr",
            "--v=0",
            "--virtual-time-budget=8000",
            "--dump-dom",
            url,
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    return completed.stdout, completed.stderr


@pytest.mark.skipif(BROWSER is None, reason="chromium is not installed")
async def test_docs_render_under_the_policy(
    app_factory: Callable[[Settings], Awaitable[FastAPI]],
    settings_factory: Callable[..., Settings],
    live_server: Any,
) -> None:
    app = await app_factory(settings_factory())
    async with live_server(app) as base_url:
        swagger, swagger_log = await asyncio.to_thread(_render, f"{base_url}/docs")
        redoc, redoc_log = await asyncio.to_thread(_render, f"{base_url}/redoc")
    for dom in (swagger, redoc):
        assert "Take a backup now" in dom, "the operations were rendered from /openapi.json"
    assert 'class="opblock' in swagger
    assert 'class="btn authorize' in swagger, "the security schemes give an Authorize button"
    violations = VIOLATION.findall(swagger_log) + [
        line
        for line in VIOLATION.findall(redoc_log)
        if "cdn.redoc.ly" not in line  # ReDoc's remote logo: blocked, and rightly so
    ]
    assert violations == []
    assert "Uncaught" not in swagger_log + redoc_log
