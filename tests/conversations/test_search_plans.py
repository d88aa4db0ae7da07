"""Search gives the same answer whichever SQLite plan runs (conversations/search.py).

The thresholds that choose the plan are lowered or raised so that small data takes each one;
on PostgreSQL there is one plan, and the tests run once.
"""

from __future__ import annotations

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import select, text
from sqlalchemy.dialects import postgresql

from ollama_web.conversations import search
from ollama_web.core.db import session_scope
from ollama_web.db import Conversation
from tests.conversations.conftest import Seeder
from tests.fixtures.auth import TestUser, UserFactory

PLANS = {
    "rare": {},
    "dense": {"RARE_MATCHES": 0, "DENSE_MATCHES": 0},
    "rowids": {"RARE_MATCHES": 0, "DENSE_MATCHES": 10**9},
}


@pytest.fixture(params=list(PLANS))
def search_plan(
    request: pytest.FixtureRequest, db_backend: str, monkeypatch: pytest.MonkeyPatch
) -> str:
    plan: str = request.param
    if db_backend != "sqlite" and plan != "rare":
        pytest.skip("one search plan on PostgreSQL")
    for name, value in PLANS[plan].items():
        monkeypatch.setattr(search, name, value)
    return plan


async def _search_all(
    client: httpx.AsyncClient, user: TestUser, q: str, *, limit: int = 2, **params: object
) -> list[str]:
    """Ids of every page of the search, in order, following `next_cursor`."""
    ids: list[str] = []
    cursor: str | None = None
    while True:
        query: dict[str, object] = {"q": q, "limit": limit, **params}
        if cursor:
            query["cursor"] = cursor
        response = await client.get("/api/conversations", params=query, headers=user.headers)
        assert response.status_code == 200, response.text
        page = response.json()
        assert len(page["items"]) <= limit
        ids += [item["id"] for item in page["items"]]
        cursor = page["next_cursor"]
        if cursor is None:
            return ids


async def test_every_match_newest_first_across_pages(
    search_plan: str,
    client: httpx.AsyncClient,
    regular_user: TestUser,
    user_factory: UserFactory,
    seed: Seeder,
) -> None:
    user = regular_user.id
    late_turn = [f"turn {i}" for i in range(30)] + ["the basalt column", "ok"]
    oldest = await seed(user, *late_turn, title="Old one", age_minutes=100)
    await seed(user, "nothing relevant", "still nothing", title="Unrelated", age_minutes=90)
    titled = await seed(user, "no match in text", "none", title="All about Basalt", age_minutes=80)
    await seed(user, "basalt", "alone", title="Archived", archived=True, age_minutes=70)
    one_word = await seed(user, "basalt only here", "yes", title="One word", age_minutes=60)
    pinned = await seed(
        user, "a basalt flow", "and it cooled", title="P", pinned=True, age_minutes=50
    )
    newest = await seed(user, "hi", "basalt cools into columns", title="Newest", age_minutes=40)
    stranger = await user_factory()
    await seed(stranger.id, "basalt basalt", "columns", title="Not mine", age_minutes=1)

    assert await _search_all(client, regular_user, "basalt") == [
        newest,
        pinned,
        one_word,
        titled,
        oldest,
    ]
    # Every word, as a whole word ("columns" is not "column"), in one message; a title
    # matches on the whole query only.
    assert await _search_all(client, regular_user, "BASALT column") == [oldest]
    assert await _search_all(client, regular_user, "basalt", pinned=True) == [pinned]
    assert await _search_all(client, regular_user, "basalt", pinned=False, limit=1) == [
        newest,
        one_word,
        titled,
        oldest,
    ]
    assert len(await _search_all(client, regular_user, "basalt", archived=True)) == 1
    assert await _search_all(client, regular_user, "granite") == []


@pytest.mark.parametrize("query", ['magma AND "x* NEAR(', "MAGMA and x near", 'near* "x" (magma'])
async def test_operators_are_plain_words(
    search_plan: str, client: httpx.AsyncClient, regular_user: TestUser, seed: Seeder, query: str
) -> None:
    both = await seed(regular_user.id, "Magma and x near the vent", "ok", title="Vent")
    await seed(regular_user.id, "magma alone", "x", title="Partial")
    await seed(regular_user.id, "nothing", "here", title="Other")
    assert await _search_all(client, regular_user, query) == [both]


SQLITE_FILL = """
WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < :count)
INSERT INTO messages (id, conversation_id, role, content, status, created_at, updated_at)
SELECT :prefix || printf('%028x', i), :cid, 'user', :content || ' ' || i, 'complete',
       datetime('now', '-1 day'), datetime('now', '-1 day')
FROM n
"""


@pytest.mark.parametrize("db_backend", ["sqlite"], indirect=True)  # the FTS5 plans
async def test_a_common_word_of_one_old_conversation_is_found(
    app: FastAPI, client: httpx.AsyncClient, regular_user: TestUser, seed: Seeder
) -> None:
    """12 000 matches (over RARE_MATCHES) in the oldest conversation, none among the newest
    messages (not dense): the matching-rowids plan, on real thresholds."""
    old = await seed(regular_user.id, title="Old", age_minutes=100)
    recent = await seed(regular_user.id, title="Recent", age_minutes=1)
    newer = [await seed(regular_user.id, "obsidian", "x", title=f"n{i}") for i in range(3)]
    async with session_scope(app.state.core.sessionmaker) as session:
        for prefix, cid, content, count in (
            ("aaaa", old, "pumice is light", 12_000),
            ("bbbb", recent, "obsidian is glass", search.RARE_MATCHES),
        ):
            await session.execute(
                text(SQLITE_FILL),
                {"prefix": prefix, "cid": cid, "content": content, "count": count},
            )
    assert await _search_all(client, regular_user, "pumice", limit=50) == [old]
    # The other way round: dense among the newest messages.
    assert await _search_all(client, regular_user, "obsidian", limit=50) == [
        *reversed(newer),
        recent,
    ]


@pytest.mark.parametrize("db_backend", ["postgres"])
async def test_postgresql_searches_through_its_partial_index(
    app: FastAPI, regular_user: TestUser, seed: Seeder
) -> None:
    """The index holds finished messages only (migration 0008); a query that did not state
    that condition as constants could not use it, and read every message."""
    await seed(regular_user.id, "basalt", "columns")
    condition = search.matches("postgresql", regular_user.id, "basalt columns")
    statement = select(Conversation.id).where(Conversation.user_id == regular_user.id, condition)
    # Constants in the statement as sent (bound parameters would not do in a generic plan)...
    sent = str(statement.compile(dialect=postgresql.dialect()))
    assert "messages.status NOT IN ('pending', 'streaming')" in sent, sent
    # ...and the index takes the query (the other values inlined, for EXPLAIN).
    sql = statement.compile(dialect=postgresql.dialect(), compile_kwargs={"literal_binds": True})
    async with session_scope(app.state.core.sessionmaker) as session:
        await session.execute(text("SET LOCAL enable_seqscan = off"))
        plan = "\n".join((await session.execute(text(f"EXPLAIN {sql}"))).scalars())
    assert "messages_fts_content_gin" in plan, plan
