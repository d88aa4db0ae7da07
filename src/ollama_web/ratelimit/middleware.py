"""Pure ASGI layer of rate limiting: the client address and the X-RateLimit-* headers.

For every HTTP request it resolves the client address once (`core.net.client_ip`, which the
access log and the accounts code read from `scope["state"]`). On the way out, if the route's
rate-limit dependency recorded a decision, the response — JSON, stream, file or error —
gets `X-RateLimit-Limit`, `X-RateLimit-Remaining` and `X-RateLimit-Reset` (epoch seconds
when the oldest counted request leaves the window; 429s also carry `Retry-After`).
"""

from __future__ import annotations

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ollama_web.core.config import Settings
from ollama_web.core.net import client_ip
from ollama_web.ratelimit.dependencies import STATE_KEY
from ollama_web.ratelimit.limiter import RateLimitDecision


class RateLimitHeadersMiddleware:
    def __init__(self, app: ASGIApp, settings: Settings) -> None:
        self.app = app
        self.settings = settings

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        client_ip(scope, self.settings)

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                decision = (scope.get("state") or {}).get(STATE_KEY)
                if isinstance(decision, RateLimitDecision):
                    headers = list(message.get("headers", []))
                    present = {name.lower() for name, _ in headers}
                    for name, value in decision.headers().items():
                        key = name.lower().encode()
                        if key not in present:
                            headers.append((key, value.encode()))
                    message["headers"] = headers
            await send(message)

        await self.app(scope, receive, send_with_headers)
