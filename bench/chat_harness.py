"""Shared pieces of bench/streaming.py and bench/conversations.py.

Processes on loopback: the Ollama emulator (`python -m ollama_web.emulator`) and the app
under uvicorn (uvloop + httptools, one worker), each in its own process so the server's CPU
time and resident memory can be read from /proc. A lean raw HTTP/1.1 client (asyncio
streams, keep-alive, chunked decoding) measures both the backend and a direct client to the
same emulator, so client overhead is the same on both sides.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

from ollama_web.cli import HTTP_PROTOCOL

BENCH = Path(__file__).resolve().parent
RESULTS = BENCH / "results"
APP = "ollama_web.main:app"
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process (from /proc/<pid>/stat)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def percentiles(samples: Sequence[float]) -> dict[str, float]:
    ordered = sorted(samples)
    if not ordered:
        return {"n": 0}

    def pick(q: float) -> float:
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))]

    return {
        "n": len(ordered),
        "p50_ms": round(pick(0.50) * 1000, 3),
        "p90_ms": round(pick(0.90) * 1000, 3),
        "p99_ms": round(pick(0.99) * 1000, 3),
        "max_ms": round(ordered[-1] * 1000, 3),
        "mean_ms": round(statistics.fmean(ordered) * 1000, 3),
    }


class Placement:
    """Where the processes run. With `pin` (`bench/streaming.py --pin`) on a machine of two or
    more CPUs, the server gets the first CPU to itself and the emulator and the load generator
    (this process) share the others. Unpinned (the default), the kernel places the three.

    Measured on a 2-vCPU VM, pinning is no free win: chats/s moved within the noise, steady
    TTFT p99 was lower, but tokens reached the server one per read in bursts (the emulator
    runs slower beside the client), doubling the burst CPU per token, and the server's two
    threads on one CPU made conversation reads slower."""

    pin = False
    available = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
    """The CPUs this process could use when it started (before it placed itself)."""

    @classmethod
    def cpus(cls) -> tuple[set[int], set[int]] | None:
        """(the server's CPUs, everyone else's), or None when nothing is pinned."""
        if not cls.pin or len(cls.available) < 2:
            return None
        return {cls.available[0]}, set(cls.available[1:])

    @classmethod
    def server(cls, pid: int) -> None:
        cpus = cls.cpus()
        if cpus is not None:
            _set_affinity(pid, cpus[0])

    @classmethod
    def others(cls, pid: int | None = None) -> None:
        """The emulator or, without a pid, this process."""
        cpus = cls.cpus()
        if cpus is not None:
            _set_affinity(os.getpid() if pid is None else pid, cpus[1])

    @classmethod
    def describe(cls) -> dict[str, Any]:
        cpus = cls.cpus()
        if cpus is None:
            return {"pinned": False}
        return {"pinned": True, "server_cpus": sorted(cpus[0]), "other_cpus": sorted(cpus[1])}


def _set_affinity(pid: int, cpus: set[int]) -> None:
    """Every thread of the process (a thread started later inherits its creator's CPUs)."""
    for thread in os.listdir(f"/proc/{pid}/task"):
        os.sched_setaffinity(int(thread), cpus)


def machine_speed() -> dict[str, Any]:
    """How fast this machine runs Python right now: a fixed loop, best of three. Shared VMs
    vary by tens of percent over a day; reports carry this so runs can be compared."""
    best = float("inf")
    for _ in range(3):
        started = time.perf_counter()
        total = 0
        for i in range(3_000_000):
            total += i
        best = min(best, time.perf_counter() - started)
    return {"cpus": os.cpu_count(), "python_loop_3m_seconds": round(best, 3)}


def write_result(name: str, result: dict[str, Any]) -> Path:
    """Write the report (with `machine_speed()` measured now) to bench/results/<name>.json."""
    result = {**result, "machine": {**machine_speed(), "placement": Placement.describe()}}
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps(result, indent=2) + "\n")
    return path


