"""The one way in: who is calling, whichever credential they used.

`get_principal` accepts, in this order, `Authorization: Bearer <key>`, `X-API-Key: <key>`,
or the `ow_session` cookie. The user is read with the credential on every request (one
indexed join, only what authentication needs; on SQLite on the event loop's thread:
core/sqlite_inline.py), so disabling a user, demoting an admin, revoking a key or ending a
session takes effect on the very next request. Cookie-authenticated POST/PUT/PATCH/DELETE
must carry `X-CSRF-Token` equal to the session's token; API-key requests carry no ambient
credential and are exempt.

Aliases for routes: `CurrentPrincipal`, `AdminPrincipal` (403 FORBIDDEN unless admin),
`CurrentUser` and `AdminUser` (the `User` row, loaded by id in the request's session).

`get_principal` and `require_admin` are marked with `requires(CALLER)` / `requires(ADMIN)`;
the OpenAPI document (docs/openapi.py) finds the marks among each route's dependencies and
documents its security, 401 and 403. A dependency that authenticates in its own way (e.g.
metrics, which also take METRICS_TOKEN) carries the mark too.
"""

from __future__ import annotations

import hmac
from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated, Any, Literal, TypeVar, cast

from fastapi import Depends, Request
from sqlalchemy.ext.asyncio import AsyncSession
from starlette.responses import Response

from ollama_web.auth.errors import AccountDisabledError, CsrfTokenInvalidError
from ollama_web.auth.network import request_is_https
from ollama_web.auth.sessions import (
    SESSION_COOKIE,
    clear_session_cookie,
    find_session,
    is_session_live,
    record_activity,
)
from ollama_web.core.db import session_scope
from ollama_web.core.dependencies import SessionDep, core_of
from ollama_web.core.errors import ForbiddenError, PayloadTooLargeError, UnauthenticatedError
from ollama_web.db import User
from ollama_web.db.base import utcnow
from ollama_web.keys.service import authenticate_key, record_key_use
from ollama_web.middleware.input_guard import BODY_LIMIT_STATE

UNSAFE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
CSRF_HEADER = "X-CSRF-Token"
API_KEY_HEADER = "X-API-Key"

CALLER, ADMIN = "caller", "admin"
_REQUIRES_ATTRIBUTE = "__requires_caller__"
F = TypeVar("F", bound=Callable[..., Any])


def requires(level: str) -> Callable[[F], F]:
    """Mark a dependency as demanding a caller (`CALLER`) or an administrator (`ADMIN`)."""
    if level not in (CALLER, ADMIN):
        raise ValueError(f"unknown level {level!r}")

    def mark(dependency: F) -> F:
        setattr(dependency, _REQUIRES_ATTRIBUTE, level)
        return dependency

    return mark


def required_level(dependency: object) -> str | None:
    """`CALLER`, `ADMIN`, or None for a dependency without the mark."""
    level = getattr(dependency, _REQUIRES_ATTRIBUTE, None)
    return level if isinstance(level, str) else None


@dataclass(frozen=True)
class Principal:
    user_id: str
    username: str
    role: str
    auth_method: Literal["api_key", "session"]
    session_id: str | None
    api_key_id: str | None

    @property
    def is_admin(self) -> bool:
        return self.role == "admin"


def presented_api_key(request: Request) -> str | None:
    """The key from `Authorization: Bearer` or `X-API-Key`, if either is present."""
    authorization = request.headers.get("authorization")
    if authorization is not None:
        scheme, _, value = authorization.partition(" ")
        if scheme.lower() == "bearer":
            return value.strip()
    return request.headers.get(API_KEY_HEADER)


def _require_active(is_active: bool) -> None:
    if not is_active:
        raise AccountDisabledError("This account is disabled.")


async def _from_api_key(request: Request, session: SessionDep, raw_key: str) -> Principal:
    inline = core_of(request).inline
    holder = await authenticate_key(session, raw_key, inline)
    _require_active(holder.is_active)
    await record_key_use(session, holder, utcnow(), inline)
    return Principal(holder.user_id, holder.username, holder.role, "api_key", None, holder.key_id)


def _session_gone(request: Request) -> UnauthenticatedError:
    """401 that also tells the browser to drop the stale cookie."""
    settings = core_of(request).settings
    response = Response()
    clear_session_cookie(response, settings, secure=request_is_https(request, settings))
    return UnauthenticatedError(
        "The session has expired or ended; log in again.",
        headers={"set-cookie": response.headers["set-cookie"]},
    )


def _check_csrf(request: Request, expected: str) -> None:
    if request.method not in UNSAFE_METHODS:
        return
    if not core_of(request).settings.csrf_protection_enabled:
        return
    given = request.headers.get(CSRF_HEADER, "")
    if not hmac.compare_digest(given.encode(), expected.encode()):
        raise CsrfTokenInvalidError(
            f"Missing or wrong {CSRF_HEADER} header; get the token from GET /api/auth/csrf."
        )


async def _from_session(request: Request, session: SessionDep, token: str) -> Principal:
    core = core_of(request)
    found = await find_session(session, token, core.inline)
    now = utcnow()
    if found is None or not is_session_live(found, core.settings, now):
        raise _session_gone(request)
    _require_active(found.is_active)
    _check_csrf(request, found.csrf_token)
    await record_activity(session, found, now, core.settings, core.inline)
    return Principal(found.user_id, found.username, found.role, "session", found.session_id, None)


