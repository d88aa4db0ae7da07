"""Chat endpoints: `POST /api/chat/stream` (SSE), `POST /api/chat/message`, re-attach
`GET /api/chat/stream/{assistant_message_id}`, stop `POST /api/chat/{assistant_message_id}/stop`.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Annotated, Any

from fastapi import APIRouter, Header, Query, Request
from pydantic import BeforeValidator, NonNegativeInt
from sqlalchemy.ext.asyncio import AsyncSession
from starlette.responses import Response

from ollama_web.auth.dependencies import CurrentPrincipal
from ollama_web.chat import service as chat_service
from ollama_web.chat.dependencies import RegistryDep
from ollama_web.chat.errors import AnswerInProgressError, GenerationNotHereError
from ollama_web.chat.generation import Generation
from ollama_web.chat.leases import interrupt_unclaimed, unclaimed_seconds
from ollama_web.chat.options import FORBIDDEN_RESPONSE
from ollama_web.chat.registry import GenerationRegistry
from ollama_web.chat.relay_base import RelayBase
from ollama_web.chat.responses import (
    ChatMessageResponse,
    GenerationResultResponse,
    StopResponse,
    stored_log,
)
from ollama_web.chat.schemas import ChatRequest
from ollama_web.chat.sse import MEDIA_TYPE, EventLog, SSEHead, SSEResponse
from ollama_web.conversations import repository
from ollama_web.conversations.dependencies import OwnedAnswer
from ollama_web.conversations.service import message_public
from ollama_web.core.config import Settings
from ollama_web.core.dependencies import SessionDep, SettingsDep, core_of
from ollama_web.core.errors import error_response
from ollama_web.db import Message
from ollama_web.db.models import UNFINISHED_STATUSES, MessageStatus
from ollama_web.metrics.middleware import timed_by_the_model
from ollama_web.middleware.head import is_head
from ollama_web.ollama.dependencies import GatewayDep
from ollama_web.ratelimit.limiter import DEFAULT, rate_limit_group

router = APIRouter(prefix="/api/chat", tags=["chat"])

# Swept as interrupted because its row went unwritten: its process may only have lost the
# database for a while, and still be generating it (asked through the relay first).
INTERRUPTED = MessageStatus.INTERRUPTED.value

_ERRORS: dict[int | str, dict[str, Any]] = {
    403: FORBIDDEN_RESPONSE,
    404: {"description": "Unknown conversation or message, or MODEL_NOT_FOUND (nothing stored)"},
    409: {
        "description": "ANSWER_IN_PROGRESS: a question after an answer still being generated "
        "(`details`: conversation_id, assistant_message_id); wait for its end or stop it. "
        "An edit or a regenerate is a new version beside it and is not refused"
    },
    422: {
        "description": "Invalid payload: options (num_ctx at most MAX_NUM_CTX), content "
        "length, images, mode"
    },
    429: {"description": "RATE_LIMITED or TOO_MANY_GENERATIONS (with Retry-After)"},
    503: {
        "description": "OLLAMA_UNAVAILABLE: no node reachable; the user's message is stored and "
        "`details` holds `conversation_id` and `user_message_id`"
    },
}
_SSE: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "`text/event-stream`. Events (each with an integer `id:` counting from "
        "1): `start` {conversation_id, user_message_id, assistant_message_id, model}; `token` "
        "{content}; `thinking` {content}; then `done` {message} (also for an answer stopped "
        "by its stop or by deleting its conversation or user: its message has status "
        "`stopped`) or `error` {error, message, details} (the partial answer is stored with "
        "status `error`; `details.assistant_message` holds it). "
        "A `: keep-alive` comment is sent every SSE_KEEPALIVE_SECONDS.",
        "content": {MEDIA_TYPE: {"schema": {"type": "string"}}},
    }
}


def _no_last_event(value: object) -> object:
    """An empty `Last-Event-ID` is no last event (WHATWG SSE: the last event ID string may
    be empty): the header is taken as absent. Any other value must be an id."""
    return None if value == "" else value


LastEventIdHeader = Annotated[
    NonNegativeInt | None,  # bound on the id itself: the None of an empty header passes
    BeforeValidator(_no_last_event),
    Header(
        alias="Last-Event-ID",
        description="Replay the events after this id (empty: none seen, replay them all)",
    ),
]


async def _prepare_or_fail(
    request: Request,
    body: ChatRequest,
    principal: CurrentPrincipal,
    session: SessionDep,
    settings: SettingsDep,
    gateway: GatewayDep,
    registry: RegistryDep,
) -> chat_service.PreparedChat | Response:
    inline = core_of(request).inline

    def prepare() -> Awaitable[chat_service.PreparedChat]:
        return chat_service.prepare(
            session,
            inline,
            principal.user_id,
            body,
            settings,
            gateway,
            registry,
            is_admin=principal.is_admin,
        )

    try:
        try:
            return await prepare()
        except AnswerInProgressError as blocked:
            return await _prepare_after_a_gone_answer(blocked, prepare, session, settings, registry)
    except chat_service.StoredBeforeFailure as failure:
        return _stored_before(request, failure)


def _stored_before(request: Request, failure: chat_service.StoredBeforeFailure) -> Response:
    # Answered, not raised: the request's transaction commits the stored user message.
    status, code, message = failure.status_code, failure.code, failure.message
    return error_response(request, status, code, message, failure.details, failure.headers)


@router.post(
    "/stream",
    summary="Send a message and stream the answer (SSE)",
    response_class=SSEResponse,
    status_code=200,
    responses={**_SSE, **_ERRORS},
)
async def chat_stream(
    request: Request,
    body: ChatRequest,
    principal: CurrentPrincipal,
    session: SessionDep,
    settings: SettingsDep,
    gateway: GatewayDep,
    registry: RegistryDep,
) -> Response:
    prepared = await _prepare_or_fail(
        request, body, principal, session, settings, gateway, registry
    )
    if isinstance(prepared, Response):
        return prepared
    # Started now, not when the response starts: its request to Ollama goes out before the
    # response's headers (~0.4 ms of work on the way to them).
    generation = registry.start(prepared.reservation, prepared.spec)
    if not await generation.reached():
        return _unreached(request, generation)
    return SSEResponse(lambda: generation.log, keepalive_seconds=settings.sse_keepalive_seconds)


@router.post(
    "/message",
    summary="Send a message and get the whole answer (not streamed)",
    response_model=ChatMessageResponse,
    responses=_ERRORS,
)
@timed_by_the_model
async def chat_message(
    request: Request,
    body: ChatRequest,
    principal: CurrentPrincipal,
    session: SessionDep,
    settings: SettingsDep,
    gateway: GatewayDep,
    registry: RegistryDep,
) -> Response:
    prepared = await _prepare_or_fail(
        request, body, principal, session, settings, gateway, registry
    )
    if isinstance(prepared, Response):
        return prepared
    generation = registry.start(prepared.reservation, prepared.spec)
    if not await generation.reached():
        return _unreached(request, generation)
    return GenerationResultResponse(
        generation, prepared.spec.conversation_id, prepared.user_message
    )


def _unreached(request: Request, generation: Generation) -> Response:
    """No node took the request (one died since the health cache saw it up): the same 503,
    with the user's message kept, as when the model could not be resolved."""
    assert generation.error is not None
    spec = generation.spec
    failure = chat_service.StoredBeforeFailure(
        generation.error, spec.conversation_id, spec.user_message_id
    )
    return _stored_before(request, failure)


