"""`enforce_rate_limit`: the app-wide dependency that counts every routed request.

It is installed once on the application (`FastAPI(dependencies=[RateLimitDep])`), so every
route any domain adds is limited without opting in; the group comes from the route template
(see `ollama_web.ratelimit.limiter`). Keying: if the request carries credentials (API key or
session cookie) they are resolved here through the accounts dependency `get_principal`,
which caches the result on `request.state.principal` so the route's own authentication
reuses it — the key is then the user id, shared by all of that user's keys and sessions.
Credentials that do not authenticate (or a cookie request missing its CSRF token) are keyed
by client address like anonymous requests; the route then refuses them as usual.

The decision is kept in `scope["state"]["rate_limit"]`; `RateLimitHeadersMiddleware` writes
the X-RateLimit-* headers from it onto whatever response the route produces.
"""

from __future__ import annotations

from typing import cast

from fastapi import Depends, FastAPI, Request

from ollama_web.auth.dependencies import Principal, get_principal, presented_api_key
from ollama_web.auth.sessions import SESSION_COOKIE
from ollama_web.core.dependencies import SessionDep
from ollama_web.core.errors import AppError, RateLimitedError
from ollama_web.core.net import client_ip, rate_limit_address
from ollama_web.ratelimit.limiter import RateLimiter, group_for
from ollama_web.ratelimit.storage import FallbackStorage

STATE_KEY = "rate_limit"


def get_rate_limiter(app: FastAPI) -> RateLimiter | None:
    """The limiter, or None when RATE_LIMIT_ENABLED=false (or before the lifespan ran)."""
    return cast(RateLimiter | None, getattr(app.state, "rate_limiter", None))


def rate_limit_storage(app: FastAPI) -> FallbackStorage | None:
    """The shared `limits` storage (Redis, the host's file or memory: `storage`).

    It exists even when RATE_LIMIT_ENABLED=false, for limits that must stay on (the
    failed-login throttle). Use your own namespaces in the identifiers you pass to the
    `limits` strategies.
    """
    return cast(FallbackStorage | None, getattr(app.state, "rate_limit_storage", None))


def _has_credentials(request: Request) -> bool:
    return presented_api_key(request) is not None or bool(request.cookies.get(SESSION_COOKIE))


async def _principal_if_any(request: Request, session: SessionDep) -> Principal | None:
    if not _has_credentials(request):
        return None
    try:
        return await get_principal(request, session)
    except AppError:
        # Not authenticated after all: limited by address; the route says why it refuses.
        return None


async def enforce_rate_limit(request: Request, session: SessionDep) -> None:
    limiter = get_rate_limiter(request.app)
    if limiter is None or STATE_KEY in (request.scope.get("state") or {}):
        return  # off, or this request counted already (see auth.context, body errors)
    route = request.scope.get("route")
    group = group_for(
        getattr(route, "path", request.url.path), request.method, getattr(route, "endpoint", None)
    )
    if group is None:
        return
    principal = await _principal_if_any(request, session)
    if principal is not None:
        client_key = f"user:{principal.user_id}"
    else:
        address = client_ip(request.scope, request.app.state.settings)
        client_key = f"ip:{rate_limit_address(address)}"
    decision = await limiter.hit(group, client_key)
    request.scope.setdefault("state", {})[STATE_KEY] = decision
    if not decision.allowed:
        raise RateLimitedError(
            f"Too many requests; the {group} limit is {decision.limit} per minute. "
            f"Try again in {decision.retry_after} s.",
            details={
                "group": group,
                "limit": decision.limit,
                "window_seconds": 60,
                "retry_after_seconds": decision.retry_after,
            },
            headers=decision.headers(),
        )


RateLimitDep = Depends(enforce_rate_limit)
