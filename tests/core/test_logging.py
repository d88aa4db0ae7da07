"""Log files: access lines, JSON mode, and secrets never written."""

from __future__ import annotations

import contextlib
import itertools
import json
import logging
import os
import re
import subprocess
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest

from ollama_web.core.config import Settings
from ollama_web.core.logging import SharedRotatingFileHandler, redact
from tests.conftest import asgi_client
from tests.fixtures.ports import free_port

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


@pytest.mark.slow
def test_workers_share_rotated_log_files_without_losing_lines(tmp_path: Path) -> None:
    """`serve --workers 2` with a small LOG_MAX_BYTES: each worker had its own handler, and
    after one rotated, the other wrote into the renamed file until it rotated out."""
    port, max_bytes, backups, requests = free_port(), 4096, 3, 1500
    log_dir = tmp_path / "logs"
    env = {
        **{k: v for k, v in os.environ.items() if k not in {"SECRET_KEY", "DATABASE_URL"}},
        "DATA_DIR": str(tmp_path / "data"),
        "LOG_DIR": str(log_dir),
        "BACKUP_DIR": str(tmp_path / "backups"),
        "OLLAMA_URL": f"http://127.0.0.1:{free_port()}",
        "LOG_MAX_BYTES": str(max_bytes),
        "LOG_BACKUP_COUNT": str(backups),
        "RATE_LIMIT_ENABLED": "false",
    }
    command = ["-m", "ollama_web", "serve", "--workers", "2", "--host", "127.0.0.1"]
    process = subprocess.Popen(
        [sys.executable, *command, "--port", str(port)],
        env=env,
        cwd=tmp_path,
        stderr=subprocess.PIPE,
        text=True,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                httpx.get(f"{base}/health/live", timeout=1.0)
                break
            except httpx.TransportError:
                assert time.monotonic() < deadline, "the server did not start"
                time.sleep(0.05)
        with httpx.Client(base_url=base) as client, ThreadPoolExecutor(4) as pool:
            # Numbered requests, four at a time, each on a new connection so that both
            # workers serve them (the kernel hands each connection to one of them).
            list(
                pool.map(
                    lambda n: client.get("/health/live", headers=_numbered(n)), range(requests)
                )
            )
        # The workers (not multiprocessing's resource tracker) that have written access lines.
        writers = [pid for pid in _children(process.pid) if _open_logs(pid, log_dir)]
    finally:
        process.terminate()
        process.communicate(timeout=30)
    assert len(writers) == 2, "both workers served requests"
    files = [log_dir / "access.log", *(log_dir / f"access.log.{i}" for i in (1, 2, 3))]
    assert sorted(log_dir.glob("access.log*")) == sorted(files)
    numbers = [[int(n) for n in re.findall(r"rid=seq-(\d+)", f.read_text())] for f in files]
    # Every worker writes into the current file: each file holds the requests that came
    # after those of the next older one (give or take a few concurrent requests finishing
    # out of order). A worker that kept writing into a renamed file put newer lines there.
    for newer, older in itertools.pairwise(numbers):
        assert max(older) < min(newer) + 8, (min(newer), max(older))
    # No line lost within the kept range, and each file rotated once (not twice, which
    # leaves a small one): ~60 lines a file.
    seen = set(itertools.chain(*numbers))
    assert len(seen) > 150
    missing = [n for n in range(requests - 100, requests) if n not in seen]
    assert missing == [], f"{len(missing)} of the last 100 lines lost"
    for rotated in files[1:]:
        assert rotated.stat().st_size > max_bytes * 3 // 4, rotated.name


def _numbered(n: int) -> dict[str, str]:
    return {"X-Request-ID": f"seq-{n}", "Connection": "close"}


def _children(pid: int) -> list[int]:
    children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    return [int(child) for child in children]


def _open_logs(pid: int, log_dir: Path) -> list[str]:
    targets = []
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        # The workers are still closing the connections the client just closed: an fd
        # listed may be gone by the time it is read.
        with contextlib.suppress(FileNotFoundError):
            targets.append(os.readlink(fd))
    return [target for target in targets if target.startswith(str(log_dir / "access.log"))]


def _file_logger(name: str, handler: logging.Handler) -> logging.Logger:
    logger = logging.getLogger(f"tests.logging.{name}")
    logger.propagate = False
    logger.addHandler(handler)
    return logger


def test_each_record_is_formatted_once_and_the_file_rotates_at_its_limit(
    tmp_path: Path,
) -> None:
    formatted: list[str] = []

    class Counting(logging.Formatter):
        def format(self, record: logging.LogRecord) -> str:
            formatted.append(record.getMessage())
            return super().format(record)

    handler = SharedRotatingFileHandler(tmp_path / "a.log", 100, 2)
    handler.setFormatter(Counting("%(message)s"))
    logger = _file_logger("limit", handler)
    try:
        for i in range(10):  # 31 bytes a line: three fit under 100, the fourth rotates
            logger.warning("line %d %s", i, "x" * 23)
    finally:
        logger.removeHandler(handler)
        handler.close()
    assert len(formatted) == 10
    lines = {
        name: [int(line.split()[1]) for line in (tmp_path / name).read_text().splitlines()]
        for name in ("a.log", "a.log.1", "a.log.2")
    }
    assert lines == {"a.log": [9], "a.log.1": [6, 7, 8], "a.log.2": [3, 4, 5]}


def test_log_files_are_made_for_their_owner_and_group_only(tmp_path: Path) -> None:
    """Even under a umask of 022 (a manual `serve`), new log files, rotated ones included,
    are 0640; one that existed keeps its mode."""
    kept = tmp_path / "b.log"
    kept.write_text("")
    kept.chmod(0o644)
    handlers = [SharedRotatingFileHandler(tmp_path / name, 100, 2) for name in ("a.log", "b.log")]
    loggers = [_file_logger(f"mode{n}", handler) for n, handler in enumerate(handlers)]
    previous = os.umask(0o022)
    try:
        for i in range(10):  # a.log rotates three times
            loggers[0].warning("line %d %s", i, "x" * 23)
        loggers[1].warning("one line")
    finally:
        os.umask(previous)
        for logger, handler in zip(loggers, handlers, strict=True):
            logger.removeHandler(handler)
            handler.close()
    modes = {path.name: path.stat().st_mode & 0o777 for path in tmp_path.glob("*.log*")}
    assert modes == {"a.log": 0o640, "a.log.1": 0o640, "a.log.2": 0o640, "b.log": 0o644}


def test_a_log_path_that_is_no_regular_file_is_never_rotated(tmp_path: Path) -> None:
    """An operator may point a log at /dev/null: it is written to, never renamed."""
    path = tmp_path / "access.log"
    path.symlink_to("/dev/null")
    handler = SharedRotatingFileHandler(path, 100, 2)
    logger = _file_logger("devnull", handler)
    try:
        for i in range(20):
            logger.warning("line %d of a log nobody keeps", i)
    finally:
        logger.removeHandler(handler)
        handler.close()
    assert path.is_symlink()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["access.log"]


def test_a_rotation_lock_file_of_another_user_still_serves(tmp_path: Path) -> None:
    """The CLI run as another user may leave LOG_DIR/.rotation.lock that the service's user
    may only read: reading is all flock needs, and rotations go on."""
    import shutil

    from ollama_web.core.logging import ROTATION_LOCK

    log_dir = tmp_path / "logs"
    log_dir.mkdir()
    lock = log_dir / ROTATION_LOCK
    lock.write_text("")
    lock.chmod(0o444)  # ours, but read-only to us: as another user's 0644 file is
    script = (
        "import logging\n"
        "from pathlib import Path\n"
        "from ollama_web.core.logging import SharedRotatingFileHandler\n"
        f"handler = SharedRotatingFileHandler(Path({str(log_dir / 'app.log')!r}), 200, 2)\n"
        "logger = logging.getLogger('t'); logger.addHandler(handler); logger.propagate = False\n"
        "for i in range(40): logger.warning('line %03d of a log that rotates', i)\n"
    )
    command = [sys.executable, "-c", script]
    if os.geteuid() == 0:  # root may write any file: run without that capability
        setpriv = shutil.which("setpriv")
        if setpriv is None:
            pytest.skip("running as root and setpriv (util-linux) is not installed")
        command = [setpriv, "--bounding-set=-dac_override,-dac_read_search", *command]
    result = subprocess.run(
        command, capture_output=True, text=True, timeout=60, check=False, cwd=tmp_path
    )
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    assert (log_dir / "app.log.1").exists()
    assert "line 039" in (log_dir / "app.log").read_text()
