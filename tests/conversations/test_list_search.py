"""The conversation list: order, keyset pages with signed cursors, filters, full-text search."""

from __future__ import annotations

import time

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import text

from ollama_web.core.db import session_scope
from tests.conversations.conftest import Seeder
from tests.fixtures.auth import TestUser, UserFactory

# 150 000 messages in one statement; number 150 000 holds the word searched for.
SQLITE_FILL = """
WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 150000)
INSERT INTO messages (id, conversation_id, role, content, status, created_at, updated_at)
SELECT printf('%032x', i), :cid, 'user',
       CASE WHEN i = 150000 THEN 'the quetzalcoatlus flew over'
            ELSE 'common words number ' || i END,
       'complete', datetime('now'), datetime('now')
FROM n
"""
POSTGRES_FILL = """
INSERT INTO messages (id, conversation_id, role, content, status, created_at, updated_at)
SELECT lpad(to_hex(i), 32, '0'), :cid, 'user',
       CASE WHEN i = 150000 THEN 'the quetzalcoatlus flew over'
            ELSE 'common words number ' || i END,
       'complete', now(), now()
FROM generate_series(1, 150000) AS i
"""


async def _list(client: httpx.AsyncClient, user: TestUser, **params: object) -> httpx.Response:
    return await client.get("/api/conversations", params=params, headers=user.headers)


async def _found(client: httpx.AsyncClient, user: TestUser, q: str) -> set[str]:
    """The titles of the conversations a search for `q` lists."""
    response = await _list(client, user, q=q)
    assert response.status_code == 200, response.text
    return {item["title"] for item in response.json()["items"]}


