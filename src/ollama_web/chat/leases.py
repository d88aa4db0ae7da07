"""Which unfinished answers are abandoned: leases kept by the process generating them.

Several processes may generate answers into one database (`serve --workers N`, or several
instances on one PostgreSQL). An answer left `pending` or `streaming` is abandoned only when
no process is generating it any more, so "unfinished" alone cannot mean "interrupted": a
process that starts must not take over the answers another live process is writing.

A running generation writes its row (checkpoints, or an `updated_at`-only heartbeat) at least
every `heartbeat` seconds (`heartbeat_seconds`: GENERATION_CHECKPOINT_SECONDS x 5); an
unfinished answer whose row was not written for three heartbeats belongs to a process that is
gone, and the sweep marks it `interrupted`, keeping its checkpointed text. Every process
sweeps at startup and then once per stale interval, so a crashed process's answers are marked
by whichever process runs next, within seconds. On SQLite, a stop or re-attach of such an
answer, or a question after it, does not wait for the sweep when no process of the host
holds it (`interrupt_unclaimed`).

At each heartbeat the keeper also looks for this process's running answers whose row is
gone or whose user is disabled: deleting a conversation or a user, or disabling a user
through the API, stops its answers first (see `chat.deletions`), but a chat can start in a
conversation while it is deleted, a stop cannot reach another process while Redis is down,
and `ollama-web users disable` reaches no server at all. Such an answer is stopped then,
within a heartbeat interval, instead of generating for nobody to its end.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Collection
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

from sqlalchemy import select, update
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from ollama_web.chat.errors import GenerationInterrupted, error_body
from ollama_web.core.db import RefusalLog, session_scope
from ollama_web.db import Conversation, Message, User
from ollama_web.db.base import utcnow
from ollama_web.db.models import UNFINISHED_STATUSES, MessageStatus

if TYPE_CHECKING:
    from ollama_web.chat.relay_base import RelayBase

logger = logging.getLogger("ollama_web.chat")

HEARTBEATS_PER_CHECKPOINT = 5
STALE_HEARTBEATS = 3
REACHED_AGAIN = "the lease keeper reaches the database again"
ABANDONED = error_body(GenerationInterrupted("The server process generating this answer stopped."))
"""The error of a swept answer: the code a follower got live, not a generic failure."""


def heartbeat_seconds(checkpoint_seconds: float) -> float:
    """At most this long between two writes of a running answer's row."""
    return checkpoint_seconds * HEARTBEATS_PER_CHECKPOINT


def unclaimed_seconds(checkpoint_seconds: float) -> float:
    """An unfinished answer that no process of the host holds, not written for this long, is
    interrupted at once by a stop, re-attach or question (`interrupt_unclaimed`): a running
    generation writes its row at least once a heartbeat, wherever it runs; one checkpoint
    interval more for a busy loop or a write waiting for the database's lock."""
    return heartbeat_seconds(checkpoint_seconds) + checkpoint_seconds


def stale_seconds(checkpoint_seconds: float) -> float:
    """An unfinished answer not written for this long is abandoned."""
    return heartbeat_seconds(checkpoint_seconds) * STALE_HEARTBEATS


async def mark_abandoned_interrupted(
    session: AsyncSession,
    stale_after: float,
    running: Collection[str] = (),
    before: datetime | None = None,
) -> int:
    """Mark unfinished answers not written for `stale_after` seconds (or since `before`)
    `interrupted` (not user-scoped: the whole server's). `running` are this process's own
    generations, never touched. Reads first, so the usual case (nothing abandoned) takes no
    write lock."""
    cutoff = before if before is not None else utcnow() - timedelta(seconds=stale_after)
    candidates = await session.scalars(
        select(Message.id).where(
            Message.status.in_(UNFINISHED_STATUSES), Message.updated_at < cutoff
        )
    )
    ids = [message_id for message_id in candidates if message_id not in running]
    if not ids:
        return 0
    return await _interrupt(session, ids, cutoff)


