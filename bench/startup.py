#!/usr/bin/env python3
"""Cold start to a healthy /health, and idle resident memory.

Starts the Ollama emulator (so the server can report healthy), then `ollama-web serve` on an
empty DATA_DIR several times; measures the time from process start to the first 200 from
/health with status "healthy", then the idle RSS after a short pause. Prints the numbers and
writes bench/results/startup.json.

The server runs as users run it: from a virtualenv with the package installed the way the
Dockerfile does (`pip install .`: runtime dependencies only, bytecode compiled at install),
built once in bench/.prod-venv (`--rebuild` refreshes it; `--python` picks another
interpreter). The development venv would add what no deployment has: test-only packages
that httpx's optional CLI then imports (~90 ms), and, where PYTHONDONTWRITEBYTECODE is set,
every module of an editable install compiled from source at each start.

Targets (issue 2): start ≤ 1.5 s, idle RSS ≤ 90 MB on a 2-core machine.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

BENCH = Path(__file__).resolve().parent
RESULTS = BENCH / "results"
PROD_VENV = BENCH / ".prod-venv"


def production_python(rebuild: bool) -> str:
    """bench/.prod-venv with `pip install .` of this checkout (built when missing)."""
    python = PROD_VENV / "bin" / "python"
    if rebuild or not python.exists():
        subprocess.run([sys.executable, "-m", "venv", "--clear", str(PROD_VENV)], check=True)
        subprocess.run(
            [str(python), "-m", "pip", "install", "--quiet", str(BENCH.parent)], check=True
        )
    return str(python)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


def wait_until_up(url: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            httpx.get(url, timeout=0.5)
            return
        except httpx.TransportError:
            time.sleep(0.01)
    raise RuntimeError(f"{url} did not come up")


def one_start(
    python: str, ollama_url: str, idle_seconds: float, directory: str
) -> dict[str, float | str]:
    port = free_port()
    env = {
        **{k: v for k, v in os.environ.items() if k not in {"SECRET_KEY", "DATABASE_URL"}},
        "DATA_DIR": f"{directory}/data",
        "LOG_DIR": f"{directory}/logs",
        "BACKUP_DIR": f"{directory}/backups",
        "OLLAMA_URL": ollama_url,
    }
    started = time.perf_counter()
    process = subprocess.Popen(
        [python, "-m", "ollama_web", "serve", "--port", str(port)],
        env=env,
        cwd=directory,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        status = ""
        while time.perf_counter() - started < 30:
            try:
                response = httpx.get(f"http://127.0.0.1:{port}/health", timeout=2)
                status = response.json()["status"]
                if status == "healthy":
                    break
            except httpx.TransportError:
                pass
            time.sleep(0.005)
        elapsed = time.perf_counter() - started
        time.sleep(idle_seconds)
        memory = rss_mb(process.pid)
    finally:
        process.terminate()
        process.wait(timeout=30)
    return {"start_seconds": elapsed, "idle_rss_mb": memory, "status": status}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--idle", type=float, default=2.0)
    parser.add_argument("--python", help="the server's interpreter (default: bench/.prod-venv)")
    parser.add_argument("--rebuild", action="store_true", help="reinstall bench/.prod-venv")
    args = parser.parse_args()
    python = args.python or production_python(args.rebuild)

    emulator_port = free_port()
    emulator = subprocess.Popen(
        [sys.executable, "-m", "ollama_web.emulator", "--port", str(emulator_port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    ollama_url = f"http://127.0.0.1:{emulator_port}"
    try:
        wait_until_up(f"{ollama_url}/api/version")
        runs = []
        for _ in range(args.runs):
            with tempfile.TemporaryDirectory() as directory:
                first = one_start(python, ollama_url, args.idle, directory)
                again = one_start(python, ollama_url, args.idle, directory)
            runs.append(
                {
                    **{f"empty_{k}": v for k, v in first.items()},
                    **{f"restart_{k}": v for k, v in again.items()},
                }
            )
    finally:
        emulator.terminate()
        emulator.wait(timeout=10)

    report: dict[str, object] = {"runs": runs}
    for kind in ("empty", "restart"):
        starts = [float(run[f"{kind}_start_seconds"]) for run in runs]
        memories = [float(run[f"{kind}_idle_rss_mb"]) for run in runs]
        report[kind] = {
            "start_seconds_median": statistics.median(starts),
            "start_seconds_max": max(starts),
            "idle_rss_mb_median": statistics.median(memories),
            "idle_rss_mb_max": max(memories),
        }
    report.update(
        {
            "targets": {"start_seconds": 1.5, "idle_rss_mb": 90},
            "cpus": os.cpu_count(),
            "python": python,
        }
    )
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "startup.json").write_text(json.dumps(report, indent=2))
    labels = {
        "empty": "empty DATA_DIR (creates and migrates the database)",
        "restart": "restart on an existing database",
    }
    for kind, label in labels.items():
        numbers = report[kind]
        assert isinstance(numbers, dict)
        print(f"{label}:")
        print(
            f"  start to healthy /health: median {numbers['start_seconds_median']:.3f} s, "
            f"max {numbers['start_seconds_max']:.3f} s (target <= 1.5 s)"
        )
        print(
            f"  idle RSS: median {numbers['idle_rss_mb_median']:.1f} MB, "
            f"max {numbers['idle_rss_mb_max']:.1f} MB (target <= 90 MB)"
        )
    print(f"statuses: {[(run['empty_status'], run['restart_status']) for run in runs]}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
