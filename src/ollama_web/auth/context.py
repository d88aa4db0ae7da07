"""Request-scoped helpers for the account routes: hashing, throttle, client, same-site; the
auth lifespan (the throttle, the pruning of ended sessions)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Annotated, cast

from fastapi import Depends, FastAPI, Request
from sqlalchemy.exc import SQLAlchemyError

from ollama_web.auth.dependencies import (
    LARGE_BODY_BYTES,
    Principal,
    authenticate_before_body,
    authenticate_for_body_error,
    route_body_limit,
)
from ollama_web.auth.errors import CrossSiteRequestError
from ollama_web.auth.network import client_address, cross_site_reason
from ollama_web.auth.passwords import Passwords, passwords_for
from ollama_web.auth.service import ClientInfo
from ollama_web.auth.sessions import MAX_USER_AGENT, PRUNE_INTERVAL_SECONDS, prune_sessions
from ollama_web.auth.throttle import LoginThrottle
from ollama_web.core.config import Settings
from ollama_web.core.db import describe_database_error, session_scope
from ollama_web.core.dependencies import SettingsDep, core_of
from ollama_web.core.state import CoreState
from ollama_web.db.base import utcnow
from ollama_web.ratelimit.dependencies import enforce_rate_limit, rate_limit_storage
from ollama_web.ratelimit.storage import failed_login_storage, host_storage

logger = logging.getLogger("ollama_web.auth")


@asynccontextmanager
async def auth_lifespan(app: FastAPI) -> AsyncIterator[None]:
    """Prunes ended sessions in the background; closes the failed-login throttle (created on
    first use, see `get_login_throttle`)."""
    app.state.login_throttle = None
    app.state.body_error_authenticator = refuse_before_body_error
    app.state.body_gate = gate_body
    app.state.route_body_limit = route_body_limit
    pruner = asyncio.get_running_loop().create_task(
        _prune_sessions_periodically(app.state.core), name="session-pruner"
    )
    try:
        yield
    finally:
        pruner.cancel()
        await asyncio.gather(pruner, return_exceptions=True)
        throttle: LoginThrottle | None = app.state.login_throttle
        app.state.login_throttle = None
        if throttle is not None:
            await throttle.aclose()


async def _prune_sessions_periodically(core: CoreState) -> None:
    """Delete ended sessions now, then every PRUNE_INTERVAL_SECONDS. A failure (the database
    locked by a restore, unreachable) is logged in one line; the next round tries again."""
    while True:
        try:
            async with session_scope(core.sessionmaker) as session:
                pruned = await prune_sessions(session, core.settings, utcnow())
        except (SQLAlchemyError, OSError) as exc:
            logger.warning("could not delete ended sessions: %s", describe_database_error(exc))
        except Exception:
            logger.exception("could not delete ended sessions")
        else:
            if pruned:
                logger.info("deleted %d ended session(s)", pruned)
        await asyncio.sleep(PRUNE_INTERVAL_SECONDS)


async def gate_body(request: Request, length: int | None) -> None:
    """What is checked before a request's body is read (`InputGuardMiddleware`): the
    caller (`authenticate_before_body`), and for a large body (over LARGE_BODY_BYTES, or
    of unknown length) of a known caller, the rate limit too. The limiter is otherwise a
    dependency, run after FastAPI has read and parsed the body: 10 MiB a request, parsed
    even for a request it refuses."""
    await authenticate_before_body(request, length)
    if length is not None and length <= LARGE_BODY_BYTES:
        return
    if not isinstance(getattr(request.state, "principal", None), Principal):
        return
    async with session_scope(core_of(request).sessionmaker) as session:
        await enforce_rate_limit(request, session)  # counted once: the dependency skips it


async def refuse_before_body_error(request: Request) -> None:
    """What the route's dependencies would have refused before its body, refused before a
    body FastAPI could not read (not JSON, not sent as JSON), in their order: over the
    rate limit (429; such a request counts as any other), no caller (401), not an
    administrator (403)."""
    async with session_scope(core_of(request).sessionmaker) as session:
        await enforce_rate_limit(request, session)
        await authenticate_for_body_error(request, session)


async def get_passwords(settings: SettingsDep) -> Passwords:
    return passwords_for(settings)


async def get_login_throttle(request: Request) -> LoginThrottle:
    """The throttle: with REDIS_URL on the shared rate-limit storage's Redis, on a file the
    host's processes share (`ratelimit.host_storage`) without it or while Redis is
    unreachable. Created lazily so it does not matter which lifespan starts first."""
    throttle = cast(LoginThrottle | None, getattr(request.app.state, "login_throttle", None))
    if throttle is None:
        settings: Settings = request.app.state.settings
        shared = rate_limit_storage(request.app) if settings.redis_url else None
        if shared is not None:
            storage = failed_login_storage(shared, settings.data_dir)
        else:
            storage = host_storage(settings.data_dir)
        throttle = LoginThrottle(settings, storage=storage, owned=True)
        request.app.state.login_throttle = throttle
    return throttle


async def get_client_info(request: Request, settings: SettingsDep) -> ClientInfo:
    user_agent = request.headers.get("user-agent")
    return ClientInfo(
        ip_address=client_address(request, settings),
        user_agent=user_agent[:MAX_USER_AGENT] if user_agent else None,
    )


async def refuse_cross_site(request: Request, settings: SettingsDep) -> None:
    """Login and setup must not be posted from another site's page."""
    reason = cross_site_reason(request, settings)
    if reason is not None:
        raise CrossSiteRequestError(
            f"Cross-site requests to this endpoint are refused. {reason}",
            details={"origin": request.headers.get("origin")},
        )


PasswordsDep = Annotated[Passwords, Depends(get_passwords)]
LoginThrottleDep = Annotated[LoginThrottle, Depends(get_login_throttle)]
ClientInfoDep = Annotated[ClientInfo, Depends(get_client_info)]
SameSiteOnly = Depends(refuse_cross_site)
