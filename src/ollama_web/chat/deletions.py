"""What deleting a conversation or a user does to its answers still being generated.

Each is stopped as a user's stop would stop it (see `GenerationRegistry.stop`), before the
rows go: its upstream is closed at once, its job ends and gives back its slot and its
node's in-flight count, it stores its partial text as `stopped`, and every attached stream
ends with the `done` event of a stopped answer.

The request's transaction must hold no write while the jobs' final writes run: on SQLite
its lock would keep them waiting out the busy timeout, twice, and the answers would end
unsaved; on PostgreSQL a deleted row would hold them until the request ends, which waits
for them. So the stops come before the delete, and the request's reads are committed first
(keeping the authentication's throttled activity write, the one write it may hold).

A stop that fails (Redis unreachable, say) never fails the deletion; nor does a chat that
starts while its conversation is deleted outlive it: the lease keeper of the process
generating an answer whose row is gone stops it (see `leases`).
"""

from __future__ import annotations

from sqlalchemy.ext.asyncio import AsyncSession

from ollama_web.chat.registry import GenerationRegistry
from ollama_web.conversations import repository


async def stop_answers(
    session: AsyncSession,
    registry: GenerationRegistry,
    user_id: str,
    conversation_id: str | None = None,
) -> None:
    """Stop the answers being generated in the conversation, or (none given) in every
    conversation of the user; returns once each has ended or no process claimed it."""
    ids = await repository.unfinished_answer_ids(session, user_id, conversation_id)
    if ids:
        await session.commit()  # loaded objects stay usable (expire_on_commit=False)
        await registry.stop_each(ids)