def _wait_port(port: int, process: subprocess.Popen[bytes], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"process exited with {process.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.02)
    raise RuntimeError(f"port {port} did not open")


def start_emulator(*args: str) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    command = [sys.executable, "-m", "ollama_web.emulator", "--port", str(port), *args]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    Placement.others(process.pid)
    _wait_port(port, process)
    return process, f"http://127.0.0.1:{port}"


class Server:
    """The app under uvicorn in a child process, with its own DATA_DIR."""

    def __init__(
        self,
        ollama_url: str,
        database_url: str | None = None,
        app: str = APP,
        **env: str,
    ) -> None:
        self.app = app
        self.directory = tempfile.TemporaryDirectory(prefix="ow-bench-")
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        root = self.directory.name
        self.env = {
            **{k: v for k, v in os.environ.items() if k not in {"SECRET_KEY", "DATABASE_URL"}},
            "DATA_DIR": f"{root}/data",
            "LOG_DIR": f"{root}/logs",
            "BACKUP_DIR": f"{root}/backups",
            "OLLAMA_URL": ollama_url,
            "RATE_LIMIT_ENABLED": "false",
            "BACKUP_ENABLED": "false",
            "LOG_LEVEL": "WARNING",
            "MAX_CONCURRENT_GENERATIONS_PER_USER": "5000",
            "OLLAMA_MAX_CONNECTIONS": "2000",
            **env,
        }
        if database_url:
            self.env["DATABASE_URL"] = database_url
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def data_dir(self) -> Path:
        return Path(self.env["DATA_DIR"])

    def start(self) -> None:
        # The app under the HTTP protocol `ollama-web serve` runs (httptools with limits);
        # the floor app under plain httptools.
        http = HTTP_PROTOCOL if self.app == APP else "httptools"
        command = [
            sys.executable, "-m", "uvicorn", self.app, "--host", "127.0.0.1",
            "--port", str(self.port), "--loop", "uvloop", "--http", http,
            "--no-access-log", "--log-level", "warning", "--no-server-header",
        ]  # fmt: skip
        if self.app != APP:  # a bench/ module (floor_app)
            command += ["--app-dir", str(BENCH)]
        self.process = subprocess.Popen(
            command, env=self.env, cwd=self.directory.name, stdout=subprocess.DEVNULL
        )
        Placement.server(self.process.pid)
        _wait_port(self.port, self.process)

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=40)
            except subprocess.TimeoutExpired:
                self.process.kill()
        self.directory.cleanup()


class Connection:
    """One keep-alive HTTP/1.1 connection; just enough protocol for the benchmarks."""

    def __init__(self, host: str, port: int) -> None:
        self.host = host
        self.port = port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None
        self.conversation_id: str | None = None  # the one its chats continue, if any
        self.answer_id: str | None = None  # the last answer started in it

    @classmethod
    async def to(cls, url: str) -> Connection:
        host, _, port = url.removeprefix("http://").partition(":")
        connection = cls(host, int(port))
        await connection.open()
        return connection

    async def open(self) -> None:
        self.reader, self.writer = await asyncio.open_connection(self.host, self.port, limit=2**20)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()

    def send(
        self, method: str, path: str, body: Any = None, headers: dict[str, str] | None = None
    ) -> None:
        assert self.writer is not None
        payload = b"" if body is None else json.dumps(body).encode()
        lines = [f"{method} {path} HTTP/1.1", f"Host: {self.host}:{self.port}"]
        for name, value in (headers or {}).items():
            lines.append(f"{name}: {value}")
        if body is not None:
            lines += ["Content-Type: application/json", f"Content-Length: {len(payload)}"]
        self.writer.write(("\r\n".join(lines) + "\r\n\r\n").encode() + payload)

    async def head(self) -> tuple[int, dict[str, str]]:
        assert self.reader is not None
        raw = await self.reader.readuntil(b"\r\n\r\n")
        status_line, *header_lines = raw.decode("latin-1").split("\r\n")
        headers: dict[str, str] = {}
        for line in header_lines:
            if line:
                name, _, value = line.partition(":")
                headers[name.strip().lower()] = value.strip()
        return int(status_line.split()[1]), headers

    async def body(self, headers: dict[str, str]) -> AsyncIterator[bytes]:
        """The body as it arrives (chunked or Content-Length)."""
        assert self.reader is not None
        reader = self.reader
        if headers.get("transfer-encoding") == "chunked":
            while True:
                size_line = await reader.readuntil(b"\r\n")
                size = int(size_line.split(b";")[0], 16)
                if size == 0:
                    await reader.readuntil(b"\r\n")
                    return
                data = await reader.readexactly(size + 2)
                yield data[:-2]
        else:
            length = int(headers.get("content-length", "0"))
            if length:
                yield await reader.readexactly(length)

    async def request(
        self, method: str, path: str, body: Any = None, headers: dict[str, str] | None = None
    ) -> tuple[int, bytes]:
        self.send(method, path, body, headers)
        status, response_headers = await self.head()
        data = b"".join([chunk async for chunk in self.body(response_headers)])
        return status, data


async def setup_user(base: str, username: str = "bench") -> tuple[str, str]:
    """The first account (admin) via /api/auth/setup: (api key, user id)."""
    connection = await Connection.to(base)
    try:
        status, body = await connection.request(
            "POST",
            "/api/auth/setup",
            {"username": username, "password": "bench-password-123456"},
        )
    finally:
        connection.close()
    if status != 201:
        raise RuntimeError(f"setup failed: {status} {body[:300]!r}")
    answer = json.loads(body)
    return answer["api_key"], answer["user"]["id"]


async def login(base: str, username: str = "bench") -> dict[str, str]:
    """A browser's credentials for `setup_user`'s account: its session cookie and CSRF token,
    as headers."""
    connection = await Connection.to(base)
    try:
        connection.send(
            "POST", "/api/auth/login", {"username": username, "password": "bench-password-123456"}
        )
        status, headers = await connection.head()
        body = b"".join([chunk async for chunk in connection.body(headers)])
    finally:
        connection.close()
    if status != 200:
        raise RuntimeError(f"login failed: {status} {body[:300]!r}")
    cookie = headers["set-cookie"].split(";", 1)[0]
    return {"Cookie": cookie, "X-CSRF-Token": json.loads(body)["csrf_token"]}
