"""/api/admin/users and /api/admin/audit (admins only)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import APIRouter, Query, Response
from pydantic import AfterValidator

from ollama_web.admin.schemas import (
    AdminUserCreate,
    AdminUserPublic,
    AdminUserUpdate,
    AuditEventPublic,
    Role,
)
from ollama_web.admin.service import (
    UNSET,
    delete_conversations_in_batches,
    delete_user,
    disable_before_deleting,
    get_user_or_404,
    list_users,
    update_user,
)
from ollama_web.audit.service import AuditAction, list_events, record_event
from ollama_web.auth.context import ClientInfoDep, PasswordsDep
from ollama_web.auth.dependencies import AdminPrincipal
from ollama_web.auth.users import create_user
from ollama_web.chat import deletions as chat_deletions
from ollama_web.chat.dependencies import RegistryDep
from ollama_web.core.dependencies import SessionDep, SettingsDep
from ollama_web.core.errors import ConflictError
from ollama_web.core.pagination import Page, PageParamsDep
from ollama_web.db import UserRole
from ollama_web.db.base import as_utc

router = APIRouter(prefix="/api/admin", tags=["admin"])
_NOT_FOUND: dict[int | str, dict[str, Any]] = {404: {"description": "No such user (NOT_FOUND)"}}
_LAST_ADMIN: dict[int | str, dict[str, Any]] = {
    409: {"description": "The last active admin cannot go (LAST_ADMIN)"}
}


@router.get("/users", summary="Users, newest first")
async def list_all_users(
    principal: AdminPrincipal,
    session: SessionDep,
    page: PageParamsDep,
    role: Annotated[Role | None, Query(description="Only users with this role.")] = None,
    is_active: Annotated[bool | None, Query(description="Only enabled/disabled users.")] = None,
) -> Page[AdminUserPublic]:
    result = await list_users(session, page, role=role, is_active=is_active)
    return result.to_page(AdminUserPublic.model_validate)


@router.post(
    "/users",
    status_code=201,
    summary="Create a user",
    responses={409: {"description": "Username taken (USERNAME_TAKEN)"}},
)
async def create_account(
    body: AdminUserCreate,
    principal: AdminPrincipal,
    session: SessionDep,
    passwords: PasswordsDep,
    client: ClientInfoDep,
) -> AdminUserPublic:
    user = await create_user(
        session,
        passwords,
        username=body.username,
        password=body.password,
        email=body.email,
        role=UserRole(body.role),
    )
    await record_event(
        session,
        AuditAction.USER_CREATED,
        actor_user_id=principal.user_id,
        target_type="user",
        target_id=user.id,
        ip_address=client.ip_address,
        details={"username": user.username, "role": user.role},
    )
    return AdminUserPublic.model_validate(user)


@router.get("/users/{user_id}", summary="One user", responses=_NOT_FOUND)
async def get_account(
    user_id: str, principal: AdminPrincipal, session: SessionDep
) -> AdminUserPublic:
    return AdminUserPublic.model_validate(await get_user_or_404(session, user_id))


@router.patch(
    "/users/{user_id}",
    summary="Change role, enable/disable, reset password, change email",
    description="Disabling a user ends their sessions and stops their answers still being "
    "generated, as `POST /api/chat/{assistant_message_id}/stop` stops them.",
    responses={**_NOT_FOUND, **_LAST_ADMIN},
)
async def update_account(
    user_id: str,
    body: AdminUserUpdate,
    principal: AdminPrincipal,
    session: SessionDep,
    passwords: PasswordsDep,
    client: ClientInfoDep,
    registry: RegistryDep,
) -> AdminUserPublic:
    user = await get_user_or_404(session, user_id)
    email: Any = body.email if "email" in body.model_fields_set else UNSET
    changes = await update_user(
        session,
        passwords,
        user,
        role=body.role,
        is_active=body.is_active,
        password=body.password,
        email=email,
    )
    if changes:
        await record_event(
            session,
            AuditAction.USER_UPDATED,
            actor_user_id=principal.user_id,
            target_type="user",
            target_id=user.id,
            ip_address=client.ip_address,
            details={"username": user.username, **changes},
        )
    if body.is_active is False:
        # Disabled: its sessions have ended; so do the answers it still has generating.
        await chat_deletions.stop_answers(session, registry, user.id)
    await session.refresh(user)
    return AdminUserPublic.model_validate(user)


@router.delete(
    "/users/{user_id}",
    status_code=204,
    summary="Delete a user with their keys, sessions and conversations",
    description="The user's answers still being generated are stopped first, as "
    "`POST /api/chat/{assistant_message_id}/stop` stops them: the model stops at once and "
    "every stream attached to one ends with a `done` event whose message has status "
    "`stopped`. A stop that fails does not fail the deletion. On SQLite the user is first "
    "disabled (their keys and sessions stop working), then their conversations are deleted "
    "a few thousand messages at a time, then the account: other users' writes never wait "
    "behind one long deletion. A deletion cut short (the server stopped) leaves the user "
    "disabled, to delete again.",
    responses={
        **_NOT_FOUND,
        409: {"description": "LAST_ADMIN, or CANNOT_DELETE_SELF"},
    },
)
async def delete_account(
    user_id: str,
    principal: AdminPrincipal,
    session: SessionDep,
    client: ClientInfoDep,
    registry: RegistryDep,
    settings: SettingsDep,
    passwords: PasswordsDep,
) -> Response:
    if user_id == principal.user_id:
        raise ConflictError("You cannot delete your own account.", code="CANNOT_DELETE_SELF")
    user = await get_user_or_404(session, user_id)
    username = user.username
    await chat_deletions.stop_answers(session, registry, user.id)
    if settings.is_sqlite:  # one writer at a time: no long transaction (PostgreSQL locks rows)
        await disable_before_deleting(session, passwords, user, principal.user_id)
        await delete_conversations_in_batches(session, user)
    if await delete_user(session, user):
        await record_event(
            session,
            AuditAction.USER_DELETED,
            actor_user_id=principal.user_id,
            target_type="user",
            target_id=user_id,
            ip_address=client.ip_address,
            details={"username": username},
        )
    return Response(status_code=204)


def _as_utc_filter(value: datetime) -> datetime:
    """A filter's time: without an offset it is read as UTC; one that has no UTC form
    (year 9999 at -14:00) is refused with a 422 rather than failing in the query."""
    return as_utc(value if value.tzinfo is not None else value.replace(tzinfo=UTC))


UTCTime = Annotated[datetime, AfterValidator(_as_utc_filter)]


@router.get("/audit", summary="Audit events, newest first")
async def audit_events(
    principal: AdminPrincipal,
    session: SessionDep,
    page: PageParamsDep,
    action: Annotated[str | None, Query(max_length=64, description="Only this action.")] = None,
    actor_user_id: Annotated[
        str | None, Query(max_length=32, description="Only events by this user.")
    ] = None,
    since: Annotated[
        UTCTime | None,
        Query(description="Only events at or after this (ISO 8601; without an offset, UTC)."),
    ] = None,
) -> Page[AuditEventPublic]:
    result = await list_events(
        session, page, action=action, actor_user_id=actor_user_id, since=since
    )
    return result.to_page(AuditEventPublic.model_validate)
