"""Same-site checks for login and setup, and the request facts the accounts code needs.

The client address and https detection come from `ollama_web.core.net` (the one place that
believes X-Forwarded-* headers, and only from TRUSTED_PROXIES).
"""

from __future__ import annotations

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


def is_cross_site(request: Request, settings: Settings) -> bool:
    """True for a browser post from another site (used to guard login and setup).

    Non-browser clients send neither header and pass; a browser's Origin must be one of
    CORS_ORIGINS or this server's own host, and Sec-Fetch-Site must not be "cross-site".
    """
    if request.headers.get("sec-fetch-site", "").lower() == "cross-site":
        return True
    origin = request.headers.get("origin")
    if origin is None:
        return False
    if origin == "null":
        return True
    allowed = {value.lower() for value in settings.cors_origins}
    if _origin_of(origin) in allowed:
        return False
    host = request.headers.get("host", "").lower()
    return not host or urlsplit(origin).netloc.lower() != host
