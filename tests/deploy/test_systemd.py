"""ollama-web-backend.service: verified by systemd, hardened, and stopping gracefully."""

from __future__ import annotations

import re
import sys
from pathlib import Path
from typing import Any

import pytest

from ollama_web import cli
from tests.deploy.tools import describe, read, require_tool, run

pytestmark = pytest.mark.tools

UNIT_NAME = "ollama-web-backend.service"
UNIT = read(UNIT_NAME)
INSTALLED_COMMAND = "/opt/ollama-web/.venv/bin/ollama-web"
MAX_EXPOSURE = 2.0  # `systemd-analyze security` scale: 0 (locked down) .. 10 (exposed)


def directives(text: str) -> dict[str, list[str]]:
    values: dict[str, list[str]] = {}
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith(("#", ";", "[")):
            continue
        key, _, value = line.partition("=")
        values.setdefault(key.strip(), []).append(value.strip())
    return values


SERVICE = directives(UNIT)


@pytest.fixture
def testable_unit(tmp_path: Path) -> Path:
    """The unit with its commands pointing at this virtualenv's `ollama-web`."""
    command = Path(sys.executable).parent / "ollama-web"
    assert command.exists()
    assert UNIT.count(INSTALLED_COMMAND) >= 1
    path = tmp_path / UNIT_NAME
    path.write_text(UNIT.replace(INSTALLED_COMMAND, str(command)), encoding="utf-8")
    return path


def test_systemd_analyze_verify_reports_nothing(testable_unit: Path) -> None:
    analyze = require_tool("systemd-analyze")
    result = run([analyze, "verify", str(testable_unit)], cwd=testable_unit.parent)
    assert result.returncode == 0, describe(result)
    assert result.stderr.strip() == "", result.stderr


def test_exposure_score_stays_low(testable_unit: Path) -> None:
    analyze = require_tool("systemd-analyze")
    result = run(
        [
            analyze,
            "security",
            "--offline=true",
            f"--threshold={int(MAX_EXPOSURE * 10)}",
            "--no-pager",
            str(testable_unit),
        ],
        cwd=testable_unit.parent,
    )
    assert result.returncode == 0, describe(result)
    match = re.search(r"Overall exposure level for \S+: ([\d.]+)", result.stdout)
    assert match is not None, result.stdout
    assert float(match.group(1)) <= MAX_EXPOSURE


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("User", "ollama-web"),
        ("NoNewPrivileges", "yes"),
        ("ProtectSystem", "strict"),
        ("ProtectHome", "yes"),
        ("PrivateTmp", "yes"),
        ("PrivateDevices", "yes"),
        ("CapabilityBoundingSet", ""),
        ("RestrictAddressFamilies", "AF_INET AF_INET6 AF_UNIX"),
        ("SystemCallFilter", "@system-service"),
        ("MemoryDenyWriteExecute", "yes"),
        ("KillSignal", "SIGTERM"),
    ],
)
def test_hardening_directive(key: str, value: str) -> None:
    assert value in SERVICE.get(key, []), f"{key}={value} missing"


def test_only_data_logs_and_backups_are_writable() -> None:
    writable = " ".join(SERVICE["ReadWritePaths"]).split()
    environment = dict(value.split("=", 1) for value in SERVICE["Environment"])
    assert sorted(writable) == sorted(
        [environment["DATA_DIR"], environment["LOG_DIR"], environment["BACKUP_DIR"]]
    )
    assert environment["ENVIRONMENT"] == "production"


def test_stop_timeout_outlasts_the_graceful_shutdown(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    captured: dict[str, Any] = {}
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr("uvicorn.run", lambda app, **kwargs: captured.update(kwargs))
    assert cli.main(["serve"]) == 0
    graceful = captured["timeout_graceful_shutdown"]
    (stop_timeout,) = SERVICE["TimeoutStopSec"]
    assert float(stop_timeout.removesuffix("s")) > graceful
    # SIGTERM to the main process first; the rest only after the timeout.
    assert SERVICE["KillMode"] == ["mixed"]


def test_configuration_errors_do_not_restart_in_a_loop() -> None:
    from ollama_web.core.startup import EXIT_CONFIG_ERROR

    assert SERVICE["Restart"] == ["on-failure"]
    assert str(EXIT_CONFIG_ERROR) in SERVICE["RestartPreventExitStatus"]
    # systemd applies RestartPreventExitStatus to the main process only: a pre-step that
    # exits 78 would restart the unit every RestartSec. `serve` itself migrates and exits 78.
    assert "ExecStartPre" not in SERVICE
    assert SERVICE["ExecStart"] == ["/opt/ollama-web/.venv/bin/ollama-web serve"]
