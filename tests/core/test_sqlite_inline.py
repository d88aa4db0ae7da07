"""The hot statements' own SQLite connection on the event loop's thread: same values as
SQLAlchemy's path, all or nothing, never a wait on the loop, and its WAL checkpointed."""

from __future__ import annotations

import asyncio
import shutil
import sqlite3
import time
from collections.abc import AsyncIterator, Callable
from contextlib import suppress
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import bindparam, event, insert, select, text, update
from sqlalchemy.exc import DatabaseError, IntegrityError, OperationalError, StatementError
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, create_async_engine

from ollama_web.conversations.writes import (
    CONVERSATIONS,
    INLINE_CHARS,
    INLINE_ROWS,
    MESSAGES,
    NewConversation,
    NewMessage,
    Writes,
)
from ollama_web.core import sqlite_inline
from ollama_web.core.config import Settings
from ollama_web.core.db import SlowQueryRecorder, create_engine
from ollama_web.core.sqlite_checkpoint import Checkpointer
from ollama_web.core.sqlite_inline import (
    InlineSQLite,
    InlineUnavailable,
    first_row,
    open_inline,
)
from ollama_web.db.base import utcnow
from ollama_web.keys.service import _KEY_LOOKUP

INSERT_CONVERSATION = insert(CONVERSATIONS)
INSERT_MESSAGES = insert(MESSAGES)
UPDATE_ANSWER = (
    update(MESSAGES)
    .where(MESSAGES.c.id == bindparam("_id"))
    .values(content=bindparam("content"), updated_at=bindparam("updated_at"))
)


@dataclass
class Database:
    path: Path
    engine: AsyncEngine
    inline: InlineSQLite
    writes: Writes
    statements: list[str]  # what went through SQLAlchemy's engine


@pytest.fixture
async def database(
    settings_factory: Callable[..., Settings], sqlite_template: Path, tmp_path: Path
) -> AsyncIterator[Database]:
    settings = settings_factory()
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    path = settings.data_dir / "ollama_web.db"
    shutil.copyfile(sqlite_template, path)
    engine, slow_queries = create_engine(settings)
    inline = open_inline(engine, slow_queries)
    assert inline is not None
    statements: list[str] = []
    event.listen(
        engine.sync_engine, "before_cursor_execute", lambda *args: statements.append(args[2])
    )
    await _add_user(engine)
    statements.clear()
    try:
        yield Database(path, engine, inline, Writes(engine, inline), statements)
    finally:
        inline.close()
        await engine.dispose()


async def _add_user(engine: AsyncEngine) -> None:
    async with engine.begin() as connection:
        await connection.execute(
            text(
                "INSERT INTO users (id, username, username_key, password_hash, role, is_active,"
                " created_at, updated_at) VALUES ('u1', 'Zoë', 'zoë', 'x', 'user', 1,"
                " '2026-01-01 00:00:00.000000', '2026-01-01 00:00:00.000000')"
            )
        )


def _engine_writes(database: Database) -> list[str]:
    return [s for s in database.statements if not s.startswith("SELECT")]


def _turn(
    content: str = "hello <script>alert(1)</script> — ✓ 日本", now: datetime | None = None
) -> list[tuple[Any, Any]]:
    now = now or utcnow()
    conversation = NewConversation(
        "c" * 32, "u1", "A title", "llama3.2", now, now, options={"temperature": 0.2, "k": [1]}
    )
    question = NewMessage("q" * 32, conversation.id, None, "user", content, "complete", now, now)
    question.images = ["aGVsbG8="]
    question.completed_at = now
    answer = NewMessage(
        "a" * 32, conversation.id, question.id, "assistant", "", "pending", now, now
    )
    return [
        (INSERT_CONVERSATION, [conversation.row()]),
        (INSERT_MESSAGES, [question.row(), answer.row()]),
    ]


