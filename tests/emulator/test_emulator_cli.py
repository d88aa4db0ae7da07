"""The emulator runs standalone with ``python -m ollama_web.emulator``."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from pathlib import Path

import httpx

import ollama_web.emulator


async def test_standalone_module_serves() -> None:
    src = Path(ollama_web.emulator.__file__).resolve().parents[2]
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(src), env.get("PYTHONPATH")]))
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "ollama_web.emulator", "--port", "0",
        "--models", "llama3.2:latest,qwen3:latest",
        stdout=asyncio.subprocess.PIPE, env=env,
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        line = (await asyncio.wait_for(proc.stdout.readline(), timeout=10)).decode()
        url = line.strip().rsplit(" ", 1)[-1]
        assert url.startswith("http://127.0.0.1:")
        async with httpx.AsyncClient(base_url=url) as http:
            assert (await http.get("/api/version")).json() == {"version": "0.33.0"}
            tags = (await http.get("/api/tags")).json()
        assert [m["name"] for m in tags["models"]] == ["llama3.2:latest", "qwen3:latest"]
    finally:
        proc.send_signal(signal.SIGTERM)
        code = await asyncio.wait_for(proc.wait(), timeout=10)
    assert code == 0
