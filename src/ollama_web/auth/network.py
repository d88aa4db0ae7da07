"""Same-site checks for login and setup, and the request facts the accounts code needs.

The client address and https detection come from `ollama_web.core.net` (the one place that
believes X-Forwarded-* headers, and only from TRUSTED_PROXIES).
"""

from __future__ import annotations

import ipaddress
from urllib.parse import urlsplit

from starlette.requests import Request

from ollama_web.core import net
from ollama_web.core.config import Settings


def client_address(request: Request, settings: Settings) -> str:
    return net.client_ip(request.scope, settings)


def request_is_https(request: Request, settings: Settings) -> bool:
    return net.request_is_https(request.scope, settings)


def _origin_of(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}".lower()


def _names_this_machine(host: str) -> bool:
    """A Host that no other site's page can be served under: an IP address or localhost.
    A DNS name can be made to point here by whoever owns it (DNS rebinding), and the page
    it serves is then "same-origin" with whatever the browser sends to this server."""
    name = urlsplit(f"//{host}").hostname or ""
    if name == "localhost" or name.endswith(".localhost"):
        return True
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


ANOTHER_SITE = (
    "The page is on another site than this server (another host name: localhost and "
    "127.0.0.1 are two sites), where the session cookie (SameSite=Lax) would not be sent "
    "back; serve the page and the API under one host name."
)
NO_ORIGIN = "A page without an origin (a sandboxed frame, a local file) cannot log in."
NOT_LISTED = "The page's origin is not in CORS_ORIGINS."


def cross_site_reason(request: Request, settings: Settings) -> str | None:
    """Why a browser post is from another site (used to guard login and setup), or None.

    Non-browser clients send neither header and pass; a browser's Origin must be one of
    CORS_ORIGINS, or this server's own host when that is an IP address or localhost (a
    page on a DNS name is let in only by listing its origin in CORS_ORIGINS), and
    Sec-Fetch-Site must not be "cross-site".
    """
    if request.headers.get("sec-fetch-site", "").lower() == "cross-site":
        return ANOTHER_SITE
    origin = request.headers.get("origin")
    if origin is None:
        return None
    if origin == "null":
        return NO_ORIGIN
    allowed = {value.lower() for value in settings.cors_origins}
    if _origin_of(origin) in allowed:
        return None
    host = request.headers.get("host", "").lower()
    if not host or urlsplit(origin).netloc.lower() != host:
        return NOT_LISTED
    return None if _names_this_machine(host) else NOT_LISTED
