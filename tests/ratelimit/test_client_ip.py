"""`client_ip`: X-Forwarded-For is believed only from TRUSTED_PROXIES."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from ollama_web.core.config import Settings
from ollama_web.core.net import client_ip, rate_limit_address, request_is_https


def _scope(peer: str | None, *headers: tuple[str, str]) -> dict[str, Any]:
    return {
        "type": "http",
        "scheme": "http",
        "client": (peer, 1234) if peer else None,
        "headers": [(name.encode(), value.encode()) for name, value in headers],
    }


@pytest.fixture
def proxied(settings_factory: Callable[..., Settings]) -> Settings:
    return settings_factory(trusted_proxies="10.0.0.1,192.168.0.0/16")


def test_forwarded_for_is_ignored_without_trusted_proxies(
    settings_factory: Callable[..., Settings],
) -> None:
    scope = _scope("203.0.113.9", ("x-forwarded-for", "198.51.100.1"))
    assert client_ip(scope, settings_factory()) == "203.0.113.9"
    assert scope["state"]["client_ip"] == "203.0.113.9"


def test_forwarded_for_from_an_untrusted_peer_is_ignored(proxied: Settings) -> None:
    scope = _scope("203.0.113.9", ("x-forwarded-for", "198.51.100.1"))
    assert client_ip(scope, proxied) == "203.0.113.9"


def test_rightmost_untrusted_hop_is_the_client(proxied: Settings) -> None:
    # The client forged the first entry; our two proxies appended the real hops.
    scope = _scope("10.0.0.1", ("x-forwarded-for", "1.2.3.4, 198.51.100.7, 192.168.4.4"))
    assert client_ip(scope, proxied) == "198.51.100.7"


def test_several_forwarded_headers_are_one_list(proxied: Settings) -> None:
    scope = _scope("10.0.0.1", ("x-forwarded-for", "1.2.3.4"), ("x-forwarded-for", "198.51.100.8"))
    assert client_ip(scope, proxied) == "198.51.100.8"


def test_garbage_in_forwarded_for_stops_the_walk(proxied: Settings) -> None:
    scope = _scope("10.0.0.1", ("x-forwarded-for", "198.51.100.1, <script>, 192.168.1.1"))
    assert client_ip(scope, proxied) == "192.168.1.1"
    only_garbage = _scope("10.0.0.1", ("x-forwarded-for", "nonsense"))
    assert client_ip(only_garbage, proxied) == "10.0.0.1"


def test_an_address_with_a_zone_in_forwarded_for_stops_the_walk(proxied: Settings) -> None:
    zoned = "fe80::1%" + "a" * 100  # an address Python parses, with a zone of any length
    scope = _scope("10.0.0.1", ("x-forwarded-for", f"198.51.100.1, {zoned}"))
    assert client_ip(scope, proxied) == "10.0.0.1"


def test_address_is_computed_once_per_request(proxied: Settings) -> None:
    scope = _scope("10.0.0.1", ("x-forwarded-for", "198.51.100.1"))
    scope["state"] = {"client_ip": "already-known"}
    assert client_ip(scope, proxied) == "already-known"


def test_missing_peer_is_unknown(settings_factory: Callable[..., Settings]) -> None:
    assert client_ip(_scope(None), settings_factory()) == "unknown"


def test_ipv6_clients_are_limited_by_their_64_prefix() -> None:
    assert rate_limit_address("2001:db8:1:2:3:4:5:6") == "2001:db8:1:2::/64"
    assert rate_limit_address("::ffff:198.51.100.3") == "198.51.100.3"
    assert rate_limit_address("198.51.100.3") == "198.51.100.3"


def test_https_is_believed_from_trusted_proxies_only(proxied: Settings) -> None:
    assert request_is_https({**_scope("203.0.113.9"), "scheme": "https"}, proxied)
    forwarded = ("x-forwarded-proto", "https")
    assert request_is_https(_scope("10.0.0.1", forwarded), proxied)
    assert not request_is_https(_scope("203.0.113.9", forwarded), proxied)
