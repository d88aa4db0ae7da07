"""Ollama's two guards on every route (ollama-api.md §0), so that a backend forwarding a
browser's `Host` or `Origin` fails against the emulator as it would against Ollama:

- bound to a loopback address, a request whose `Host` is not loopback, private, unspecified,
  `localhost`, `*.localhost`, `*.local`, `*.internal` or this machine's name is refused;
- an `Origin` that is not allowed (localhost, 127.0.0.1 or 0.0.0.0 on any port, `app://`,
  `file://`, `tauri://`, `vscode-*://`, browser extensions) and not the request's own host
  (`http(s)://<Host>`) is refused.

Both answer 403 with an empty body.
"""

from __future__ import annotations

import ipaddress
import re
import socket

_LOCAL_SUFFIXES = (".localhost", ".local", ".internal")
_ALLOWED_ORIGIN = re.compile(
    r"(https?://(localhost|127\.0\.0\.1|0\.0\.0\.0)(:\d+)?"
    r"|(app|file|tauri|vscode-[a-z-]+)://.*"
    r"|(chrome-extension|moz-extension|safari-web-extension|ms-browser-extension)://.*)",
    re.IGNORECASE,
)


def _split_host(host_header: str) -> str:
    """The host of a `Host` header without its port (IPv6 in brackets too)."""
    if host_header.startswith("["):
        return host_header[1:].partition("]")[0]
    if host_header.count(":") == 1:
        return host_header.partition(":")[0]
    return host_header


def _allowed_host(host_header: str) -> bool:
    host = _split_host(host_header).lower()
    if host in ("", "localhost", socket.gethostname().lower()):
        return True
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return host.endswith(_LOCAL_SUFFIXES)
    return address.is_loopback or address.is_private or address.is_unspecified


def _loopback(bind_host: str) -> bool:
    try:
        return ipaddress.ip_address(bind_host).is_loopback
    except ValueError:
        return bind_host.lower() == "localhost"


def refuses(bind_host: str, headers: dict[str, str]) -> bool:
    """Whether Ollama, bound to `bind_host`, answers this request 403 (headers lower-cased)."""
    host = headers.get("host", "")
    if _loopback(bind_host) and not _allowed_host(host):
        return True
    origin = headers.get("origin")
    if origin is None:
        return False
    same_origin = origin.lower() in (f"http://{host}".lower(), f"https://{host}".lower())
    return not same_origin and _ALLOWED_ORIGIN.fullmatch(origin) is None
