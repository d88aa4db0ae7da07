"""Opening a conversation: the JSON served is exactly the schema's serialisation."""

from __future__ import annotations

import asyncio
from datetime import timedelta

import httpx
from fastapi import FastAPI
from sqlalchemy import text

from ollama_web.conversations import repository, service
from ollama_web.core.db import session_scope
from ollama_web.db import Message
from ollama_web.db.base import new_id, utcnow
from tests.conversations.conftest import Seeder
from tests.fixtures.auth import TestUser


async def test_served_json_is_the_models_serialisation(
    app: FastAPI, client: httpx.AsyncClient, regular_user: TestUser, seed: Seeder
) -> None:
    user_id = regular_user.id
    conversation_id = await seed(user_id, "Question?", "First answer", "Follow-up")
    sessionmaker = app.state.core.sessionmaker
    async with session_scope(sessionmaker) as session:
        conversation = await repository.get_conversation(session, user_id, conversation_id)
        question, answer, _ = await repository.conversation_messages(
            session, user_id, conversation_id
        )
        # A second answer beside the first (a regeneration), with every optional field set.
        regenerated = Message(
            id=new_id(),
            conversation_id=conversation_id,
            parent_id=question.id,
            role="assistant",
            content='Second answer, «unicode» "quoted"\n',
            thinking="hmm",
            images=["aGVsbG8="],
            status="error",
            model="llama3.2:latest",
            done_reason="stop",
            error={"code": "UPSTREAM", "message": "boom", "details": {"n": 1}},
            prompt_eval_count=12,
            eval_count=345,
            total_duration=9_876_543_210,
            load_duration=1,
            prompt_eval_duration=2,
            eval_duration=3_000_000_007,
            created_at=utcnow() + timedelta(microseconds=123_456),
            updated_at=utcnow(),
            completed_at=utcnow() + timedelta(seconds=1),
        )
        session.add(regenerated)
        conversation.active_leaf_id = regenerated.id

    async with session_scope(sessionmaker) as session:
        conversation = await repository.get_conversation(session, user_id, conversation_id)
        expected = (await service.detail(session, user_id, conversation)).model_dump_json()
    response = await client.get(
        f"/api/conversations/{conversation_id}", headers=regular_user.headers
    )
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    assert response.content == expected.encode()
    messages = response.json()["messages"]
    assert [m["id"] for m in messages] == [question.id, regenerated.id]
    assert messages[1]["sibling_ids"] == [answer.id, regenerated.id]
    assert messages[1]["tokens_per_second"] == 115.0


async def test_rows_are_converted_a_step_at_a_time_with_the_loop_running_between(
    app: FastAPI,
) -> None:
    """A long conversation's rows leave the event loop free between steps, in order."""
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            ticks += 1
            await asyncio.sleep(0)

    numbers = text(
        "WITH RECURSIVE n(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM n WHERE x < 2500) "
        "SELECT x, 'row ' || x AS label FROM n"
    )
    async with app.state.core.engine.connect() as connection:
        result = await connection.execute(numbers)
        running = asyncio.get_running_loop().create_task(ticker())
        await asyncio.sleep(0)
        before = ticks
        rows = await repository.dict_rows(result)
        during = ticks - before
        running.cancel()
    assert rows == [{"x": x, "label": f"row {x}"} for x in range(1, 2501)]
    assert during == -(-2500 // repository.ROWS_PER_STEP) - 1  # a turn between two steps
