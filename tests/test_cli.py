"""`ollama-web serve` flags: refused out of range, and when given they win over settings."""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

import pytest

from ollama_web.cli import main


@pytest.fixture
def started(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, sqlite_template: Path
) -> dict[str, Any]:
    """What `serve` would have started uvicorn with (nothing is started), on a migrated
    database (MIGRATE_ON_STARTUP is false: the server does not upgrade it)."""
    options: dict[str, Any] = {}
    monkeypatch.chdir(tmp_path)
    (tmp_path / "data").mkdir()
    shutil.copyfile(sqlite_template, tmp_path / "data" / "ollama_web.db")
    monkeypatch.setenv("DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("MIGRATE_ON_STARTUP", "false")
    monkeypatch.setenv("PORT", "29105")
    monkeypatch.setenv("WORKERS", "4")
    monkeypatch.setattr("uvicorn.run", lambda app, **given: options.update(given))
    return options


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--port", "70000"], "argument --port: 70000 is not between 1 and 65535"),
        (["--port", "0"], "argument --port: 0 is not between 1 and 65535"),
        (["--port", "http"], "argument --port: 'http' is not a whole number"),
        (["--workers", "0"], "argument --workers: 0 is not between 1 and 64"),
        (["--workers", "-2"], "argument --workers: -2 is not between 1 and 64"),
        (["--workers", "100"], "argument --workers: 100 is not between 1 and 64"),
    ],
)
def test_serve_refuses_a_port_or_worker_count_out_of_range(
    started: dict[str, Any],
    capsys: pytest.CaptureFixture[str],
    flags: list[str],
    message: str,
) -> None:
    with pytest.raises(SystemExit) as info:
        main(["serve", *flags])
    assert info.value.code == 2
    assert message in capsys.readouterr().err
    assert started == {}


def test_serve_flags_win_over_settings(started: dict[str, Any]) -> None:
    assert main(["serve", "--port", "65535", "--workers", "1"]) == 0
    assert (started["port"], started["workers"]) == (65535, 1)
    # What the workers read (their settings), not WORKERS=4: one worker counts in memory.
    assert os.environ["WORKERS"] == "1"


def test_serve_with_workers_on_a_database_it_cannot_reach_is_one_line_and_exit_3(
    started: dict[str, Any],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
) -> None:
    """Several workers: the migration runs once before they start, and a database it
    cannot open is said in one line, exit 3 (as `migrate` says it), not a traceback."""
    from ollama_web.core.startup import EXIT_DATABASE_ERROR

    monkeypatch.setenv("MIGRATE_ON_STARTUP", "true")
    monkeypatch.setenv("DATABASE_URL", f"sqlite:///{tmp_path / 'typo' / 'app.db'}")
    assert main(["serve", "--workers", "2"]) == EXIT_DATABASE_ERROR
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1
    assert "cannot use the database" in lines[0]
    assert started == {}  # uvicorn never started
