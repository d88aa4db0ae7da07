"""Deleting a user with many messages: on SQLite their conversations go in short
transactions before the account, so that the other users' writes are not held behind one
long one (100 000 messages held the write lock 4.4 s; past the 5 s busy timeout the others
fail)."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import event, func, select

from ollama_web.admin import router as admin_router
from ollama_web.admin import service as admin_service
from ollama_web.db import Conversation, Message, User
from tests.conversations.conftest import seed_conversation
from tests.fixtures.auth import TestUser, execute_sql


async def _count(app: FastAPI, statement: Any) -> int:
    return int((await execute_sql(app, statement)).scalar_one())


async def test_a_user_s_conversations_go_in_short_transactions_then_the_account(
    app: FastAPI,
    client: httpx.AsyncClient,
    admin_user: TestUser,
    regular_user: TestUser,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(admin_service, "DELETE_BATCH_MESSAGES", 8)
    for size in (2, 1, 1, 5, 3):  # exchanges; batches of messages: 4+2+2, 10 (alone), 6
        await seed_conversation(app, regular_user.id, ["hello", "hi"] * size)
    theirs = select(func.count()).select_from(Message).join(Conversation)
    theirs = theirs.where(Conversation.user_id == regular_user.id)
    assert await _count(app, theirs) == 24
    deletes: list[str] = []

    def record(conn: Any, cursor: Any, sql: str, *args: Any) -> None:
        if sql.lstrip().upper().startswith("DELETE FROM CONVERSATIONS"):
            deletes.append(sql)

    engine = app.state.core.engine.sync_engine
    event.listen(engine, "before_cursor_execute", record)
    try:
        response = await client.delete(
            f"/api/admin/users/{regular_user.id}", headers=admin_user.headers
        )
    finally:
        event.remove(engine, "before_cursor_execute", record)
    assert response.status_code == 204, response.text
    assert await _count(app, theirs) == 0
    assert (
        await _count(app, select(func.count()).where(Conversation.user_id == regular_user.id)) == 0
    )
    assert await _count(app, select(func.count()).where(User.id == regular_user.id)) == 0
    if app.state.settings.is_sqlite:
        assert len(deletes) == 3, deletes  # each its own transaction, committed
    # PostgreSQL deletes the account in one transaction, as before: its row locks hold
    # no other user's writes.


@pytest.mark.parametrize("db_backend", ["sqlite"])  # PostgreSQL: one transaction
async def test_the_user_is_disabled_before_anything_is_deleted(
    app: FastAPI,
    client: httpx.AsyncClient,
    admin_user: TestUser,
    regular_user: TestUser,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A deletion that stops half-way (a crash between two batches) leaves a disabled
    account, whose keys and sessions no longer work, to delete again."""
    for _ in range(3):
        await seed_conversation(app, regular_user.id, ["hello", "hi"])
    monkeypatch.setattr(admin_service, "DELETE_BATCH_MESSAGES", 2)

    async def crash(*args: Any) -> bool:
        raise RuntimeError("the process died here")

    delete_user = admin_router.delete_user
    monkeypatch.setattr(admin_router, "delete_user", crash)
    url = f"/api/admin/users/{regular_user.id}"
    try:
        crashed = await client.delete(url, headers=admin_user.headers)
        assert crashed.status_code == 500
    except RuntimeError:
        pass
    by_key = await client.get("/api/auth/me", headers=regular_user.headers)
    assert (by_key.status_code, by_key.json()["error"]) == (403, "ACCOUNT_DISABLED")
    user = (await execute_sql(app, select(User).where(User.id == regular_user.id))).scalar_one()
    assert user.is_active is False
    left = select(func.count()).where(Conversation.user_id == regular_user.id)
    assert await _count(app, left) == 0  # its conversations went, the account stayed
    monkeypatch.setattr(admin_router, "delete_user", delete_user)
    again = await client.delete(url, headers=admin_user.headers)
    assert again.status_code == 204, again.text
    assert await _count(app, select(func.count()).where(User.id == regular_user.id)) == 0
