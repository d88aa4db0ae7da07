"""Conversation endpoints under /api/conversations."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query, Response, status

from ollama_web.auth.dependencies import CurrentPrincipal
from ollama_web.chat import deletions as chat_deletions
from ollama_web.chat.dependencies import RegistryDep
from ollama_web.chat.options import FORBIDDEN_RESPONSE, check_options
from ollama_web.conversations import export as conversation_export
from ollama_web.conversations import service as conversation_service
from ollama_web.conversations.dependencies import OwnedConversation
from ollama_web.conversations.schemas import (
    ActivateMessage,
    ConversationCreate,
    ConversationDetail,
    ConversationPatch,
    ConversationPublic,
    ConversationReplace,
)
from ollama_web.conversations.search import MAX_QUERY_CHARS
from ollama_web.core.dependencies import SessionDep, SettingsDep
from ollama_web.core.pagination import Page, PageParamsDep

router = APIRouter(prefix="/api/conversations", tags=["conversations"])

_NOT_FOUND: dict[int | str, dict[str, Any]] = {
    404: {"description": "No such conversation of yours"}
}
_OPTIONS: dict[int | str, dict[str, Any]] = {
    403: FORBIDDEN_RESPONSE,
    422: {"description": "Invalid payload, or options.num_ctx above MAX_NUM_CTX"},
}


@router.get("", summary="List my conversations, newest activity first")
async def list_conversations(
    principal: CurrentPrincipal,
    session: SessionDep,
    page: PageParamsDep,
    pinned: Annotated[bool | None, Query(description="Only pinned (true) or unpinned")] = None,
    archived: Annotated[bool, Query(description="Archived ones instead of the others")] = False,
    q: Annotated[
        str | None,
        Query(
            max_length=MAX_QUERY_CHARS,
            description="Words to find in titles and message text (all must occur; "
            "plain words, no query syntax), in every branch, accents ignored (cafe finds "
            "café; on PostgreSQL with its `unaccent` extension). An answer still being "
            "written is found once it ends.",
        ),
    ] = None,
) -> Page[ConversationPublic]:
    return await conversation_service.list_page(
        session, principal.user_id, page, pinned=pinned, archived=archived, query=q or None
    )


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    summary="Create a conversation",
    responses=_OPTIONS,
)
async def create_conversation(
    body: ConversationCreate,
    principal: CurrentPrincipal,
    session: SessionDep,
    settings: SettingsDep,
) -> ConversationPublic:
    check_options(body.options, is_admin=principal.is_admin, settings=settings)
    conversation = await conversation_service.create(session, principal.user_id, body)
    return conversation_service.conversation_public(conversation)


@router.post(
    "/import",
    status_code=status.HTTP_201_CREATED,
    summary="Import a conversation from its JSON export (new ids)",
    description="At most 10 000 messages (`MAX_IMPORT_MESSAGES`; 422 above), each user "
    "message at most MAX_MESSAGE_CHARS characters, each other message's content and "
    "thinking at most 1 000 000.",
    response_model=ConversationDetail,
    responses=_OPTIONS,
)
async def import_conversation(
    body: conversation_export.ConversationExport,
    principal: CurrentPrincipal,
    session: SessionDep,
    settings: SettingsDep,
) -> Response:
    where = ("conversation", "options")
    check_options(
        body.conversation.options, is_admin=principal.is_admin, settings=settings, at=where
    )
    conversation = await conversation_export.import_conversation(
        session, principal.user_id, body, settings
    )
    # Serialised from the rows, as GET does (no model per message: 10 000 of them).
    detail = await conversation_service.detail_json(session, principal.user_id, conversation)
    return Response(detail, status_code=status.HTTP_201_CREATED, media_type="application/json")


@router.get(
    "/{conversation_id}",
    summary="A conversation with its active branch (each message lists its versions)",
    response_model=ConversationDetail,
    responses=_NOT_FOUND,
)
async def get_conversation(
    conversation: OwnedConversation, principal: CurrentPrincipal, session: SessionDep
) -> Response:
    # Built from our own database rows and serialised straight from them (no model each).
    body = await conversation_service.detail_json(session, principal.user_id, conversation)
    return Response(body, media_type="application/json")


@router.put(
    "/{conversation_id}",
    summary="Replace every editable field",
    responses={**_NOT_FOUND, **_OPTIONS},
)
async def replace_conversation(
    body: ConversationReplace,
    conversation: OwnedConversation,
    principal: CurrentPrincipal,
    session: SessionDep,
    settings: SettingsDep,
) -> ConversationPublic:
    check_options(body.options, is_admin=principal.is_admin, settings=settings)
    await conversation_service.replace(session, conversation, body)
    return conversation_service.conversation_public(conversation)


@router.patch(
    "/{conversation_id}",
    summary="Change the given fields",
    responses={**_NOT_FOUND, **_OPTIONS},
)
async def patch_conversation(
    body: ConversationPatch,
    conversation: OwnedConversation,
    principal: CurrentPrincipal,
    session: SessionDep,
    settings: SettingsDep,
) -> ConversationPublic:
    check_options(body.options, is_admin=principal.is_admin, settings=settings)
    await conversation_service.patch(session, conversation, body)
    return conversation_service.conversation_public(conversation)


@router.delete(
    "/{conversation_id}",
    status_code=status.HTTP_204_NO_CONTENT,
    summary="Delete a conversation and its messages",
    description="Answers still being generated in it are stopped first, as "
    "`POST /api/chat/{assistant_message_id}/stop` stops them: the model stops at once and "
    "every stream attached to one ends with a `done` event whose message has status "
    "`stopped`. A stop that fails does not fail the deletion.",
    responses=_NOT_FOUND,
)
async def delete_conversation(
    conversation: OwnedConversation,
    principal: CurrentPrincipal,
    session: SessionDep,
    registry: RegistryDep,
) -> Response:
    await chat_deletions.stop_answers(session, registry, principal.user_id, conversation.id)
    await conversation_service.delete(session, conversation)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.post(
    "/{conversation_id}/activate",
    summary="Show another version: the active branch goes through the given message",
    responses=_NOT_FOUND,
)
async def activate_message(
    body: ActivateMessage,
    conversation: OwnedConversation,
    principal: CurrentPrincipal,
    session: SessionDep,
) -> ConversationDetail:
    return await conversation_service.activate(
        session, principal.user_id, conversation, body.message_id
    )


@router.get(
    "/{conversation_id}/export",
    summary="Export as JSON (every branch; importable) or Markdown (the active branch)",
    response_model=conversation_export.ConversationExport,
    responses={
        200: {"content": {"text/markdown": {"schema": {"type": "string"}}}},
        **_NOT_FOUND,
    },
)
async def export_conversation(
    conversation: OwnedConversation,
    principal: CurrentPrincipal,
    session: SessionDep,
    format: Annotated[Literal["json", "markdown"], Query()] = "json",
) -> Response:
    rows = await conversation_export.export_rows(session, principal.user_id, conversation.id)
    if format == "markdown":
        return Response(
            conversation_export.to_markdown(conversation, rows),
            media_type="text/markdown",
            headers=_attachment(conversation.id, "md"),
        )
    return Response(
        conversation_export.export_json(conversation, rows),
        media_type="application/json",
        headers=_attachment(conversation.id, "json"),
    )


def _attachment(conversation_id: str, extension: str) -> dict[str, str]:
    return {
        "Content-Disposition": f'attachment; filename="conversation-{conversation_id}.{extension}"'
    }