async def test_newest_activity_first_in_keyset_pages(
    client: httpx.AsyncClient, regular_user: TestUser, seed: Seeder
) -> None:
    ids = [await seed(regular_user.id, title=f"c{i}", age_minutes=10 - i) for i in range(5)]
    seen: list[str] = []
    cursor = None
    while True:
        params: dict[str, object] = {"limit": 2}
        if cursor:
            params["cursor"] = cursor
        page = (await _list(client, regular_user, **params)).json()
        seen += [item["title"] for item in page["items"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == ["c4", "c3", "c2", "c1", "c0"]
    # Activity moves a conversation to the top.
    await client.patch(
        f"/api/conversations/{ids[0]}", json={"pinned": True}, headers=regular_user.headers
    )
    first = (await _list(client, regular_user, limit=1)).json()["items"][0]
    assert first["title"] == "c0"


async def test_a_tampered_or_foreign_cursor_is_400(
    client: httpx.AsyncClient, regular_user: TestUser, seed: Seeder
) -> None:
    for i in range(3):
        await seed(regular_user.id, title=f"c{i}", age_minutes=i)
    cursor = (await _list(client, regular_user, limit=1)).json()["next_cursor"]
    payload, _, signature = cursor.partition(".")
    tampered = payload[:-2] + ("AA" if payload[-2:] != "AA" else "BB") + "." + signature
    for bad in (tampered, "garbage", cursor + "x", cursor + "A" * 600):
        response = await _list(client, regular_user, limit=1, cursor=bad)
        assert response.status_code == 400
        assert response.json()["error"] == "INVALID_CURSOR"
    # A cursor from one filter does not page another.
    response = await _list(client, regular_user, limit=1, cursor=cursor, archived=True)
    assert response.status_code == 400


async def test_filters_archived_hidden_by_default(
    client: httpx.AsyncClient, regular_user: TestUser, seed: Seeder
) -> None:
    await seed(regular_user.id, title="plain")
    await seed(regular_user.id, title="pinned", pinned=True)
    await seed(regular_user.id, title="archived", archived=True)

    async def titles(**params: object) -> set[str]:
        return {i["title"] for i in (await _list(client, regular_user, **params)).json()["items"]}

    assert await titles() == {"plain", "pinned"}
    assert await titles(archived=True) == {"archived"}
    assert await titles(pinned=True) == {"pinned"}
    assert await titles(pinned=False) == {"plain"}


async def test_search_finds_words_in_messages_and_titles(
    client: httpx.AsyncClient, regular_user: TestUser, seed: Seeder
) -> None:
    await seed(regular_user.id, "How do volcanoes erupt?", "Magma rises.", title="Geology")
    await seed(regular_user.id, "Recipe for crêpes", "Flour, eggs, milk.", title="Cooking")
    await seed(regular_user.id, "Nothing here", "Indeed.", title="Magma chamber notes")

    assert await _found(client, regular_user, "magma") == {"Geology", "Magma chamber notes"}
    assert await _found(client, regular_user, "VOLCANOES erupt") == {"Geology"}
    assert await _found(client, regular_user, "volcanoes milk") == set()
    assert await _found(client, regular_user, "eggs") == {"Cooking"}
    assert await _found(client, regular_user, "cook") == {"Cooking"}


async def test_search_ignores_accents_and_case_on_both_databases(
    client: httpx.AsyncClient, regular_user: TestUser, seed: Seeder
) -> None:
    """SQLite's FTS5 folds diacritics; PostgreSQL did not ("cafe" found no "café" there)."""
    await seed(regular_user.id, "Un café crème, s'il vous plaît", "Voilà.", title="Paris")
    await seed(regular_user.id, "Ein Straßencafé in München", "Gut.", title="Bayern")
    await seed(regular_user.id, "Plain coffee", "ok", title="Other")

    for query in ("cafe", "CAFÉ", "café", "Café"):
        assert await _found(client, regular_user, query) == {"Paris"}, query
    assert await _found(client, regular_user, "creme plait") == {"Paris"}
    assert await _found(client, regular_user, "voila") == {"Paris"}
    assert await _found(client, regular_user, "munchen") == {"Bayern"}
    assert await _found(client, regular_user, "MÜNCHEN") == {"Bayern"}


async def test_titles_match_whatever_their_case_and_accents_on_both_databases(
    client: httpx.AsyncClient, regular_user: TestUser, seed: Seeder
) -> None:
    """A title was matched by LIKE: SQLite folds ASCII letters only ("ÉCOLE" missed
    "École"), and neither database folded accents ("ecole" missed it everywhere)."""
    await seed(regular_user.id, "one", "two", title="École d'été")
    await seed(regular_user.id, "one", "two", title="ÜBER ALLES")
    await seed(regular_user.id, "one", "two", title="50% off_sale")
    await seed(regular_user.id, "one", "two", title="Other")
    for query in ("ecole", "ÉCOLE", "d'ete", "E\u0301cole"):
        assert await _found(client, regular_user, query) == {"École d'été"}, query
    for query in ("über", "uber alles", "Über"):
        assert await _found(client, regular_user, query) == {"ÜBER ALLES"}, query
    assert await _found(client, regular_user, "50% off_") == {"50% off_sale"}
    assert await _found(client, regular_user, "5_%") == set()  # wildcards are plain text


@pytest.mark.parametrize(
    "word",
    [
        "नमस्ते",  # Devanagari: vowel signs and virama are combining marks
        "สวัสดีครับ",  # Thai
        "مُحَمَّد",  # Arabic with its vowel points
        "שָׁלוֹם",  # Hebrew with niqqud
        "e\u0301cole",  # an accent typed as its own character (NFD)
    ],
)
async def test_search_finds_a_word_written_with_combining_marks(
    client: httpx.AsyncClient, regular_user: TestUser, seed: Seeder, word: str
) -> None:
    """The query was cut into words at each combining mark, and the pieces never matched
    the whole word the databases index (PostgreSQL found none of these)."""
    await seed(regular_user.id, f"{word} and more", "ok", title="Found")
    await seed(regular_user.id, "something else", "ok", title="Other")
    response = await _list(client, regular_user, q=word)
    assert response.status_code == 200, response.text
    assert [item["title"] for item in response.json()["items"]] == ["Found"]


@pytest.mark.parametrize(
    ("query", "found"),
    [
        ("東京", {"Tokyo"}),  # Japanese: a word inside a run of letters without spaces
        ("住んで", {"Tokyo"}),
        ("搜索", {"Chinese"}),  # Chinese
        ("中文 测试", {"Chinese"}),
        ("서울", {"Korean"}),  # Korean: a word with its particle attached
        ("ครับ", {"Thai"}),  # Thai
        ("🍕", {"Tokyo"}),  # emoji, which neither tokenizer indexes
        ("👨‍👩‍👧", {"Family"}),
        ("🍕 pizza", set()),  # every term must occur: no message has both
        ("🍕 東京", {"Tokyo"}),
        ("family 👨‍👩‍👧", {"Family"}),
        ("大阪", set()),
        ("🍣", set()),
    ],
)
async def test_search_finds_words_of_unspaced_scripts_and_emoji_inside_message_text(
    client: httpx.AsyncClient, regular_user: TestUser, seed: Seeder, query: str, found: set[str]
) -> None:
    """Both databases index a run of Chinese, Japanese, Thai or Korean letters as one word
    and drop emoji: only the whole run was found, never a word inside it, nor an emoji."""
    await seed(regular_user.id, "東京都に住んでいます 🍕", "はい", title="Tokyo")
    await seed(regular_user.id, "中文搜索测试", "好的", title="Chinese")
    await seed(regular_user.id, "서울에서 만나요", "네", title="Korean")
    await seed(regular_user.id, "สวัสดีครับ", "ค่ะ", title="Thai")
    await seed(regular_user.id, "My family 👨‍👩‍👧 photo", "Nice.", title="Family")
    await seed(regular_user.id, "a pizza without emoji", "ok", title="Plain")
    assert await _found(client, regular_user, query) == found


async def test_a_substring_search_finds_only_the_callers_conversations(
    client: httpx.AsyncClient, regular_user: TestUser, user_factory: UserFactory, seed: Seeder
) -> None:
    stranger = await user_factory()
    await seed(stranger.id, "東京の秘密", "秘密です", title="Theirs")
    await seed(regular_user.id, "東京タワー", "高い", title="Mine")
    assert await _found(client, regular_user, "東京") == {"Mine"}
    assert await _found(client, regular_user, "秘密") == set()


@pytest.mark.parametrize(
    "query",
    [
        '"',
        "magma OR",
        "NEAR(magma",
        "magma*",
        "-magma",
        "title:magma",
        "'; DROP TABLE messages; --",
        "a & | ! :* <->",
        "%",
        "_",
        "\\",
        "()",
        "^",
    ],
)
async def test_search_syntax_never_reaches_the_database(
    client: httpx.AsyncClient, regular_user: TestUser, seed: Seeder, query: str
) -> None:
    await seed(regular_user.id, "about magma", "yes", title="Geology")
    await seed(regular_user.id, "50% off", "ok", title="Sale_1")
    response = await _list(client, regular_user, q=query)
    assert response.status_code == 200, response.text
    titles = {item["title"] for item in response.json()["items"]}
    if query == "%":  # a literal percent sign, not a wildcard: no title has one
        assert titles == set()
    if query == "_":  # a literal underscore
        assert titles == {"Sale_1"}


async def test_search_finds_a_word_from_message_150000(
    app: FastAPI, client: httpx.AsyncClient, regular_user: TestUser, seed: Seeder, db_backend: str
) -> None:
    await seed(regular_user.id, "unrelated", "chat", title="Other")
    haystack = await seed(regular_user.id, title="Haystack")
    statement = SQLITE_FILL if db_backend == "sqlite" else POSTGRES_FILL
    async with session_scope(app.state.core.sessionmaker) as session:
        await session.execute(text(statement), {"cid": haystack})
    started = time.perf_counter()
    response = await _list(client, regular_user, q="quetzalcoatlus")
    elapsed = time.perf_counter() - started
    assert response.status_code == 200
    assert [item["title"] for item in response.json()["items"]] == ["Haystack"]
    assert elapsed < 1.0
    assert (await _list(client, regular_user, q="number 149999")).json()["items"][0]["id"] == (
        haystack
    )
    assert (await _list(client, regular_user, q="number 150000")).json()["items"] == []


async def test_an_answer_is_indexed_when_it_ends_not_at_each_checkpoint(
    app: FastAPI, client: httpx.AsyncClient, regular_user: TestUser, seed: Seeder
) -> None:
    """A streaming answer's checkpoints leave the full-text index alone (each would be an
    FTS5 delete and insert, or a tsvector, of the whole text); its final text is indexed
    when it ends, also when the sweep marks it interrupted (a change of status only). The
    same on both databases (PostgreSQL indexed every checkpoint before migration 0008)."""
    conversation_id = await seed(regular_user.id, "Tell me of zebras", "")
    writes = app.state.generations.writes
    async with session_scope(app.state.core.sessionmaker) as session:
        answers = await session.execute(
            text("SELECT id FROM messages WHERE conversation_id = :c AND role = 'assistant'"),
            {"c": conversation_id},
        )
        answer_id = answers.scalar_one()

    async def found(word: str) -> bool:
        response = await _list(client, regular_user, q=word)
        assert response.status_code == 200, response.text
        return [item["id"] for item in response.json()["items"]] == [conversation_id]

    await writes.update_message(answer_id, {"content": "the okapi", "status": "streaming"})
    assert await found("zebras")
    assert not await found("okapi")
    await writes.update_message(answer_id, {"content": "the okapi grazes", "status": "complete"})
    assert await found("grazes")

    await writes.update_message(answer_id, {"content": "a quagga", "status": "streaming"})
    await writes.update_message(answer_id, {"status": "interrupted"})
    assert await found("quagga")
    assert not await found("okapi")


async def test_a_message_of_a_megabyte_of_distinct_words_is_stored_and_found(
    client: httpx.AsyncClient, regular_user: TestUser
) -> None:
    """On PostgreSQL a tsvector holds at most 1 MiB: the index takes a message's first
    100 000 characters (migration 0005), so such a message is stored, and found by them."""
    # 999 999 characters (MAX_IMPORTED_ANSWER_CHARS), all distinct: a tsvector of ~1.6 MB
    words = " ".join(f"w{index:06d}" for index in range(125_000))
    at = "2026-01-02T03:04:05+00:00"
    document = {
        "exported_at": at,
        "conversation": {
            "id": "c", "title": "Long", "model": "llama3.2:latest",
            "created_at": at, "updated_at": at,
        },
        "messages": [
            {"id": "q", "role": "user", "content": "Say every word.", "created_at": at},
            {"id": "a", "parent_id": "q", "role": "assistant", "content": words,
             "created_at": at},
        ],
    }  # fmt: skip
    imported = await client.post(
        "/api/conversations/import", json=document, headers=regular_user.headers
    )
    assert imported.status_code == 201, imported.text[:300]
    found = await _list(client, regular_user, q="w000007")
    assert [c["id"] for c in found.json()["items"]] == [imported.json()["id"]]