async def _rows(engine: AsyncEngine, table: Any) -> list[tuple[Any, ...]]:
    async with engine.connect() as connection:
        result = await connection.execute(select(table).order_by(table.c.id))
        return [tuple(row) for row in result]


async def test_inline_writes_store_what_sqlalchemy_stores(
    database: Database, settings_factory: Callable[..., Settings], sqlite_template: Path
) -> None:
    """The same turn written inline and through SQLAlchemy reads back identically: times
    (timezone-aware), JSON, booleans, NULLs and user text verbatim."""
    now = utcnow()
    await database.writes.run(_turn(now=now))
    assert database.statements == []  # nothing went through the engine

    other = settings_factory(data_dir=database.path.parent / "other")
    other.data_dir.mkdir()
    shutil.copyfile(sqlite_template, other.data_dir / "ollama_web.db")
    engine, _ = create_engine(other)
    try:
        await _add_user(engine)
        await Writes(engine).run(_turn(now=now))
        for table in (CONVERSATIONS, MESSAGES):
            assert await _rows(database.engine, table) == await _rows(engine, table)
    finally:
        await engine.dispose()
    theirs = other.data_dir / "ollama_web.db"
    for query in ("SELECT * FROM conversations", "SELECT * FROM messages ORDER BY id"):
        with sqlite3.connect(database.path) as one, sqlite3.connect(theirs) as another:
            assert one.execute(query).fetchall() == another.execute(query).fetchall()
    conversation = (await _rows(database.engine, CONVERSATIONS))[0]
    assert conversation[CONVERSATIONS.c.keys().index("options")] == {"temperature": 0.2, "k": [1]}
    assert conversation[CONVERSATIONS.c.keys().index("created_at")].tzinfo is not None


async def test_an_inline_lookup_converts_its_columns_as_sqlalchemy_does(
    database: Database,
) -> None:
    async with database.engine.begin() as connection:
        await connection.execute(
            text(
                "INSERT INTO api_keys (id, user_id, name, prefix, key_hash, created_at,"
                " expires_at) VALUES ('k1', 'u1', 'ci', 'owk_abc', 'h1',"
                " '2026-01-01 00:00:00.000000', '2027-01-01 00:00:00.000000')"
            )
        )
        expected = (await connection.execute(_KEY_LOOKUP, {"key_hash": "h1"})).first()
    assert expected is not None
    found = database.inline.first(_KEY_LOOKUP, {"key_hash": "h1"})
    assert found == tuple(expected)
    assert found[2] is not None
    assert found[2].utcoffset() == timedelta(0)
    assert found[-1] is True
    assert database.inline.first(_KEY_LOOKUP, {"key_hash": "nope"}) is None
    raw = database.inline.first(text("SELECT name FROM api_keys WHERE id = :id"), {"id": "k1"})
    assert raw == ("ci",)


_CONVERSATIONS_OF = select(CONVERSATIONS.c.id, CONVERSATIONS.c.options).where(
    CONVERSATIONS.c.user_id == bindparam("user_id")
)
_MESSAGES_OF = (
    select(MESSAGES.c.id, MESSAGES.c.content, MESSAGES.c.images, MESSAGES.c.created_at)
    .where(MESSAGES.c.conversation_id == bindparam("conversation_id"))
    .order_by(MESSAGES.c.id)
)


def _reads() -> list[tuple[Any, dict[str, Any]]]:
    return [(_CONVERSATIONS_OF, {"user_id": "u1"}), (_MESSAGES_OF, {"conversation_id": "c" * 32})]


