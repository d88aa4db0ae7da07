"""What the chat endpoints answer besides a live event stream: the non-streamed result of a
generation, and the replay of an answer that is no longer in memory."""

from __future__ import annotations

import asyncio
from typing import Any

from pydantic import BaseModel
from starlette.background import BackgroundTask
from starlette.responses import JSONResponse, Response
from starlette.types import Receive, Scope, Send

from ollama_web.chat.errors import error_body
from ollama_web.chat.generation import Generation
from ollama_web.chat.sse import EventLog, Follower, encode_event, listen_for_disconnect
from ollama_web.conversations.schemas import MessagePublic
from ollama_web.core.errors import error_body as http_error_body
from ollama_web.core.errors import request_id_of
from ollama_web.db.models import MessageStatus

FAILED = frozenset({MessageStatus.ERROR.value, MessageStatus.INTERRUPTED.value})


class ChatMessageResponse(BaseModel):
    conversation_id: str
    user_message: MessagePublic
    assistant_message: MessagePublic


class StopResponse(BaseModel):
    message: MessagePublic


UNKNOWN_FINAL_EVENT_ID = 2**31 - 1
"""The final event's id for an answer stored without one (ended by the sweep after its
process died, imported, or older): after any id a client can have seen, and always the
same, so that a client that saw it is told there is nothing more."""


def stored_log(
    message: MessagePublic, conversation_id: str, after: int, final_event_id: int | None
) -> EventLog:
    """Events for an answer that finished and left memory, rebuilt from the database.

    Without `Last-Event-ID`: `start`, the text (`thinking`, `token`), then `done` (or
    `error`). With it, only the final event — its message holds the whole text. The final
    event always has the id it had when it was first sent (`final_event_id`, else
    UNKNOWN_FINAL_EVENT_ID); a client that saw it gets nothing.
    """
    final = UNKNOWN_FINAL_EVENT_ID if final_event_id is None else final_event_id
    if after >= final:
        log = EventLog(base=after)
        log.finish()
        return log
    log = EventLog()
    if after <= 0:
        log.emit(
            "start",
            {
                "conversation_id": conversation_id,
                "user_message_id": message.parent_id,
                "assistant_message_id": message.id,
                "model": message.model,
            },
        )
        if message.thinking:
            log.emit_text("thinking", message.thinking)
        if message.content:
            log.emit_text("token", message.content)
    else:
        log.base = final - 1
    # The final event keeps its one id in every replay, full or not: a client reconnecting
    # with it is told there is nothing more (204), never sent it again under another id.
    log.frames.append(encode_event(final, *_final_event(message)))
    log.finish()
    return log


def _final_event(message: MessagePublic) -> tuple[str, dict[str, Any]]:
    payload = message.model_dump(mode="json")
    if message.status not in FAILED:
        return "done", {"message": payload}
    error = dict(message.error or {})
    return "error", {
        "error": error.get("error", "GENERATION_FAILED"),
        "message": error.get("message", "The answer was not completed."),
        "details": {**dict(error.get("details") or {}), "assistant_message": payload},
    }


class GenerationResultResponse(Response):
    """`POST /api/chat/message`: wait for the job, answer JSON. A client that leaves does not
    stop it (unless CHAT_CONTINUE_ON_DISCONNECT=false)."""

    def __init__(
        self,
        generation: Generation,
        conversation_id: str,
        user_message: MessagePublic,
    ) -> None:
        self.status_code = 200
        self.background: BackgroundTask | None = None
        self._generation = generation
        self._conversation_id = conversation_id
        self._user_message = user_message
        self.init_headers({})

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        generation = self._generation
        loop = asyncio.get_running_loop()
        # Attached (so a departure counts as abandoning), but never waiting on its future:
        # new tokens cost nothing here; only the end or a disconnect wakes this response.
        follower = Follower()
        listener = loop.create_task(listen_for_disconnect(receive, follower))
        finished = loop.create_task(generation.wait())
        generation.log.attach(follower)
        try:
            await asyncio.wait({listener, finished}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            listener.cancel()
            finished.cancel()
            generation.log.detach(follower)
        if follower.disconnected or generation.running:
            return
        await self._answer(generation, scope)(scope, receive, send)

    def _answer(self, generation: Generation, scope: Scope) -> Response:
        assert generation.result is not None
        if generation.error is None:
            body = ChatMessageResponse(
                conversation_id=self._conversation_id,
                user_message=self._user_message,
                assistant_message=generation.result,
            )
            return JSONResponse(body.model_dump(mode="json"))
        error = generation.error
        details: dict[str, Any] = {
            **error_body(error)["details"],
            "conversation_id": self._conversation_id,
            "user_message_id": self._user_message.id,
            "assistant_message": generation.result.model_dump(mode="json"),
        }
        content = http_error_body(error.code, error.message, details, request_id_of(scope))
        return JSONResponse(content, status_code=error.status_code, headers=error.headers)
