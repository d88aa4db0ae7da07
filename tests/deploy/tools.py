"""Helpers for the deployment validations: repository paths, external tools, subprocesses.

The tools (hadolint, docker-compose, systemd-analyze, nginx, openssl, check-jsonschema) are
installed by `scripts/test.sh` (PyPI dev extras and `scripts/services.sh`). Where one is
missing the test is skipped with the reason, except under CI=true, where it fails.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
VENV_BIN = Path(sys.executable).parent
IN_CI = os.environ.get("CI", "").lower() in {"1", "true", "yes"}


def require_tool(name: str) -> str:
    """The path of an executable (the virtualenv's bin first, then PATH)."""
    candidate = VENV_BIN / name
    if candidate.is_file() and os.access(candidate, os.X_OK):
        return str(candidate)
    found = shutil.which(name) or shutil.which(name, path="/usr/sbin:/sbin")
    if found:
        return found
    message = f"{name} is not installed (scripts/test.sh installs it)"
    if IN_CI:
        pytest.fail(f"CI=true but {message}")
    pytest.skip(message)


def run(
    args: list[str],
    *,
    cwd: Path | None = None,
    env: dict[str, str] | None = None,
    timeout: float = 60,
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        args,
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def describe(result: subprocess.CompletedProcess[str]) -> str:
    return f"exit {result.returncode}\nstdout:\n{result.stdout}\nstderr:\n{result.stderr}"


def read(relative: str) -> str:
    return (ROOT / relative).read_text(encoding="utf-8")