async def test_an_inline_read_converts_as_sqlalchemy_does_from_one_snapshot(
    database: Database,
) -> None:
    content = "hello <script>alert(1)</script> — ✓ 日本"
    await database.writes.run(_turn(content))
    async with database.engine.connect() as connection:
        expected = [
            [tuple(row) for row in await connection.execute(statement, values)]
            for statement, values in _reads()
        ]
    assert [len(rows) for rows in expected] == [1, 2]
    database.statements.clear()
    assert database.inline.read(_reads(), max_rows=3, max_chars=1000) == expected
    assert database.statements == []

    # Another connection commits a message between the two queries (the trace runs after
    # each): the second query does not see it, as both read one snapshot.
    other = sqlite3.connect(database.path, isolation_level=None)
    late = (
        "INSERT INTO messages (id, conversation_id, role, content, status, created_at,"
        " updated_at) VALUES ('z', :c, 'user', 'late', 'complete',"
        " '2026-01-01 00:00:00.000000', '2026-01-01 00:00:00.000000')"
    )

    def commit_between(sql: str) -> None:
        if sql.startswith("SELECT conversations"):
            other.execute(late, {"c": "c" * 32})

    database.inline.trace(commit_between)
    try:
        assert database.inline.read(_reads(), max_rows=10, max_chars=1000) == expected
    finally:
        database.inline.trace(None)
        other.close()
    assert len(database.inline.read(_reads(), max_rows=10, max_chars=1000)[1]) == 3


async def test_an_inline_read_stops_at_its_bounds_and_leaves_no_transaction(
    database: Database,
) -> None:
    content = "x" * 100
    await database.writes.run(_turn(content))
    with pytest.raises(InlineUnavailable):
        database.inline.read(_reads(), max_rows=2, max_chars=10_000)  # 3 rows
    with pytest.raises(InlineUnavailable):
        database.inline.read(_reads(), max_rows=3, max_chars=100)  # 100 + ids and dates
    # Its read lock is gone: a checkpoint can copy every frame, and writes go on inline.
    holder = sqlite3.connect(database.path, isolation_level=None)
    try:
        busy, frames, copied = holder.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
        assert (busy, copied) == (0, frames)
    finally:
        holder.close()
    await database.writes.run(
        [(UPDATE_ANSWER, {"_id": "a" * 32, "content": "A", "updated_at": utcnow()})]
    )
    assert _engine_writes(database) == []
    assert database.inline.read(_reads(), max_rows=3, max_chars=10_000)[1][0][1] == "A"


async def test_an_inline_transaction_is_all_or_nothing(database: Database) -> None:
    turn = _turn()
    await database.writes.run(turn[:1])
    with pytest.raises(IntegrityError):  # SQLAlchemy's own class: callers catch it as usual
        await database.writes.run([(INSERT_MESSAGES, [_turn()[1][1][0]]), turn[0]])
    assert await _rows(database.engine, MESSAGES) == []
    await database.writes.run(turn[1:])  # the connection is not left in a transaction
    assert len(await _rows(database.engine, MESSAGES)) == 2
    assert _engine_writes(database) == []


