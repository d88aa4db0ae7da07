"""Request rate limits: which group a route belongs to, and one moving-window hit per request.

Groups (per minute, from settings): "auth" RATE_LIMIT_AUTH_PER_MINUTE for the operations that
check credentials (POST/PUT/PATCH/DELETE on /api/auth/setup, /login, /verify, /password);
"chat" RATE_LIMIT_CHAT_PER_MINUTE for everything under /api/chat but stop and re-attach
(which must work for a user who spent it on questions); "default"
RATE_LIMIT_PER_MINUTE for every other route. /health, /health/live and /health/ready are
exempt. An endpoint can name its group explicitly with `@rate_limit_group("chat")` (or
`EXEMPT`), which wins over the path rules. Each group has its own budget per client.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from limits import RateLimitItem, RateLimitItemPerMinute

from ollama_web.core.config import Settings
from ollama_web.ratelimit.storage import FallbackStorage

AUTH, CHAT, DEFAULT, EXEMPT = "auth", "chat", "default", "exempt"
GROUPS = (AUTH, CHAT, DEFAULT)

EXEMPT_PATHS = frozenset({"/health", "/health/live", "/health/ready"})
AUTH_PATHS = frozenset(
    {"/api/auth/setup", "/api/auth/login", "/api/auth/verify", "/api/auth/password"}
)
CHAT_PREFIX = "/api/chat"
_READ_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
_GROUP_ATTRIBUTE = "__rate_limit_group__"

F = TypeVar("F", bound=Callable[..., Any])


def rate_limit_group(group: str) -> Callable[[F], F]:
    """Put an endpoint in a group ("auth", "chat", "default") or exempt it (`EXEMPT`).

    Apply it under the route decorator::

        @router.post("/api/things/expensive")
        @rate_limit_group("chat")
        async def expensive(...): ...
    """
    if group not in (*GROUPS, EXEMPT):
        raise ValueError(f"unknown rate-limit group {group!r}")

    def mark(endpoint: F) -> F:
        setattr(endpoint, _GROUP_ATTRIBUTE, group)
        return endpoint

    return mark


def group_for(path_template: str, method: str, endpoint: object = None) -> str | None:
    """The group of a route (by its template, e.g. "/api/chat/{id}"), None when exempt."""
    explicit = getattr(endpoint, _GROUP_ATTRIBUTE, None)
    if isinstance(explicit, str):
        return None if explicit == EXEMPT else explicit
    if path_template in EXEMPT_PATHS:
        return None
    if path_template in AUTH_PATHS and method.upper() not in _READ_METHODS:
        return AUTH
    if path_template == CHAT_PREFIX or path_template.startswith(CHAT_PREFIX + "/"):
        return CHAT
    return DEFAULT


@dataclass(frozen=True)
class RateLimitDecision:
    allowed: bool
    group: str
    limit: int
    remaining: int
    reset_at: float  # epoch seconds when the oldest counted request leaves the window
    retry_after: int  # seconds; 0 when allowed

    def headers(self) -> dict[str, str]:
        headers = {
            "X-RateLimit-Limit": str(self.limit),
            "X-RateLimit-Remaining": str(self.remaining),
            "X-RateLimit-Reset": str(math.ceil(self.reset_at)),
        }
        if not self.allowed:
            headers["Retry-After"] = str(self.retry_after)
        return headers


class RateLimiter:
    """Moving-window limits per (group, client) over the shared storage."""

    def __init__(self, settings: Settings, storage: FallbackStorage) -> None:
        self.storage = storage
        self.items: dict[str, RateLimitItem] = {
            AUTH: RateLimitItemPerMinute(settings.rate_limit_auth_per_minute),
            CHAT: RateLimitItemPerMinute(settings.rate_limit_chat_per_minute),
            DEFAULT: RateLimitItemPerMinute(settings.rate_limit_per_minute),
        }

    async def hit(self, group: str, client_key: str) -> RateLimitDecision:
        """Count one request of `client_key` in `group`; the decision says if it may pass."""
        item = self.items[group]
        # What limits' MovingWindowRateLimiter does in `hit` and `get_window_stats`, the
        # two in one transaction when the storage is the host's file.
        expiry = item.get_expiry()
        allowed, oldest, count = await self.storage.acquire_with_window(
            item.key_for(group, client_key), item.amount, expiry
        )
        now = time.time()
        reset_at = max(oldest + expiry, now)
        retry_after = 0 if allowed else max(1, math.ceil(reset_at - now))
        return RateLimitDecision(
            allowed=allowed,
            group=group,
            limit=item.amount,
            remaining=max(0, item.amount - count),
            reset_at=reset_at,
            retry_after=retry_after,
        )
