"""/api/auth: setup, login, logout, me, csrf, sessions, password, verify."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query, Request, Response

from ollama_web.audit.service import AuditAction, record_event
from ollama_web.auth.context import (
    ClientInfoDep,
    LoginThrottleDep,
    PasswordsDep,
    SameSiteOnly,
)
from ollama_web.auth.dependencies import CurrentPrincipal, CurrentUser, presented_api_key
from ollama_web.auth.errors import AccountDisabledError, InvalidApiKeyError
from ollama_web.auth.network import request_is_https
from ollama_web.auth.schemas import (
    CsrfResponse,
    LoginRequest,
    LoginResponse,
    MeResponse,
    PasswordChangeRequest,
    PasswordChangeResponse,
    SessionPublic,
    SetupRequest,
    SetupResponse,
    UserPublic,
    VerifiedKey,
    VerifyRequest,
    VerifyResponse,
)
from ollama_web.auth.service import change_password, login, setup_first_admin
from ollama_web.auth.sessions import (
    SESSION_COOKIE,
    clear_session_cookie,
    find_session,
    get_owned_session,
    is_session_live,
    list_live_sessions,
    revoke_session,
    revoke_user_sessions,
    set_session_cookie,
)
from ollama_web.core.dependencies import CoreDep, SessionDep, SettingsDep, core_of
from ollama_web.core.errors import NotFoundError, UnauthenticatedError
from ollama_web.core.pagination import Page, PageParamsDep
from ollama_web.db import ApiKey, User
from ollama_web.db.base import utcnow
from ollama_web.keys.service import authenticate_key

router = APIRouter(prefix="/api/auth", tags=["auth"])


@router.post(
    "/setup",
    status_code=201,
    summary="Create the first admin (only while no user exists)",
    dependencies=[SameSiteOnly],
    responses={
        403: {"description": "Cross-site request (CROSS_SITE_REQUEST)"},
        409: {"description": "Setup already done (SETUP_ALREADY_COMPLETED)"},
    },
)
async def setup(
    body: SetupRequest,
    request: Request,
    response: Response,
    session: SessionDep,
    settings: SettingsDep,
    passwords: PasswordsDep,
    client: ClientInfoDep,
) -> SetupResponse:
    """Works only while no user exists. Answers the new admin, a full API key (shown only
    this once) and a CSRF token, and sets the `ow_session` cookie. Browsers may only post here
    from this site or one of CORS_ORIGINS."""
    result = await setup_first_admin(
        session,
        passwords,
        settings,
        username=body.username,
        password=body.password,
        email=body.email,
        client=client,
    )
    secure = request_is_https(request, settings)
    set_session_cookie(response, result.session_token, settings, secure=secure)
    return SetupResponse(
        user=UserPublic.model_validate(result.user),
        api_key=result.api_key_secret,
        csrf_token=result.user_session.csrf_token,
        expires_at=result.user_session.expires_at,
    )


@router.post(
    "/login",
    summary="Log in with a password; sets the ow_session cookie",
    dependencies=[SameSiteOnly],
    responses={
        401: {"description": "Wrong username or password (INVALID_CREDENTIALS)"},
        403: {"description": "CROSS_SITE_REQUEST, or ACCOUNT_DISABLED after a correct password"},
        429: {"description": "Too many failed attempts (RATE_LIMITED, with Retry-After)"},
    },
)
async def login_with_password(
    body: LoginRequest,
    request: Request,
    response: Response,
    session: SessionDep,
    core: CoreDep,
    passwords: PasswordsDep,
    throttle: LoginThrottleDep,
    client: ClientInfoDep,
) -> LoginResponse:
    """Sets the `ow_session` cookie (HttpOnly, SameSite=Lax, Secure over https). Send the
    returned `csrf_token` as `X-CSRF-Token` on every POST/PUT/PATCH/DELETE made with the
    cookie; `GET /api/auth/csrf` gives it again after a page reload. Scripts use an API key
    instead (`Authorization: Bearer owk_...` or `X-API-Key`), which needs no CSRF token.
    Wrong password and unknown user get the same 401; repeated failures per username and per
    address are refused with 429 for LOGIN_FAILURE_WINDOW_MINUTES."""
    result = await login(
        session,
        core.sessionmaker,
        passwords,
        throttle,
        core.settings,
        username=body.username,
        password=body.password,
        client=client,
    )
    secure = request_is_https(request, core.settings)
    set_session_cookie(response, result.session_token, core.settings, secure=secure)
    return LoginResponse(
        user=UserPublic.model_validate(result.user),
        csrf_token=result.user_session.csrf_token,
        expires_at=result.user_session.expires_at,
        idle_timeout_minutes=core.settings.session_timeout_minutes,
    )


@router.post(
    "/logout",
    status_code=204,
    summary="End this session (all=true: every session of mine)",
)
async def logout(
    principal: CurrentPrincipal,
    request: Request,
    session: SessionDep,
    settings: SettingsDep,
    client: ClientInfoDep,
    all_sessions: Annotated[
        bool, Query(alias="all", description="End every session of mine.")
    ] = False,
) -> Response:
    if all_sessions:
        ended = await revoke_user_sessions(session, principal.user_id)
        action = AuditAction.LOGOUT_ALL
        details: dict[str, Any] = {"sessions_ended": ended}
    else:
        if principal.session_id is not None:
            row = await get_owned_session(session, principal.user_id, principal.session_id)
            if row is not None:
                await revoke_session(session, row)
        action = AuditAction.LOGOUT
        details = {"auth_method": str(principal.auth_method)}
    await record_event(
        session,
        action,
        actor_user_id=principal.user_id,
        target_type="session",
        target_id=principal.session_id,
        ip_address=client.ip_address,
        details=details,
    )
    response = Response(status_code=204)
    if principal.auth_method == "session" or all_sessions:
        clear_session_cookie(response, settings, secure=request_is_https(request, settings))
    return response


@router.get("/me", summary="Who am I")
async def me(principal: CurrentPrincipal, user: CurrentUser) -> MeResponse:
    return MeResponse(
        user=UserPublic.model_validate(user),
        auth_method=principal.auth_method,
        session_id=principal.session_id,
        api_key_id=principal.api_key_id,
    )


@router.get(
    "/csrf",
    summary="The CSRF token of the current session (public; null without a session)",
)
async def csrf_token(request: Request, session: SessionDep, settings: SettingsDep) -> CsrfResponse:
    token = request.cookies.get(SESSION_COOKIE)
    found = await find_session(session, token, core_of(request).inline) if token else None
    if found is None or not is_session_live(found, settings, utcnow()) or not found.is_active:
        return CsrfResponse(csrf_token=None, authenticated=False)
    return CsrfResponse(csrf_token=found.csrf_token, authenticated=True)


@router.get("/sessions", summary="My live sessions, newest first")
async def list_sessions(
    principal: CurrentPrincipal, session: SessionDep, settings: SettingsDep, page: PageParamsDep
) -> Page[SessionPublic]:
    result = await list_live_sessions(session, principal.user_id, settings, page)

    def public(row: object) -> SessionPublic:
        item = SessionPublic.model_validate(row)
        item.current = item.id == principal.session_id
        return item

    return result.to_page(public)


@router.delete(
    "/sessions/{session_id}",
    status_code=204,
    summary="End one of my sessions",
    responses={404: {"description": "No such session of mine"}},
)
async def end_session(
    session_id: str,
    principal: CurrentPrincipal,
    request: Request,
    session: SessionDep,
    settings: SettingsDep,
    client: ClientInfoDep,
) -> Response:
    row = await get_owned_session(session, principal.user_id, session_id)
    if row is None:
        raise NotFoundError("Session not found.")
    if await revoke_session(session, row):  # recorded once, by the request that ended it
        await record_event(
            session,
            AuditAction.SESSION_REVOKED,
            actor_user_id=principal.user_id,
            target_type="session",
            target_id=row.id,
            ip_address=client.ip_address,
        )
    response = Response(status_code=204)
    if row.id == principal.session_id:
        clear_session_cookie(response, settings, secure=request_is_https(request, settings))
    return response


@router.post(
    "/password",
    summary="Change my password; ends my other sessions",
    responses={
        400: {"description": "Wrong current password (INVALID_CURRENT_PASSWORD)"},
        429: {"description": "Too many wrong attempts (RATE_LIMITED)"},
    },
)
async def password(
    body: PasswordChangeRequest,
    principal: CurrentPrincipal,
    user: CurrentUser,
    session: SessionDep,
    passwords: PasswordsDep,
    throttle: LoginThrottleDep,
    client: ClientInfoDep,
) -> PasswordChangeResponse:
    ended = await change_password(
        session,
        passwords,
        throttle,
        user,
        current_password=body.current_password,
        new_password=body.new_password,
        keep_session_id=principal.session_id,
        client=client,
    )
    return PasswordChangeResponse(sessions_ended=ended)


@router.post(
    "/verify",
    summary="Check an API key (Bearer, X-API-Key or body {api_key})",
    responses={
        401: {"description": "UNAUTHENTICATED, INVALID_API_KEY, API_KEY_REVOKED, API_KEY_EXPIRED"},
        403: {"description": "The key's account is disabled (ACCOUNT_DISABLED)"},
    },
)
async def verify(
    request: Request, session: SessionDep, body: VerifyRequest | None = None
) -> VerifyResponse:
    """A valid key answers 200 with its user and key; an invalid one answers 401 with
    INVALID_API_KEY, API_KEY_REVOKED or API_KEY_EXPIRED (never `{"valid": false}`)."""
    raw_key = presented_api_key(request)
    if raw_key is None and body is not None:
        raw_key = body.api_key
    if raw_key is None:
        raise UnauthenticatedError("No API key given.")
    holder = await authenticate_key(session, raw_key, core_of(request).inline)
    if not holder.is_active:
        raise AccountDisabledError("This account is disabled.")
    key = await session.get(ApiKey, holder.key_id)
    user = await session.get(User, holder.user_id)
    if key is None or user is None:  # deleted since the lookup
        raise InvalidApiKeyError("The API key is not valid.")
    return VerifyResponse(user=UserPublic.model_validate(user), key=VerifiedKey.model_validate(key))