async def test_what_needs_sqlalchemy_goes_through_the_engine(database: Database) -> None:
    """A missing value is reported by SQLAlchemy as usual; a statement that needs a
    Python-side default (`updated_at`'s onupdate) gets it; a large batch, or much text,
    goes to the driver thread."""
    await database.writes.run(_turn())
    with pytest.raises(StatementError, match="title"):
        await database.writes.run([(text("UPDATE conversations SET title = :title"), {"x": 1})])
    before = (await _rows(database.engine, CONVERSATIONS))[0]
    rename = update(CONVERSATIONS).where(CONVERSATIONS.c.id == "c" * 32).values(title="New")
    with pytest.raises(InlineUnavailable):
        database.inline.write([(rename, None)])
    database.statements.clear()
    await database.writes.run([(rename, None)])
    assert [s.split(" SET")[0] for s in database.statements] == ["UPDATE conversations"]
    after = (await _rows(database.engine, CONVERSATIONS))[0]
    updated_at = CONVERSATIONS.c.keys().index("updated_at")
    assert after[updated_at] > before[updated_at]

    database.statements.clear()
    many = [dict(_turn()[1][1][0], id=f"{i:032d}") for i in range(INLINE_ROWS + 1)]
    await database.writes.run([(INSERT_MESSAGES, many)])
    assert len(database.statements) == 1

    database.statements.clear()  # a turn with a large image: the loop is not held for it
    image = "A" * (INLINE_CHARS // 2)
    await database.writes.run([(INSERT_MESSAGES, [dict(many[0], id="i" * 32, images=[image])])])
    assert _engine_writes(database) == []
    await database.writes.run(
        [(INSERT_MESSAGES, [dict(many[0], id="j" * 32, images=[image, image + "A"])])]
    )
    assert len(_engine_writes(database)) == 1


async def test_a_locked_database_is_waited_for_on_the_driver_thread_not_the_loop(
    database: Database,
) -> None:
    """Another process holds the write lock: the inline write gives up at once, and the
    transaction goes through the engine, waiting on the driver thread while the loop runs."""
    holder = sqlite3.connect(database.path, isolation_level=None)
    try:
        holder.execute("BEGIN IMMEDIATE")
        started = time.monotonic()
        with pytest.raises(InlineUnavailable):
            database.inline.write(_turn())
        assert time.monotonic() - started < 1.0  # not the 5 s busy timeout
        # Reads are not blocked by a writer (WAL): a lookup still answers inline.
        assert database.inline.first(_KEY_LOOKUP, {"key_hash": "h"}) is None

        asyncio.get_running_loop().call_later(0.3, holder.execute, "COMMIT")
        ticks = 0
        writing = asyncio.ensure_future(database.writes.run(_turn()))
        while not writing.done():
            await asyncio.sleep(0.01)
            ticks += 1
        await writing
        assert ticks >= 5  # the loop ran on during the 0.3 s wait (a held loop: 1)
        assert len(await _rows(database.engine, MESSAGES)) == 2
    finally:
        holder.close()


async def test_inline_statements_are_timed_and_traced(
    settings_factory: Callable[..., Settings], sqlite_template: Path
) -> None:
    settings = settings_factory()
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(sqlite_template, settings.data_dir / "ollama_web.db")
    engine, _ = create_engine(settings)
    recorder = SlowQueryRecorder(threshold_ms=0)
    inline = open_inline(engine, recorder)
    assert inline is not None
    seen: list[str] = []
    inline.trace(seen.append)
    try:
        inline.first(_KEY_LOOKUP, {"key_hash": "h"})
        inline.write([(text("DELETE FROM api_keys WHERE id = :id"), {"id": "x"})])
        assert recorder.count == 2
        assert [statement.split()[0] for statement in seen] == ["SELECT", "DELETE"]
    finally:
        inline.close()
        await engine.dispose()


async def test_only_a_sqlite_file_gets_an_inline_connection(
    settings_factory: Callable[..., Settings], tmp_path: Path
) -> None:
    recorder = SlowQueryRecorder(threshold_ms=100)
    engine, _ = create_engine(settings_factory(database_url="postgresql+asyncpg://u:p@h:9/d"))
    assert open_inline(engine, recorder) is None
    await engine.dispose()
    engine = create_async_engine("sqlite+aiosqlite:///:memory:")
    assert open_inline(engine, recorder) is None
    await engine.dispose()
    uri = f"sqlite+aiosqlite:///file:{tmp_path / 'db.sqlite'}?mode=rwc&uri=true"
    engine, _ = create_engine(settings_factory(database_url=uri))
    assert open_inline(engine, recorder) is None  # the URI's parameters: SQLAlchemy's own
    await engine.dispose()
    broken = tmp_path / "broken.db"
    broken.write_bytes(b"this is not a database" * 100)
    engine, _ = create_engine(settings_factory(database_url=f"sqlite+aiosqlite:///{broken}"))
    inline = open_inline(engine, recorder)
    assert inline is not None  # opened at first use, after the startup migration
    with pytest.raises(DatabaseError, match="not a database"):
        inline.first(_KEY_LOOKUP, {"key_hash": "h"})
    await engine.dispose()


async def test_the_wal_is_left_to_the_checkpointer(database: Database) -> None:
    """No automatic checkpoint (one inside a commit would run its fsyncs on the loop): the
    WAL grows past SQLite's 1000-page mark until `Checkpointer` copies it and empties it."""
    await database.writes.run(_turn()[:1])
    size = database.path.stat().st_size
    question = _turn()[1][1][0]
    for batch in range(25):  # 1500 pages of 4 KiB, and their full-text index
        rows = [dict(question, id=f"{batch:04d}{i:028d}", content="p" * 4000) for i in range(60)]
        await database.writes.run([(INSERT_MESSAGES, rows)])
    assert _engine_writes(database) == []
    assert database.path.stat().st_size == size  # all of it still in the WAL
    assert _wal_bytes(database) > 1500 * 4096
    await Checkpointer(database.engine).checkpoint()
    assert database.path.stat().st_size > size + 1500 * 4096
    # Past 1000 frames the WAL is emptied, not left at its largest on the disk: its header
    # and the one page the checkpointer rewrote to start it over.
    assert _wal_bytes(database) == 32 + 24 + 4096


def _wal_salts(database: Database) -> bytes:
    """The WAL header's salts: new ones each time the WAL starts over from its beginning."""
    with open(f"{database.path}-wal", "rb") as wal:
        return wal.read(32)[16:24]


def _wal_bytes(database: Database) -> int:
    return Path(f"{database.path}-wal").stat().st_size


async def test_the_wal_starts_over_in_the_checkpointer_not_in_an_inline_commit(
    database: Database,
) -> None:
    """The first write to an emptied WAL writes its header and fsyncs it. After a checkpoint
    that copied everything, the checkpointer makes that write (on the driver thread): the
    next inline commit, on the loop, appends to the WAL and syncs nothing."""
    await database.writes.run(_turn())
    for round_ in range(3):
        await Checkpointer(database.engine).checkpoint()
        salts = _wal_salts(database)
        answer = {"_id": "a" * 32, "content": f"round {round_}", "updated_at": utcnow()}
        database.inline.write([(UPDATE_ANSWER, answer)])
        assert _wal_salts(database) == salts  # appended, not started over


async def test_writers_are_not_held_up_while_a_large_backlog_is_copied(
    database: Database,
) -> None:
    """A TRUNCATE blocks writers while it copies. When the passive checkpoint could not copy
    most of the WAL (a reader still needed it, or commits outran it), it waits for the next
    time, when the passive one has caught up."""
    await database.writes.run(_turn())
    reader = sqlite3.connect(database.path, isolation_level=None)
    try:
        reader.execute("BEGIN")
        reader.execute("SELECT count(*) FROM messages").fetchone()  # an old snapshot, held
        for index in range(300):
            answer = {"_id": "a" * 32, "content": f"{index:06d}" * 700, "updated_at": utcnow()}
            database.inline.write([(UPDATE_ANSWER, answer)])
        await Checkpointer(database.engine, restart_frames=100).checkpoint()
        assert not any("TRUNCATE" in statement for statement in database.statements)
        assert _wal_bytes(database) > 300 * 4096
    finally:
        reader.close()
    await Checkpointer(database.engine, restart_frames=100).checkpoint()
    assert "PRAGMA wal_checkpoint(TRUNCATE)" in database.statements
    assert _wal_bytes(database) == 32 + 24 + 4096


async def test_a_steady_stream_of_commits_does_not_grow_the_wal_without_end(
    database: Database,
) -> None:
    """A passive checkpoint never catches up with commits that keep coming, so the WAL
    never starts over and grows without end (89 MB after 90 s of 50 streams, for a 9 MB
    database; here, hundreds of MB). Past `restart_frames` a TRUNCATE checkpoint empties
    it, between two commits."""
    await database.writes.run(_turn())
    checkpointer = Checkpointer(database.engine, interval=0.01, restart_frames=100)
    checkpointer.start()
    commits = emptied = written = 0
    try:
        deadline = time.monotonic() + 1.5
        while time.monotonic() < deadline:
            answer = {"_id": "a" * 32, "content": f"{commits:06d}" * 700, "updated_at": utcnow()}
            emptied += _wal_bytes(database) < written  # since the last commit
            with suppress(InlineUnavailable):  # the TRUNCATE holds the write lock
                database.inline.write([(UPDATE_ANSWER, answer)])
                commits += 1
            written = _wal_bytes(database)
            await asyncio.sleep(0)
    finally:
        await checkpointer.stop()
    assert commits > 1000
    assert emptied >= 2  # 8 to 12 times here; never without the TRUNCATE


@pytest.fixture
def checkpoints(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """When each checkpoint would have run (Checkpointer.checkpoint only counted)."""
    times: list[float] = []

    async def counted(self: Checkpointer) -> None:
        times.append(time.monotonic())

    monkeypatch.setattr(Checkpointer, "checkpoint", counted)
    return times


async def test_the_checkpointer_runs_after_inline_commits_only(
    database: Database, checkpoints: list[float]
) -> None:
    checkpointer = Checkpointer(database.engine, interval=0.02)
    checkpointer.start()
    try:
        await asyncio.sleep(0.1)
        assert checkpoints == []  # nothing committed
        await database.writes.run(_turn())
        await asyncio.sleep(0.1)
        assert len(checkpoints) == 1
    finally:
        await checkpointer.stop()
    assert sqlite_inline._Commits.count > 0


async def test_a_lookup_the_database_refuses_goes_through_the_session(database: Database) -> None:
    """A process holding the database in exclusive locking mode blocks even readers (and
    the opening of the inline connection): the lookup is answered through the session,
    which waits on the driver thread."""
    await database.engine.dispose()  # no other connection may have the database open
    holder = sqlite3.connect(database.path, isolation_level=None)
    try:
        holder.execute("PRAGMA locking_mode=EXCLUSIVE")
        holder.execute("BEGIN EXCLUSIVE")
        holder.execute("DELETE FROM api_keys")
        holder.execute("COMMIT")  # the exclusive lock stays until the connection closes
        with pytest.raises(InlineUnavailable):
            database.inline.first(_KEY_LOOKUP, {"key_hash": "h"})
        with pytest.raises(InlineUnavailable):
            database.inline.read(_reads(), max_rows=10, max_chars=1000)
        asyncio.get_running_loop().call_later(0.2, holder.close)
        async with AsyncSession(database.engine) as session:
            found = await first_row(session, database.inline, _KEY_LOOKUP, {"key_hash": "h"})
        assert found is None
        assert any("FROM api_keys" in statement for statement in database.statements)
    finally:
        holder.close()


async def test_database_errors_come_out_as_sqlalchemys(database: Database) -> None:
    with pytest.raises(OperationalError, match="no such table"):
        database.inline.first(text("SELECT x FROM missing WHERE x = :x"), {"x": 1})
    with pytest.raises(OperationalError, match="no such table"):
        database.inline.write([(text("DELETE FROM missing WHERE x = :x"), {"x": 1})])
    await database.writes.run(_turn())  # and the connection goes on working
    assert len(await _rows(database.engine, MESSAGES)) == 2


async def test_a_value_that_cannot_be_converted_is_reported_by_sqlalchemy(
    database: Database,
) -> None:
    """A converter's own error (a JSON value that is not JSON) makes the inline path step
    aside, and SQLAlchemy reports it as it always does, as a StatementError (callers catch
    SQLAlchemyError). Nothing was written."""
    await database.writes.run(_turn())
    unstorable = update(CONVERSATIONS).values(options={"bad": object()})
    with pytest.raises(InlineUnavailable):
        database.inline.write([(unstorable, None)])
    with pytest.raises(InlineUnavailable):
        database.inline.first(select(CONVERSATIONS.c.id).where(CONVERSATIONS.c.options == {1}), {})
    database.statements.clear()
    with pytest.raises(StatementError, match="not JSON serializable"):
        await database.writes.run([(unstorable, None)])
    options = CONVERSATIONS.c.keys().index("options")
    assert (await _rows(database.engine, CONVERSATIONS))[0][options] == {
        "temperature": 0.2,
        "k": [1],
    }


async def test_a_statement_expanded_when_run_goes_through_the_session(
    database: Database,
) -> None:
    """`IN` lists are expanded by SQLAlchemy when the statement runs: not inline."""
    await database.writes.run(_turn())
    ids = select(MESSAGES.c.id).where(MESSAGES.c.id.in_(["q" * 32, "x" * 32]))
    with pytest.raises(InlineUnavailable):
        database.inline.first(ids, {})
    async with AsyncSession(database.engine) as session:
        assert await first_row(session, database.inline, ids, {}) == ("q" * 32,)


async def test_a_closed_inline_connection_stays_closed(database: Database) -> None:
    """After shutdown closed it, a late statement goes through SQLAlchemy's path instead of
    opening the database file again."""
    database.inline.first(_KEY_LOOKUP, {"key_hash": "h"})
    database.inline.close()
    with pytest.raises(InlineUnavailable):
        database.inline.first(_KEY_LOOKUP, {"key_hash": "h"})
    with pytest.raises(InlineUnavailable):
        database.inline.write(_turn())
    await database.writes.run(_turn())
    assert len(await _rows(database.engine, MESSAGES)) == 2


async def test_a_stopping_checkpointer_starts_no_checkpoint(
    database: Database, checkpoints: list[float]
) -> None:
    checkpointer = Checkpointer(database.engine, interval=60)
    checkpointer.start()
    await asyncio.sleep(0)
    await database.writes.run(_turn())  # committed, the next checkpoint a minute away
    await checkpointer.stop()
    assert checkpoints == []


async def test_a_failed_engine_statement_is_timed_and_leaves_no_start_behind(
    database: Database,
) -> None:
    """A statement that raised (say, after waiting out the busy timeout) still counts as
    slow when it was, and its start is taken off the connection's stack."""
    recorder = SlowQueryRecorder(threshold_ms=60_000)
    event.listen(database.engine.sync_engine, "before_cursor_execute", recorder.before)
    event.listen(database.engine.sync_engine, "after_cursor_execute", recorder.after)
    event.listen(database.engine.sync_engine, "handle_error", recorder.failed)

    async with database.engine.connect() as connection:
        for _ in range(3):
            with pytest.raises(OperationalError, match="no such table"):
                await connection.execute(text("SELECT x FROM missing"))
        recorder.threshold_ms = 0
        with pytest.raises(OperationalError):
            await connection.execute(text("SELECT x FROM missing"))
        raw = await connection.get_raw_connection()
        assert raw.info.get("query_start") == []
    assert recorder.count == 1


async def test_one_row_the_database_refuses_fails_alone_in_its_group_commit(
    database: Database,
) -> None:
    """Two answers' writes share a group commit; one carries a value that cannot be stored:
    the other is still committed, and only the bad one raises."""
    await database.writes.run(_turn())
    good = database.writes.update_message("a" * 32, {"content": "kept", "status": "complete"})
    bad = database.writes.update_message(
        "q" * 32, {"content": "lost?", "status": "complete", "error": {"x": object()}}
    )
    results = await asyncio.gather(good, bad, return_exceptions=True)
    assert results[0] is None
    assert isinstance(results[1], StatementError)
    key, content = MESSAGES.c.keys().index("id"), MESSAGES.c.keys().index("content")
    rows = {row[key]: row for row in await _rows(database.engine, MESSAGES)}
    assert rows["a" * 32][content] == "kept"
    assert rows["q" * 32][content] != "lost?"
