"""Run the shipped deploy/nginx.conf for real: on loopback, unprivileged, files in a tmp dir.

`render_config` rewrites only what a test machine needs (ports, certificate, pid, logs,
temp paths, the upstream address) and fails if the shipped file no longer has a line it
expects, so the config under test is the shipped one.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import re
import ssl
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from tests.deploy.tools import read, require_tool, run
from tests.fixtures.ports import free_port

NGINX_CONF = "deploy/nginx.conf"
UNBUFFERED = re.compile(r"^\s*proxy_buffering off;\n", re.MULTILINE)


@dataclass
class Proxy:
    https_url: str
    http_url: str
    directory: Path
    ca: Path

    def client(self, **kwargs: object) -> httpx.AsyncClient:
        context = ssl.create_default_context(cafile=str(self.ca))
        return httpx.AsyncClient(base_url=self.https_url, verify=context, **kwargs)  # type: ignore[arg-type]


def self_signed_cert(directory: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 (its own CA), made with openssl."""
    openssl = require_tool("openssl")
    cert, key = directory / "cert.pem", directory / "key.pem"
    result = run(
        [
            openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
            "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
            "-keyout", str(key), "-out", str(cert),
        ]
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    return cert, key


def _substitute(text: str, pattern: str, replacement: str) -> str:
    new, count = re.subn(pattern, replacement, text, flags=re.MULTILINE)
    assert count >= 1, f"{NGINX_CONF} no longer matches {pattern!r}"
    return new


@dataclass
class Rendered:
    path: Path
    http_port: int
    https_port: int
    cert: Path
    extra: dict[str, int] = field(default_factory=dict)


def render_config(
    directory: Path, upstream_port: int, *, drop_unbuffered: bool = False
) -> Rendered:
    cert, key = self_signed_cert(directory)
    http_port, https_port = free_port(), free_port()
    text = read(NGINX_CONF)
    # As root the workers switch to `user`; keep them able to reach the tmp dir.
    user = "user root;" if os.geteuid() == 0 else ""
    temp_paths = "".join(
        f"\n    {kind}_temp_path {directory / kind};"
        for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    )
    for pattern, replacement in (
        (r"^user [^;]+;", user),
        (r"^pid [^;]+;", f"pid {directory / 'nginx.pid'};"),
        (r"^error_log \S+", f"error_log {directory / 'error.log'}"),
        (r"^(\s*)access_log [^;]+;", rf"\1access_log {directory / 'access.log'};"),
        (r"^http \{", "http {" + temp_paths),
        (r"listen 80;", f"listen 127.0.0.1:{http_port};"),
        (r"listen 443 ssl http2;", f"listen 127.0.0.1:{https_port} ssl http2;"),
        (r"server 127\.0\.0\.1:8000;", f"server 127.0.0.1:{upstream_port};"),
        (r"ssl_certificate \S+;", f"ssl_certificate {cert};"),
        (r"ssl_certificate_key \S+;", f"ssl_certificate_key {key};"),
    ):
        text = _substitute(text, pattern, replacement)
    if drop_unbuffered:
        text = _substitute(text, UNBUFFERED.pattern, "")
    path = directory / "nginx.conf"
    path.write_text(text, encoding="utf-8")
    return Rendered(path=path, http_port=http_port, https_port=https_port, cert=cert)


def nginx_command(rendered: Rendered, *extra: str) -> list[str]:
    nginx = require_tool("nginx")
    directory = rendered.path.parent
    return [
        nginx, "-p", str(directory), "-c", str(rendered.path),
        "-e", str(directory / "error.log"), *extra,
    ]  # fmt: skip


async def _wait_for_port(port: int, process: asyncio.subprocess.Process, log: Path) -> None:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if process.returncode is not None:
            raise AssertionError(f"nginx exited: {log.read_text(errors='replace')}")
        with contextlib.suppress(OSError):
            _, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.close()
            await writer.wait_closed()
            return
        await asyncio.sleep(0.02)
    raise AssertionError("nginx did not start listening")


@contextlib.asynccontextmanager
async def running_nginx(
    directory: Path, upstream_port: int, *, drop_unbuffered: bool = False
) -> AsyncIterator[Proxy]:
    rendered = render_config(directory, upstream_port, drop_unbuffered=drop_unbuffered)
    process = await asyncio.create_subprocess_exec(
        *nginx_command(rendered, "-g", "daemon off;"),
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )
    try:
        await _wait_for_port(rendered.https_port, process, directory / "error.log")
        yield Proxy(
            https_url=f"https://127.0.0.1:{rendered.https_port}",
            http_url=f"http://127.0.0.1:{rendered.http_port}",
            directory=directory,
            ca=rendered.cert,
        )
    finally:
        if process.returncode is None:
            process.terminate()
        await asyncio.wait_for(process.wait(), 10)


@dataclass
class Arrival:
    event: str
    data: str
    at: float


async def sse_events(response: httpx.Response) -> list[Arrival]:
    """Every SSE event with the moment its data line reached the client."""
    events: list[Arrival] = []
    name = "message"
    async for line in response.aiter_lines():
        if line.startswith("event:"):
            name = line.removeprefix("event:").strip()
        elif line.startswith("data:"):
            events.append(Arrival(name, line.removeprefix("data:").strip(), time.monotonic()))
        elif line == "":
            name = "message"
    return events


def spread(arrivals: list[Arrival]) -> tuple[float, list[float]]:
    """(time from the first to the last arrival, the gaps between consecutive ones)."""
    times = [arrival.at for arrival in arrivals]
    gaps = [later - earlier for earlier, later in itertools.pairwise(times)]
    return (times[-1] - times[0] if times else 0.0), gaps
