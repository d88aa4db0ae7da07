"""The generation engine and the SSE follower, against a fake upstream (unit level).

The database is real (SQLite here; the end-to-end tests run both backends)."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import pytest
from fastapi import FastAPI
from sqlalchemy.exc import OperationalError, ProgrammingError
from starlette.types import Message as ASGIMessage

from ollama_web.chat import answer_row
from ollama_web.chat import registry as registry_module
from ollama_web.chat.generation import Generation, GenerationSpec
from ollama_web.chat.registry import GenerationRegistry
from ollama_web.chat.sse import EventLog, SSEResponse, encode_text_event
from ollama_web.conversations.schemas import MessagePublic
from ollama_web.core.db import session_scope
from ollama_web.db import Conversation, Message
from ollama_web.db.base import new_id, utcnow
from ollama_web.ollama.chunks import ChatChunk
from ollama_web.ollama.errors import OllamaStreamError, OllamaUnavailableError
from tests.chat.conftest import parse_events
from tests.fixtures.auth import create_test_user


@pytest.fixture
def db_backend() -> str:
    return "sqlite"


class FakeStream:
    node_url = "http://fake-node"

    def __init__(self, chunks: list[ChatChunk], gate: asyncio.Event, fail: Exception | None):
        self.chunks = chunks
        self.gate = gate
        self.fail = fail

    async def relay(self, on_chunk: Callable[[ChatChunk], None]) -> None:
        for chunk in self.chunks:
            on_chunk(chunk)
        await self.gate.wait()
        if self.fail is not None:
            raise self.fail


class FakeGateway:
    def __init__(self, chunks: list[ChatChunk], fail: Exception | None = None) -> None:
        self.chunks = chunks
        self.fail = fail
        self.gate = asyncio.Event()
        self.closed = 0

    @asynccontextmanager
    async def _open(self) -> AsyncIterator[FakeStream]:
        try:
            yield FakeStream(self.chunks, self.gate, self.fail)
        finally:
            self.closed += 1

    def open_chat(self, model: str, messages: list[dict[str, Any]], **_: Any) -> Any:
        return self._open()


async def _spec(app: FastAPI) -> GenerationSpec:
    user = await create_test_user(app)
    now = utcnow()
    conversation = Conversation(
        id=new_id(), user_id=user.id, title="t", model="m:latest", options={},
        pinned=False, archived=False, title_generated=True,
    )  # fmt: skip
    answer = Message(
        id=new_id(), conversation_id=conversation.id, role="assistant", content="",
        status="pending", created_at=now, updated_at=now,
    )  # fmt: skip
    async with session_scope(app.state.core.sessionmaker) as session:
        session.add(conversation)
        await session.flush()
        session.add(answer)
    message = MessagePublic(
        id=answer.id, conversation_id=conversation.id, parent_id=None, role="assistant",
        content="", status="pending", created_at=now, sibling_ids=[answer.id],
    )  # fmt: skip
    return GenerationSpec(user.id, conversation.id, "u" * 32, message, "m:latest", [])


async def _stored(app: FastAPI, message_id: str) -> Message:
    async with session_scope(app.state.core.sessionmaker) as session:
        message = await session.get(Message, message_id)
        assert message is not None
        return message


def _tokens(*texts: str) -> list[ChatChunk]:
    return [ChatChunk(content=text) for text in texts]


async def test_a_complete_generation_numbers_its_events_and_stores_the_text(app: FastAPI) -> None:
    gateway = FakeGateway([*_tokens("a", "é", "🌍"), ChatChunk(done=True, done_reason="stop")])
    gateway.gate.set()
    generation = Generation(await _spec(app), gateway, app.state.generations.writes, 1.0)
    generation.start(lambda _: None)
    await generation.wait()
    events = parse_events(b"".join(generation.log.frames))
    assert [(e.id, e.event) for e in events] == [
        (1, "start"), (2, "token"), (3, "token"), (4, "token"), (5, "done"),
    ]  # fmt: skip
    assert (await _stored(app, generation.id)).content == "aé🌍"
    assert events[-1].data["message"]["done_reason"] == "stop"


async def test_an_answer_kept_for_replay_keeps_its_events_not_its_title_source(
    app: FastAPI,
) -> None:
    """A finished answer stays in memory for late re-attaches (RETAIN_SECONDS, bounded by
    its events' bytes); the first message its title is written from (up to
    MAX_MESSAGE_CHARS, not counted in that bound) is handed to the title writer, not kept."""
    first_message = "question " * 10_000
    titled: list[str | None] = []
    gateway = FakeGateway([*_tokens("an", " answer"), ChatChunk(done=True)])
    gateway.gate.set()
    registry = GenerationRegistry(
        app.state.core.settings,
        app.state.generations.writes,
        gateway,
        lambda finished: titled.append(finished.spec.title_source),
    )
    spec = dataclasses.replace(await _spec(app), title_source=first_message)
    generation = registry.start(await registry.reserve(spec.user_id), spec)
    await generation.wait()
    await asyncio.sleep(0)  # the registry takes the finished answer after its last event
    assert titled == [first_message]
    assert registry.get(generation.id) is generation
    assert generation.log.frames[-1].startswith(b"id: 4\nevent: done")
    assert generation.spec.title_source is None


async def test_stop_while_waiting_closes_the_upstream_and_stores_stopped(app: FastAPI) -> None:
    gateway = FakeGateway(_tokens("partial", " text"))
    generation = Generation(await _spec(app), gateway, app.state.generations.writes, 1.0)
    generation.start(lambda _: None)
    await asyncio.sleep(0.01)
    assert generation.stop() is True
    assert generation.stop() is False
    await generation.wait()
    assert gateway.closed == 1
    stored = await _stored(app, generation.id)
    assert (stored.status, stored.content) == ("stopped", "partial text")
    assert parse_events(generation.log.frames[-1])[0].data["message"]["status"] == "stopped"


async def test_stop_before_the_job_runs_still_ends_it(app: FastAPI) -> None:
    gateway = FakeGateway(_tokens("never"))
    generation = Generation(await _spec(app), gateway, app.state.generations.writes, 1.0)
    generation.start(lambda _: None)
    assert generation.stop() is True
    await generation.wait()
    assert (await _stored(app, generation.id)).status == "stopped"
    assert gateway.closed == 0


@pytest.mark.parametrize(
    ("failure", "code"),
    [
        (OllamaStreamError("incomplete"), "OLLAMA_STREAM_ERROR"),
        (RuntimeError("a bug"), "INTERNAL_ERROR"),
    ],
)
async def test_a_failure_stores_the_partial_text_with_status_error(
    app: FastAPI, failure: Exception, code: str, caplog: pytest.LogCaptureFixture
) -> None:
    gateway = FakeGateway(_tokens("half"), fail=failure)
    gateway.gate.set()
    generation = Generation(await _spec(app), gateway, app.state.generations.writes, 1.0)
    generation.start(lambda _: None)
    await generation.wait()
    stored = await _stored(app, generation.id)
    assert (stored.status, stored.content) == ("error", "half")
    assert stored.error is not None
    assert stored.error["error"] == code
    last = parse_events(generation.log.frames[-1])[0]
    assert (last.event, last.data["error"]) == ("error", code)


class UnreachableGateway:
    """Every node refuses: the request is never written, or (`sent`) written and then lost."""

    def __init__(self, *, sent: bool) -> None:
        self.sent = sent

    @asynccontextmanager
    async def _open(self, on_sent: Callable[[], None] | None) -> AsyncIterator[FakeStream]:
        if self.sent and on_sent is not None:
            on_sent()
        raise OllamaUnavailableError(details={"reason": "connection failed"})
        yield  # pragma: no cover - an async generator that never yields

    def open_chat(
        self,
        model: str,
        messages: list[dict[str, Any]],
        on_sent: Callable[[], None] | None = None,
        **_: Any,
    ) -> Any:
        return self._open(on_sent)


async def test_an_answer_no_node_took_is_withdrawn_and_not_reached(app: FastAPI) -> None:
    """No node was reachable before the request was written (one died within the health
    cache): the answer's row is deleted, nothing follows `start`, `reached()` is False."""
    writes = app.state.generations.writes
    generation = Generation(await _spec(app), UnreachableGateway(sent=False), writes, 1.0)
    generation.start(lambda _: None)
    assert await asyncio.wait_for(generation.reached(), 3) is False
    await generation.wait()
    assert generation.withdrawn
    assert isinstance(generation.error, OllamaUnavailableError)
    assert generation.result is None
    assert [e.event for e in parse_events(b"".join(generation.log.frames))] == ["start"]
    async with session_scope(app.state.core.sessionmaker) as session:
        assert await session.get(Message, generation.id) is None