def _no_credentials() -> UnauthenticatedError:
    return UnauthenticatedError(
        "Authentication is required: send an API key or log in.",
        headers={"WWW-Authenticate": "Bearer"},
    )


@requires(CALLER)
async def get_principal(request: Request, session: SessionDep) -> Principal:
    """Authenticate the request (once; the result is kept on `request.state.principal`)."""
    cached = getattr(request.state, "principal", None)
    if isinstance(cached, Principal):
        return cached
    raw_key = presented_api_key(request)
    if raw_key is not None:
        principal = await _from_api_key(request, session, raw_key)
    else:
        token = request.cookies.get(SESSION_COOKIE)
        if not token:
            raise _no_credentials()
        principal = await _from_session(request, session, token)
    request.state.principal = principal
    request.state.principal_id = principal.user_id
    return principal


CurrentPrincipal = Annotated[Principal, Depends(get_principal)]


@requires(ADMIN)
async def require_admin(principal: CurrentPrincipal) -> Principal:
    if not principal.is_admin:
        raise ForbiddenError("This requires an administrator.")
    return principal


AdminPrincipal = Annotated[Principal, Depends(require_admin)]


async def _user_row(request: Request, session: AsyncSession, principal: Principal) -> User:
    """The caller's row, loaded by id in the request's session (authentication reads only
    the columns it needs)."""
    user = getattr(request.state, "current_user", None)
    if user is None:
        user = await session.get(User, principal.user_id)
        if user is None:  # deleted since the credential was checked
            raise UnauthenticatedError("This account no longer exists.")
        request.state.current_user = user
    return cast(User, user)


async def get_current_user(
    request: Request, principal: CurrentPrincipal, session: SessionDep
) -> User:
    return await _user_row(request, session, principal)


async def get_admin_user(request: Request, principal: AdminPrincipal, session: SessionDep) -> User:
    return await _user_row(request, session, principal)


CurrentUser = Annotated[User, Depends(get_current_user)]
AdminUser = Annotated[User, Depends(get_admin_user)]


def _route_needs(request: Request, call: Callable[..., Any]) -> bool:
    """Whether the matched route depends on `call` (directly or through another)."""
    route = request.scope.get("route")
    known: dict[Callable[..., Any], bool] | None = getattr(route, _NEEDS, None)
    if known is None:
        known = {}
        if route is not None:
            setattr(route, _NEEDS, known)  # routes are not hashable: kept on each
    needs = known.get(call)
    if needs is None:
        dependant = getattr(route, "dependant", None)
        stack = [dependant] if dependant is not None else []
        needs = False
        while stack and not needs:
            current = stack.pop()
            needs = current.call is call
            stack.extend(current.dependencies)
        known[call] = needs
    return needs


def _route_needs_principal(request: Request) -> bool:
    return _route_needs(request, get_principal)


_NEEDS = "_ollama_web_needs"

LARGE_BODY_BYTES = 64 * 1024
"""A body larger than this (or of unknown length) is read only once its caller is known;
on a route that needs no caller (login, setup, key verification: a few fields), it is
refused (413), not read."""


def route_body_limit(request: Request) -> int | None:
    """The most a body may hold on the request's route when that is less than
    MAX_REQUEST_BYTES: LARGE_BODY_BYTES on a route that needs no caller; None on the
    others. Also what the body limit tells a client it refused before routing (set on
    `app.state` by the accounts lifespan, see `middleware.body_limit`)."""
    return None if _route_needs_principal(request) else LARGE_BODY_BYTES


async def authenticate_before_body(request: Request, length: int | None) -> None:
    """Called before a request's body is read (`InputGuardMiddleware`; FastAPI reads a
    body before it resolves dependencies). For a route that needs a caller: none presented
    is 401 at once, nothing read. A large body (over LARGE_BODY_BYTES, or of unknown
    `length`) is read only once the credentials are checked, so no one unauthenticated has
    megabytes of JSON parsed. The principal is kept for the route, as `get_principal`
    keeps it; the user's row is loaded again in the route's own transaction.

    For a route that needs no caller, a body over LARGE_BODY_BYTES is 413 unread: anyone
    could otherwise have 10 MiB (MAX_REQUEST_BYTES) read and parsed per request, before
    any rate limit (a dependency, run after the body) counts it."""
    limit = route_body_limit(request)
    if limit is not None:
        if length is not None and length > limit:
            raise PayloadTooLargeError(
                "The request body is too large.", details={"max_bytes": limit}
            )
        setattr(request.state, BODY_LIMIT_STATE, limit)
        return
    if isinstance(getattr(request.state, "principal", None), Principal):
        return
    if presented_api_key(request) is None and not request.cookies.get(SESSION_COOKIE):
        raise _no_credentials()
    if length is not None and length <= LARGE_BODY_BYTES:
        return  # parsing it costs about what checking the credentials does
    async with session_scope(core_of(request).sessionmaker) as session:
        await get_principal(request, session)
    # Loaded in a transaction now ended: the route reads it in its own.
    request.state.current_user = None


async def authenticate_for_body_error(request: Request, session: AsyncSession) -> None:
    """Authenticate before a body error is answered (FastAPI reads the body before it
    resolves dependencies): a caller without credentials gets 401, and one who is not an
    administrator on an administrator's route 403, not 400/415."""
    if not _route_needs_principal(request):
        return
    principal = await get_principal(request, session)
    if _route_needs(request, require_admin):
        await require_admin(principal)
