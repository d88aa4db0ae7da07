"""Security headers on every HTTP response (JSON, SSE, errors, files, the docs pages).

Pure ASGI: the headers are added to `http.response.start`, so streaming bodies pass through
untouched. It is the outermost layer so that even the last-resort 500 written by the request
context middleware carries them. A header a route set itself is left alone; `Cache-Control:
no-store` goes on every response that sets none.

Two Content-Security-Policies: HTML (the /docs and /redoc pages) may load same-origin scripts
and styles (Swagger UI and ReDoc set inline *styles*; ReDoc runs its search in a `blob:`
worker; Swagger draws icons from `data:` images); every other response (JSON, SSE, files)
gets `default-src 'none'`. Neither allows inline script, and both forbid framing.
"""

from __future__ import annotations

from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ollama_web.core.config import Settings
from ollama_web.core.net import request_is_https

PAGE_CSP = "; ".join(
    (
        "default-src 'self'",
        "script-src 'self'",
        "style-src 'self' 'unsafe-inline'",
        "img-src 'self' data:",
        "font-src 'self' data:",
        "connect-src 'self'",
        "worker-src 'self' blob:",
        "object-src 'none'",
        "base-uri 'self'",
        "form-action 'self'",
        "frame-ancestors 'none'",
    )
)
API_CSP = "default-src 'none'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
PERMISSIONS_POLICY = (
    "accelerometer=(), camera=(), geolocation=(), gyroscope=(), magnetometer=(), "
    "microphone=(), payment=(), usb=()"
)
HSTS = "max-age=31536000; includeSubDomains"

_COMMON: tuple[tuple[bytes, bytes], ...] = (
    (b"x-frame-options", b"DENY"),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
    (b"permissions-policy", PERMISSIONS_POLICY.encode()),
    (b"cross-origin-opener-policy", b"same-origin"),
    # Answers carry keys, tokens and conversations: no browser or shared cache keeps them,
    # unless the route says otherwise (the event streams' no-cache, the docs assets).
    (b"cache-control", b"no-store"),
)


def _is_html(headers: list[tuple[bytes, bytes]]) -> bool:
    for name, value in headers:
        if name.lower() == b"content-type":
            return value.lower().startswith(b"text/html")
    return False


def security_headers(
    existing: list[tuple[bytes, bytes]], *, hsts: bool
) -> list[tuple[bytes, bytes]]:
    """The headers to append to a response that already has `existing`."""
    present = {name.lower() for name, _ in existing}
    csp = PAGE_CSP if _is_html(existing) else API_CSP
    wanted = [*_COMMON, (b"content-security-policy", csp.encode())]
    if hsts:
        wanted.append((b"strict-transport-security", HSTS.encode()))
    return [(name, value) for name, value in wanted if name not in present]


class SecurityHeadersMiddleware:
    def __init__(self, app: ASGIApp, settings: Settings) -> None:
        self.app = app
        self.settings = settings

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not self.settings.security_headers_enabled:
            await self.app(scope, receive, send)
            return
        hsts = self.settings.hsts_enabled or request_is_https(scope, self.settings)

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                headers.extend(security_headers(headers, hsts=hsts))
                message["headers"] = headers
            await send(message)

        await self.app(scope, receive, send_with_headers)


# Headers a browser client may send cross-origin, and response headers it may read.
CORS_ALLOW_HEADERS = (
    "Authorization",
    "Content-Type",
    "Last-Event-ID",
    "X-API-Key",
    "X-CSRF-Token",
    "X-Request-ID",
)
CORS_EXPOSE_HEADERS = (
    "Retry-After",
    "X-Request-ID",
    "X-RateLimit-Limit",
    "X-RateLimit-Remaining",
    "X-RateLimit-Reset",
)


def cors_options(settings: Settings) -> dict[str, Any]:
    """Keyword arguments for the CORS middleware (middleware/cors.py, Starlette's).

    Origins are listed explicitly (the settings refuse `*`), so credentials can be allowed.
    """
    return {
        "allow_origins": list(settings.cors_origins),
        "allow_credentials": True,
        "allow_methods": ["GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"],
        "allow_headers": list(CORS_ALLOW_HEADERS),
        "expose_headers": list(CORS_EXPOSE_HEADERS),
        "max_age": 600,
    }