def _not_here(message: Message) -> GenerationNotHereError:
    return GenerationNotHereError(
        "This answer is being generated by another server process.",
        details={"assistant_message_id": message.id, "status": message.status},
    )


async def _interrupted_as_unclaimed(
    message: Message, relay: RelayBase | None, session: AsyncSession, settings: Settings
) -> bool:
    """True when the unfinished `message`, which no process claimed, is now stored
    `interrupted` (its process is gone: `_interrupt_unclaimed`; `message` refreshed)."""
    if not await _interrupt_unclaimed(session, relay, message.id, settings):
        return False
    await session.refresh(message)
    return True


async def _interrupt_unclaimed(
    session: AsyncSession, relay: RelayBase | None, message_id: str, settings: Settings
) -> bool:
    """`leases.interrupt_unclaimed`, on SQLite only (its text says why)."""
    if not settings.is_sqlite:
        return False
    unwritten_for = unclaimed_seconds(settings.generation_checkpoint_seconds)
    return await interrupt_unclaimed(session, relay, message_id, unwritten_for)


async def _prepare_after_a_gone_answer(
    blocked: AnswerInProgressError,
    prepare: Callable[[], Awaitable[chat_service.PreparedChat]],
    session: AsyncSession,
    settings: Settings,
    registry: GenerationRegistry,
) -> chat_service.PreparedChat:
    """A question after an unfinished answer: when no process holds that answer any more
    (its process was killed; on SQLite, see `leases.interrupt_unclaimed`), it is stored
    `interrupted` and the question prepared again, after it; else `blocked` stands (409)."""
    answer_id = blocked.details["assistant_message_id"]
    if not settings.is_sqlite or registry.get(answer_id) is not None:
        raise blocked  # held here, or another host's may: not worth asking
    await session.commit()  # the turn's reads end here: none held while the host is asked
    if not await _interrupt_unclaimed(session, registry.relay, answer_id, settings):
        raise blocked
    return await prepare()