async def test_an_answer_lost_after_its_request_was_sent_is_an_error_event(
    app: FastAPI,
) -> None:
    """Once the request is written the answer has started: a failure is stored with it."""
    writes = app.state.generations.writes
    generation = Generation(await _spec(app), UnreachableGateway(sent=True), writes, 1.0)
    generation.start(lambda _: None)
    assert await asyncio.wait_for(generation.reached(), 3) is True
    await generation.wait()
    assert not generation.withdrawn
    assert (await _stored(app, generation.id)).status == "error"
    last = parse_events(generation.log.frames[-1])[0]
    assert (last.event, last.data["error"]) == ("error", "OLLAMA_UNAVAILABLE")


async def test_an_unreached_answer_the_database_will_not_delete_is_stored_as_an_error(
    app: FastAPI, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    writes = app.state.generations.writes

    async def refused(*_: Any) -> None:
        raise OperationalError("DELETE", {}, Exception("database is locked"))

    monkeypatch.setattr(writes, "withdraw_answer", refused)
    generation = Generation(await _spec(app), UnreachableGateway(sent=False), writes, 1.0)
    generation.start(lambda _: None)
    assert await asyncio.wait_for(generation.reached(), 3) is True
    await generation.wait()
    assert (await _stored(app, generation.id)).status == "error"
    assert "could not delete the unstarted answer" in caplog.text


async def test_the_last_follower_leaving_abandons_only_when_asked() -> None:
    log = EventLog()
    abandoned: list[bool] = []
    log.on_abandoned = lambda: abandoned.append(True)
    response = SSEResponse(lambda: log, keepalive_seconds=60)
    sent: list[ASGIMessage] = []
    gone = asyncio.Event()

    async def receive() -> ASGIMessage:
        await gone.wait()
        return {"type": "http.disconnect"}

    async def send(message: ASGIMessage) -> None:
        sent.append(message)

    task = asyncio.create_task(response({"type": "http"}, receive, send))
    log.emit_text("token", "x")
    await asyncio.sleep(0.01)
    gone.set()
    await task
    assert abandoned == [True]
    assert sent[0]["type"] == "http.response.start"
    assert sent[1]["body"] == encode_text_event(1, "token", "x")


async def test_a_follower_replays_after_its_last_event_id_and_coalesces_backlog() -> None:
    log = EventLog()
    for text in ("a", "b", "c", "d"):
        log.emit_text("token", text)
    log.finish()
    sent: list[ASGIMessage] = []

    async def receive() -> ASGIMessage:
        await asyncio.Event().wait()
        raise AssertionError

    async def send(message: ASGIMessage) -> None:
        sent.append(message)

    await SSEResponse(lambda: log, after=2)({"type": "http"}, receive, send)
    bodies = [m["body"] for m in sent[1:]]
    assert bodies == [log.frames[2] + log.frames[3], b""]
    assert sent[-1]["more_body"] is False


async def _answer_with_final_writes_refused(
    app: FastAPI, monkeypatch: pytest.MonkeyPatch, refusals: int
) -> tuple[Generation, int]:
    """An answer ("all of it") whose final write the database refuses `refusals` times,
    then takes: the ended generation, and how many final writes were tried."""
    monkeypatch.setattr(answer_row, "FINAL_WRITE_FIRST_WAIT", 0.05)
    writes = app.state.generations.writes
    update = writes.update_message
    tried = 0

    async def refusing(message_id: str, values: dict[str, Any]) -> None:
        nonlocal tried
        if "completed_at" in values:
            tried += 1
            if tried <= refusals:
                raise OperationalError("UPDATE messages", {}, Exception("disk I/O error"))
        await update(message_id, values)

    monkeypatch.setattr(writes, "update_message", refusing)
    gateway = FakeGateway([*_tokens("all", " of it"), ChatChunk(done=True, done_reason="stop")])
    gateway.gate.set()
    generation = Generation(await _spec(app), gateway, writes, 1.0)
    generation.start(lambda _: None)
    await generation.wait()
    return generation, tried


async def test_an_answer_the_database_refuses_ends_in_an_error_not_done(
    app: FastAPI, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The client is never told `done` when the final write failed, tried again for
    FINAL_WRITE_RETRY_SECONDS: it gets an error event whose details hold the whole answer."""
    monkeypatch.setattr(answer_row, "FINAL_WRITE_RETRY_SECONDS", 0.5)
    generation, tried = await _answer_with_final_writes_refused(app, monkeypatch, 10**6)
    assert tried >= 3  # at once, then 0.05, 0.1 and 0.2 s later while within 0.5 s
    last = parse_events(generation.log.frames[-1])[0]
    assert (last.event, last.data["error"]) == ("error", "ANSWER_NOT_STORED")
    assert last.data["details"]["assistant_message"]["content"] == "all of it"
    assert (await _stored(app, generation.id)).status == "pending"


async def test_an_answer_the_database_refused_for_a_while_is_stored_and_done(
    app: FastAPI, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The database is back within FINAL_WRITE_RETRY_SECONDS (a restart, a failover): the
    whole answer is stored, and only then is `done` sent."""
    generation, tried = await _answer_with_final_writes_refused(app, monkeypatch, 3)
    assert tried == 4
    last = parse_events(generation.log.frames[-1])[0]
    assert last.event == "done"
    assert last.data["message"]["content"] == "all of it"
    stored = await _stored(app, generation.id)
    assert (stored.status, stored.content) == ("complete", "all of it")


async def test_an_outage_is_one_log_line_per_answer_not_a_traceback_per_write(
    app: FastAPI, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A database restart failed every running answer's checkpoints at once, and each
    failure logged its whole traceback (7 648 lines of error.log for two answers and a
    20 s PostgreSQL restart). An outage is one warning until a write succeeds, then one
    line that it did; a refusal of another kind (a bug) still logs its traceback once."""
    with caplog.at_level(logging.INFO, logger="ollama_web.chat"):
        await _answer_with_final_writes_refused(app, monkeypatch, 3)
    lines = [(r.levelname, r.getMessage(), r.exc_info) for r in caplog.records]
    assert [(level, exc_info) for level, _, exc_info in lines] == [
        ("WARNING", None),
        ("INFO", None),
    ], lines
    assert "the database is unavailable" in lines[0][1]
    assert "stored after the database came back" in lines[1][1]

    caplog.clear()
    row = answer_row.AnswerRow(app.state.generations.writes, new_id())

    async def wrong(message_id: str, values: dict[str, Any]) -> None:
        raise ProgrammingError("UPDATE messages", {}, Exception("no such column: bogus"))

    monkeypatch.setattr(app.state.generations.writes, "update_message", wrong)
    with caplog.at_level(logging.INFO, logger="ollama_web.chat"):
        assert not await row.write({"content": "x"})
        assert not await row.write({"content": "x"})
    assert [(r.levelname, r.exc_info is not None) for r in caplog.records] == [
        ("ERROR", True),
        ("WARNING", False),
    ]


async def test_shutdown_cancels_a_job_whose_final_write_hangs(
    app: FastAPI, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Nothing outlives the engine: after its grace, a job stuck in its final write is
    cancelled (the next start's sweep marks its answer interrupted)."""
    registry = app.state.generations
    monkeypatch.setattr(registry_module, "SHUTDOWN_GRACE_SECONDS", 0.1)
    update = registry.writes.update_message

    async def hanging(message_id: str, values: dict[str, Any]) -> None:
        if "completed_at" in values:
            await asyncio.Event().wait()
        await update(message_id, values)

    monkeypatch.setattr(registry.writes, "update_message", hanging)
    monkeypatch.setattr(registry, "_gateway", FakeGateway(_tokens("partial")))
    spec = await _spec(app)
    generation = registry.start(await registry.reserve(spec.user_id), spec)
    await asyncio.sleep(0.01)
    await asyncio.wait_for(registry.shutdown(), 3)
    assert not generation.running