async def _interrupt(session: AsyncSession, ids: Collection[str], cutoff: datetime) -> int:
    """Mark the answers `ids` that are still unfinished and were not written since `cutoff`
    `interrupted`; how many were."""
    now = utcnow()
    result = await session.execute(
        update(Message)
        .where(
            Message.id.in_(ids),
            Message.status.in_(UNFINISHED_STATUSES),
            Message.updated_at < cutoff,  # written meanwhile: its process is alive after all
        )
        .values(
            status=MessageStatus.INTERRUPTED.value,
            error=ABANDONED,
            completed_at=now,
            updated_at=now,
        )
        .execution_options(synchronize_session=False)
    )
    return int(getattr(result, "rowcount", 0) or 0)


async def interrupt_unclaimed(
    session: AsyncSession, relay: RelayBase | None, message_id: str, unwritten_for: float
) -> bool:
    """Mark the unfinished answer `message_id` `interrupted` now, without waiting for the
    sweep, when no process can be generating it; True when it was (committed). For a stop,
    a re-attach or a question after it that found no owner, on SQLite only (the caller's
    check: a database of one host, its rows written and read by one clock; PostgreSQL's
    may be written from other hosts, whose writes only the sweep's margin allows for):
    when every other process of the host said it does not hold the answer or is gone, and
    its row was not written for `unwritten_for` seconds (`unclaimed_seconds`: a process
    the host's sockets do not reach, its directory unusable or another DATA_DIR, writes
    its running answers within that). A process killed (kill -9, the OOM killer) leaves
    its answers to be answered as stored, and questions after them, a few seconds after
    their last write, not 409 until the sweep (15 to 30 s)."""
    if relay is None or not await relay.nobody_on_host_holds(message_id):
        return False
    cutoff = utcnow() - timedelta(seconds=unwritten_for)
    if not await _interrupt(session, [message_id], cutoff):
        return False
    await session.commit()
    logger.warning(
        "the unfinished answer %s of a server process that is gone is now interrupted "
        "(no process of this host holds it)",
        message_id,
    )
    return True


async def sweep(
    sessionmaker: async_sessionmaker[AsyncSession],
    stale_after: float,
    running: Collection[str] = (),
    before: datetime | None = None,
) -> int:
    async with session_scope(sessionmaker) as session:
        swept = await mark_abandoned_interrupted(session, stale_after, running, before)
    if swept:
        logger.warning(
            "%d unfinished answers of a server process that is gone are now interrupted", swept
        )
    return swept


async def ownerless_answers(
    sessionmaker: async_sessionmaker[AsyncSession], message_ids: Collection[str]
) -> set[str]:
    """Of `message_ids`, those whose row is gone (its conversation or its user deleted) or
    whose user is disabled (from the command line, say, which cannot reach this process)."""
    ids = set(message_ids)
    owned = (
        select(Message.id)
        .join(Conversation, Conversation.id == Message.conversation_id)
        .join(User, User.id == Conversation.user_id)
        .where(Message.id.in_(ids), User.is_active.is_(True))
    )
    async with session_scope(sessionmaker) as session:
        return ids.difference(await session.scalars(owned))


async def keep_leases(
    sessionmaker: async_sessionmaker[AsyncSession],
    checkpoint_seconds: float,
    heartbeat: Callable[[float], Awaitable[None]],
    running: Callable[[], Collection[str]],
    stop_ownerless: Callable[[Collection[str]], None],
) -> None:
    """Run for the process's lifetime: heartbeat this process's generations (and stop those
    whose row is gone or whose user is disabled), and sweep the answers of processes that
    are gone once per stale interval."""
    loop = asyncio.get_running_loop()
    interval = heartbeat_seconds(checkpoint_seconds)
    stale = stale_seconds(checkpoint_seconds)
    next_sweep = loop.time() + stale
    failing = RefusalLog(logger)
    while True:
        await asyncio.sleep(interval)
        await heartbeat(interval)
        if ids := running():
            try:
                gone = await ownerless_answers(sessionmaker, ids)
            except (SQLAlchemyError, OSError) as exc:
                failing.refused(exc, "could not look for ownerless answers; looking again later")
            else:
                failing.succeeded(REACHED_AGAIN)
                if gone:
                    stop_ownerless(gone)
        if loop.time() < next_sweep:
            continue
        next_sweep = loop.time() + stale
        try:
            await sweep(sessionmaker, stale, running())
        except (SQLAlchemyError, OSError) as exc:
            failing.refused(exc, "the sweep of abandoned answers failed; it runs again later")
        else:
            failing.succeeded(REACHED_AGAIN)
