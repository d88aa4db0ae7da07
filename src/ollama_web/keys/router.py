"""/api/keys: create, list, revoke, rotate (every route acts on the caller's own keys)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query, Response

from ollama_web.audit.service import AuditAction, record_event
from ollama_web.auth.context import ClientInfoDep
from ollama_web.auth.dependencies import CurrentPrincipal
from ollama_web.core.dependencies import SessionDep, SettingsDep
from ollama_web.core.pagination import Page, PageParamsDep
from ollama_web.db import ApiKey
from ollama_web.db.base import utcnow
from ollama_web.keys.schemas import KeyCreate, KeyCreated, KeyPublic, KeyRotate, KeyRotated
from ollama_web.keys.service import (
    check_key_room,
    create_key,
    default_expiry,
    get_owned_key,
    key_status,
    list_keys,
    revoke_key,
    rotate_key,
)

router = APIRouter(prefix="/api/keys", tags=["keys"])
_NOT_FOUND: dict[int | str, dict[str, Any]] = {
    404: {"description": "No such key of yours (NOT_FOUND)"}
}


def _public(key: ApiKey) -> KeyPublic:
    return KeyPublic(
        id=key.id,
        name=key.name,
        prefix=key.prefix,
        status=key_status(key, utcnow()),
        created_at=key.created_at,
        expires_at=key.expires_at,
        last_used_at=key.last_used_at,
        revoked_at=key.revoked_at,
        rotated_at=key.rotated_at,
        grace_until=key.grace_until,
        replaced_by_id=key.replaced_by_id,
    )


@router.get("", summary="My API keys, newest first")
async def list_my_keys(
    principal: CurrentPrincipal,
    session: SessionDep,
    page: PageParamsDep,
    include_revoked: Annotated[bool, Query(description="Also list revoked keys.")] = False,
) -> Page[KeyPublic]:
    result = await list_keys(session, principal.user_id, page, include_revoked=include_revoked)
    return result.to_page(_public)


@router.post(
    "",
    status_code=201,
    summary="Create an API key (the key is shown once)",
    responses={
        409: {"description": "You hold MAX_API_KEYS_PER_USER usable keys already (CONFLICT)"}
    },
)
async def create_my_key(
    body: KeyCreate,
    principal: CurrentPrincipal,
    session: SessionDep,
    settings: SettingsDep,
    client: ClientInfoDep,
) -> KeyCreated:
    expires_at = default_expiry(settings, utcnow(), body.expires_in_days)
    await check_key_room(session, principal.user_id, settings.max_api_keys_per_user)
    key, secret = await create_key(session, principal.user_id, body.name, expires_at=expires_at)
    await record_event(
        session,
        AuditAction.KEY_CREATED,
        actor_user_id=principal.user_id,
        target_type="api_key",
        target_id=key.id,
        ip_address=client.ip_address,
        details={"name": key.name, "prefix": key.prefix},
    )
    return KeyCreated(
        id=key.id,
        name=key.name,
        prefix=key.prefix,
        key=secret,
        created_at=key.created_at,
        expires_at=key.expires_at,
    )


@router.get("/{key_id}", summary="One of my API keys", responses=_NOT_FOUND)
async def get_my_key(key_id: str, principal: CurrentPrincipal, session: SessionDep) -> KeyPublic:
    return _public(await get_owned_key(session, principal.user_id, key_id))


@router.delete("/{key_id}", status_code=204, summary="Revoke an API key", responses=_NOT_FOUND)
async def revoke_my_key(
    key_id: str, principal: CurrentPrincipal, session: SessionDep, client: ClientInfoDep
) -> Response:
    key = await get_owned_key(session, principal.user_id, key_id)
    if await revoke_key(session, key):  # recorded once, by the request that revoked it
        await record_event(
            session,
            AuditAction.KEY_REVOKED,
            actor_user_id=principal.user_id,
            target_type="api_key",
            target_id=key.id,
            ip_address=client.ip_address,
            details={"name": key.name, "prefix": key.prefix},
        )
    return Response(status_code=204)


@router.post(
    "/{key_id}/rotate",
    status_code=201,
    summary="Replace a key; the old one works until the grace period ends",
    responses={**_NOT_FOUND, 409: {"description": "The key is not active (API_KEY_NOT_ACTIVE)"}},
)
async def rotate_my_key(
    key_id: str,
    principal: CurrentPrincipal,
    session: SessionDep,
    settings: SettingsDep,
    client: ClientInfoDep,
    body: KeyRotate | None = None,
) -> KeyRotated:
    key = await get_owned_key(session, principal.user_id, key_id)
    grace = body.grace_period_minutes if body is not None else None
    if grace is None:
        grace = settings.api_key_rotation_grace_minutes
    new_key, secret, valid_until = await rotate_key(session, key, grace_minutes=grace)
    await record_event(
        session,
        AuditAction.KEY_ROTATED,
        actor_user_id=principal.user_id,
        target_type="api_key",
        target_id=key.id,
        ip_address=client.ip_address,
        details={"new_key_id": new_key.id, "grace_period_minutes": grace},
    )
    return KeyRotated(
        id=new_key.id,
        name=new_key.name,
        prefix=new_key.prefix,
        key=secret,
        created_at=new_key.created_at,
        expires_at=new_key.expires_at,
        previous_key_id=key.id,
        previous_key_valid_until=valid_until,
    )
