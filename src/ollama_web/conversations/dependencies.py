"""Loaded, owned objects for routes: another user's id is simply not found."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends

from ollama_web.auth.dependencies import CurrentPrincipal
from ollama_web.conversations import repository
from ollama_web.core.dependencies import SessionDep
from ollama_web.db import Conversation, Message
from ollama_web.db.models import MessageRole


async def get_owned_conversation(
    conversation_id: str, principal: CurrentPrincipal, session: SessionDep
) -> Conversation:
    return await repository.get_conversation(session, principal.user_id, conversation_id)


async def get_owned_answer(
    assistant_message_id: str, principal: CurrentPrincipal, session: SessionDep
) -> Message:
    message = await repository.get_message(session, principal.user_id, assistant_message_id)
    if message.role != MessageRole.ASSISTANT.value:
        raise repository.message_not_found()
    return message


OwnedConversation = Annotated[Conversation, Depends(get_owned_conversation)]
OwnedAnswer = Annotated[Message, Depends(get_owned_answer)]