async def _follow_elsewhere(
    message: Message,
    relay: RelayBase | None,
    seen: int,
    *,
    head: bool,
    session: AsyncSession,
    settings: Settings,
) -> EventLog | None:
    """The events of the process generating the answer, through the relay; None to replay
    the stored answer. An unfinished answer that no process claims is elsewhere (409),
    unless its process is gone (`_interrupted_as_unclaimed`: replayed as stored).

    A HEAD follows nothing (the owner would count it as a client): an unfinished answer is
    taken as followable when there is a relay (an empty log stands for the owner's: it
    answers 200; the GET's 409 when no process claims it would take the relay's round
    trip), and an interrupted one is answered as stored."""
    if message.status in UNFINISHED_STATUSES:
        if head and relay is not None:
            return EventLog()
        log = await relay.follow(message.id, seen) if relay is not None else None
        if log is None:
            if await _interrupted_as_unclaimed(message, relay, session, settings):
                return None
            raise _not_here(message)
        return log
    if message.status == INTERRUPTED and relay is not None and not head:
        return await relay.follow(message.id, seen)
    return None


@router.get(
    "/stream/{assistant_message_id}",
    summary="Re-attach to a running or finished answer (SSE), replaying after Last-Event-ID",
    description="The events after `Last-Event-ID` (or `after`), then the answer's new ones "
    "as they come, ending with its `done` or `error` event. An id past the answer's last "
    "event: 204 once the answer has ended; while it runs, the stream waits for its end and "
    "is then sent that final event, under its own (lower) id. An answer no longer in memory "
    "(120 s after it ended, or after a restart) is replayed from the database as `start`, "
    "one `token` holding its whole text, and its final event (under the id it was sent "
    "with when that is known, else 2147483647): a Last-Event-ID between them gets only the "
    "final event, whose message holds the whole text.",
    response_class=SSEResponse,
    status_code=200,
    responses={
        **_SSE,
        204: {
            "description": "The answer has ended and the client saw its last event: nothing "
            "to send (an EventSource stops reconnecting)"
        },
        404: {"description": "Unknown message"},
    },
)
@rate_limit_group(DEFAULT)  # see chat_stop
async def chat_reattach(
    request: Request,
    message: OwnedAnswer,
    principal: CurrentPrincipal,
    session: SessionDep,
    settings: SettingsDep,
    registry: RegistryDep,
    last_event_id: LastEventIdHeader = None,
    after: Annotated[
        NonNegativeInt | None,
        BeforeValidator(_no_last_event),
        Query(description="Same as Last-Event-ID (for clients without it); empty: none seen"),
    ] = None,
) -> Response:
    seen = last_event_id if last_event_id is not None else (after or 0)
    head = is_head(request.scope)  # answered with the stream's head, following nothing
    generation = registry.get(message.id)
    log: EventLog | None
    if generation is not None:
        log = generation.log
    else:
        if registry.relay is not None:
            # The request's reads end here: it may wait for another process's answer, and
            # a storm of re-attaches must not hold the database's connections meanwhile.
            await session.commit()  # loaded objects stay usable (expire_on_commit=False)
        log = await _follow_elsewhere(
            message, registry.relay, seen, head=head, session=session, settings=settings
        )
    if log is None:
        siblings = await repository.sibling_ids(session, principal.user_id, message)
        public = message_public(message, siblings)
        log = stored_log(public, message.conversation_id, seen, message.final_event_id)
    if log.finished and log.position_after(seen) >= len(log.frames):
        # Nothing the client has not seen, and nothing more to come: 204 tells an
        # EventSource to stop reconnecting.
        return Response(status_code=204)
    if head:
        return SSEHead()
    return SSEResponse(lambda: log, after=seen, keepalive_seconds=settings.sse_keepalive_seconds)


@router.post(
    "/{assistant_message_id}/stop",
    summary="Stop an answer: the upstream is closed at once, the partial text is kept",
    response_model=StopResponse,
    responses={404: {"description": "Unknown message"}},
)
# Stop and re-attach count against the default budget, not the chat one: a user who spent
# the chat budget on new questions can still stop an answer and pick up its stream.
@rate_limit_group(DEFAULT)
async def chat_stop(
    message: OwnedAnswer,
    principal: CurrentPrincipal,
    session: SessionDep,
    settings: SettingsDep,
    registry: RegistryDep,
) -> StopResponse:
    may_run = message.status == INTERRUPTED and registry.relay is not None
    if message.status in UNFINISHED_STATUSES or may_run or registry.get(message.id) is not None:
        # The request's reads end here: a browser session's activity write, held until the
        # request ends, would hold SQLite's lock while the stopped answer stores its text.
        await session.commit()  # loaded objects stay usable (expire_on_commit=False)
        stopped = await registry.stop(message.id)
        if stopped is not None:
            return StopResponse.model_validate({"message": stopped})
        if not may_run and not await _interrupted_as_unclaimed(
            message, registry.relay, session, settings
        ):
            raise _not_here(message)
    siblings = await repository.sibling_ids(session, principal.user_id, message)
    return StopResponse(message=message_public(message, siblings))
