"""Who is on the other end of a request: the client address and whether it came over https.

`X-Forwarded-For` and `X-Forwarded-Proto` are believed only when the TCP peer is one of
TRUSTED_PROXIES (addresses or CIDRs). uvicorn is run with `proxy_headers=False`, so
`scope["client"]` is always the real peer and this module is the one place that interprets
proxy headers.

`client_ip(scope, settings)` computes the address once per request and keeps it in
`scope["state"]["client_ip"]`, where the access log, the rate limiter and the accounts
code read it.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from functools import cache

from starlette.types import Scope

from ollama_web.core.config import Settings

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

UNKNOWN_CLIENT = "unknown"
# Rate limits key IPv6 clients by their /64: one host usually owns the whole prefix.
IPV6_RATE_LIMIT_PREFIX = 64


@cache
def _networks(entries: tuple[str, ...]) -> tuple[IPNetwork, ...]:
    return tuple(ipaddress.ip_network(entry, strict=False) for entry in entries)


def _parse(address: str) -> IPAddress | None:
    try:
        return ipaddress.ip_address(address.strip())
    except ValueError:
        return None


def is_trusted_proxy(address: str | None, settings: Settings) -> bool:
    if not address or not settings.trusted_proxies:
        return False
    parsed = _parse(address)
    if parsed is None:
        return False
    return any(parsed in network for network in _networks(tuple(settings.trusted_proxies)))


def _header_values(scope: Scope, name: bytes) -> list[str]:
    headers: Iterable[tuple[bytes, bytes]] = scope.get("headers") or []
    return [value.decode("latin-1") for key, value in headers if key == name]


def _peer(scope: Scope) -> str | None:
    client = scope.get("client")
    if client:
        host = client[0]
        return str(host) if host else None
    return None


def _forwarded_client(hops: list[str], peer: str, settings: Settings) -> str:
    """Walk X-Forwarded-For from the right (the hop our proxy added) past our own proxies.

    The first address that is not a trusted proxy is the client. An unparsable entry stops
    the walk: everything left of it was written by someone we do not trust. So does an IPv6
    address with a zone (`fe80::1%eth0`): a zone names an interface of the host that wrote
    it, never a client's address, and it is text of any length (the address is stored,
    with a session, in 64 characters).
    """
    client = peer
    for hop in reversed(hops):
        parsed = _parse(hop)
        if parsed is None or "%" in hop:
            break
        client = str(parsed)
        if not is_trusted_proxy(client, settings):
            break
    return client


def client_ip(scope: Scope, settings: Settings) -> str:
    """The client's address for this request (cached in `scope["state"]["client_ip"]`)."""
    state = scope.setdefault("state", {})
    known = state.get("client_ip")
    if isinstance(known, str) and known:
        return known
    peer = _peer(scope)
    address = peer or UNKNOWN_CLIENT
    if peer is not None and is_trusted_proxy(peer, settings):
        hops = [
            hop.strip()
            for value in _header_values(scope, b"x-forwarded-for")
            for hop in value.split(",")
            if hop.strip()
        ]
        if hops:
            address = _forwarded_client(hops, peer, settings)
    state["client_ip"] = address
    return address


def rate_limit_address(address: str) -> str:
    """The identity a client address is limited under: itself, or its /64 for IPv6."""
    parsed = _parse(address)
    if isinstance(parsed, ipaddress.IPv6Address) and parsed.ipv4_mapped is None:
        network = ipaddress.ip_network(f"{parsed}/{IPV6_RATE_LIMIT_PREFIX}", strict=False)
        return str(network)
    if isinstance(parsed, ipaddress.IPv6Address) and parsed.ipv4_mapped is not None:
        return str(parsed.ipv4_mapped)
    return address


def request_is_https(scope: Scope, settings: Settings) -> bool:
    """True when the request arrived over https (as told by a trusted proxy if any)."""
    if scope.get("scheme") in ("https", "wss"):
        return True
    if not is_trusted_proxy(_peer(scope), settings):
        return False
    values = _header_values(scope, b"x-forwarded-proto")
    return bool(values) and values[0].split(",")[0].strip().lower() == "https"
