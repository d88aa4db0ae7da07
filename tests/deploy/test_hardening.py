"""The unit's `MemoryDenyWriteExecute=yes` holds: the real `ollama-web serve`, with two
workers, serves logins (argon2), the database and Ollama calls while the kernel refuses it
any writable+executable memory.

systemd enforces the directive with a seccomp filter; Linux 6.3+ offers the same rule to any
process as `prctl(PR_SET_MDWE, PR_MDWE_REFUSE_EXEC_GAIN)`, inherited by children, which is
what the launcher below sets before it execs the server.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from ollama_web.emulator import OllamaEmulator
from tests.fixtures.ports import free_port

pytestmark = pytest.mark.tools

LAUNCHER = """
import ctypes, mmap, os, sys
libc = ctypes.CDLL(None, use_errno=True)
PR_SET_MDWE, PR_MDWE_REFUSE_EXEC_GAIN = 65, 1
if libc.prctl(PR_SET_MDWE, PR_MDWE_REFUSE_EXEC_GAIN, 0, 0, 0) != 0:
    sys.exit(77)
try:
    mmap.mmap(-1, 4096, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)
except OSError:
    pass
else:
    sys.exit(76)
os.execv(sys.argv[1], sys.argv[1:])
"""
NO_MDWE = 77
NOT_ENFORCED = 76


@contextlib.asynccontextmanager
async def mdwe_server(tmp_path: Path, ollama_url: str, database: Path) -> AsyncIterator[str]:
    port = free_port()
    (tmp_path / "data").mkdir()
    shutil.copyfile(database, tmp_path / "data" / "ollama_web.db")
    command = Path(sys.executable).parent / "ollama-web"
    env = {
        **os.environ,
        "ENVIRONMENT": "development",
        "SECRET_KEY": "mdwe-test-secret-0123456789abcdef0123456789",
        "DATA_DIR": str(tmp_path / "data"),
        "LOG_DIR": str(tmp_path / "logs"),
        "BACKUP_DIR": str(tmp_path / "backups"),
        "OLLAMA_URL": ollama_url,
        "BACKUP_ENABLED": "false",
        "RATE_LIMIT_ENABLED": "false",
    }
    env.pop("DATABASE_URL", None)
    env.pop("REDIS_URL", None)
    argv = [str(command), "serve", "--port", str(port), "--workers", "2"]
    process = subprocess.Popen(
        [sys.executable, "-c", LAUNCHER, *argv],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    base_url = f"http://127.0.0.1:{port}"
    try:
        await _wait_until_live(process, base_url)
        yield base_url
    finally:
        process.terminate()
        await asyncio.to_thread(process.wait, 40)
        if process.stderr is not None:
            process.stderr.close()


async def _wait_until_live(process: subprocess.Popen[bytes], base_url: str) -> None:
    deadline = time.monotonic() + 30
    async with httpx.AsyncClient(base_url=base_url, timeout=2) as client:
        while time.monotonic() < deadline:
            if process.poll() is not None:
                stderr = process.stderr.read().decode(errors="replace") if process.stderr else ""
                if process.returncode == NO_MDWE:
                    # A kernel feature, not a tool: nothing to install, so a skip even in CI.
                    pytest.skip("this kernel has no PR_SET_MDWE (Linux 6.3+)")
                assert process.returncode != NOT_ENFORCED, "W+X memory still allowed"
                raise AssertionError(f"server exited {process.returncode}:\n{stderr}")
            with contextlib.suppress(httpx.TransportError):
                if (await client.get("/health/live")).status_code == 200:
                    return
            await asyncio.sleep(0.1)
    raise AssertionError("the server did not become live")


async def test_server_works_without_writable_executable_memory(
    tmp_path: Path, ollama_emulator: OllamaEmulator, sqlite_template: Path
) -> None:
    async with (
        mdwe_server(tmp_path, ollama_emulator.url, sqlite_template) as base_url,
        httpx.AsyncClient(base_url=base_url, timeout=20) as client,
    ):
        setup = await client.post(
            "/api/auth/setup", json={"username": "admin", "password": "a long enough password"}
        )
        assert setup.status_code == 201, setup.text
        headers = {"Authorization": f"Bearer {setup.json()['api_key']}"}
        me = await client.get("/api/auth/me", headers=headers)
        assert me.status_code == 200, me.text
        models = await client.get("/api/models", headers=headers)
        assert models.status_code == 200, models.text
        assert models.json()["models"]
        health = await client.get("/health")
        assert health.json()["components"]["database"]["status"] == "healthy"
