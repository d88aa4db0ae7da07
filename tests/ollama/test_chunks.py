"""Typed chunks parsed leniently: missing optional fields, text in the done chunk, errors."""

from __future__ import annotations

import json

import pytest

from ollama_web.ollama.chunks import ChatChunk, PullProgress
from ollama_web.ollama.errors import OllamaStreamError


def test_minimal_chunk_has_defaults_for_every_optional_field() -> None:
    chunk = ChatChunk.from_object({"model": "m", "message": {"role": "assistant"}, "done": False})
    assert (chunk.content, chunk.thinking, chunk.done) == ("", "", False)
    assert chunk.done_reason is None
    assert chunk.tool_calls is None
    assert chunk.eval_count is None
    assert chunk.total_duration is None


def test_done_chunk_keeps_its_text_and_nanosecond_metrics() -> None:
    chunk = ChatChunk.from_object(
        {
            "model": "llama3.2",
            "message": {"role": "assistant", "content": " end.", "thinking": "t"},
            "done": True,
            "done_reason": "stop",
            "total_duration": 4883583458,
            "eval_count": 12,
            "eval_duration": 1_000_000_000,
        }
    )
    assert chunk.done
    assert chunk.content == " end."
    assert chunk.thinking == "t"
    assert chunk.total_duration == 4883583458
    assert chunk.eval_count == 12
    assert chunk.prompt_eval_count is None
    assert chunk.load_duration is None


def test_empty_done_reason_means_unknown() -> None:
    assert ChatChunk.from_object({"done": True, "done_reason": ""}).done_reason is None


def test_metrics_are_read_only_from_the_done_chunk() -> None:
    chunk = ChatChunk.from_object({"done": False, "eval_count": 3, "message": {"content": "x"}})
    assert chunk.eval_count is None


def test_tool_calls_come_through_as_objects() -> None:
    call = {"id": "call_ab12cd34", "function": {"index": 0, "name": "f", "arguments": {"a": 1}}}
    chunk = ChatChunk.from_object({"message": {"content": "", "tool_calls": [call, "junk"]}})
    assert chunk.tool_calls == [call]


def test_wrong_types_are_tolerated() -> None:
    chunk = ChatChunk.from_object({"message": "oops", "done": "yes", "eval_count": True})
    assert chunk == ChatChunk()


@pytest.mark.parametrize(
    ("error", "message"),
    [
        ("model runner has unexpectedly stopped", "model runner has unexpectedly stopped"),
        # Not Ollama's shape, but a proxy's: the message, or JSON (never Python's repr).
        ({"message": "nested", "code": 7}, "nested"),
        ({"code": 7}, '{"code": 7}'),
        (["a", 1], '["a", 1]'),
        (False, "false"),
    ],
)
def test_an_error_line_raises_instead_of_becoming_a_chunk(error: object, message: str) -> None:
    with pytest.raises(OllamaStreamError) as caught:
        ChatChunk.from_object({"error": error})
    assert caught.value.kind == "upstream_error"
    assert caught.value.details["upstream_message"] == message


def test_pull_progress_percent_and_missing_counts() -> None:
    assert PullProgress.from_object({"status": "pulling manifest"}).as_event() == {
        "status": "pulling manifest",
        "digest": None,
        "total": None,
        "completed": None,
        "percent": None,
    }
    layer = PullProgress.from_object(
        {"status": "pulling 6a07", "digest": "sha256:6a07", "total": 200}
    )
    assert layer.completed is None
    assert layer.percent == 0.0
    assert PullProgress.from_object({"status": "s", "total": 3, "completed": 1}).percent == 33.3
    with pytest.raises(OllamaStreamError):
        PullProgress.from_object({"error": "pull model manifest: file does not exist"})


def test_model_text_that_no_database_can_store_becomes_a_replacement_character() -> None:
    """NUL (PostgreSQL refuses it) and unpaired surrogates (no UTF-8 encoder takes them)
    from the model: streamed and stored as U+FFFD, so both stay equal on either database."""
    line = '{"message": {"content": "a\\u0000b\\ud800c", "thinking": "\\udc00é"}, "done": false}'
    chunk = ChatChunk.from_object(json.loads(line))
    assert chunk.content == "a\ufffdb\ufffdc"
    assert chunk.thinking == "\ufffdé"
    chunk.content.encode()  # storable
    fine = ChatChunk.from_object({"message": {"content": "😀 日本 <b>"}, "done": False})
    assert fine.content == "😀 日本 <b>"


def test_metrics_beyond_the_columns_are_dropped() -> None:
    chunk = ChatChunk.from_object(
        {
            "message": {"content": ""},
            "done": True,
            "done_reason": "x" * 40,
            "eval_count": 2**31,
            "prompt_eval_count": 12,
            "eval_duration": 2**63,
            "total_duration": 5,
            "load_duration": -1,
            "prompt_eval_duration": float("nan"),
        }
    )
    assert chunk.done_reason == "x" * 32
    assert (chunk.eval_count, chunk.prompt_eval_count) == (None, 12)
    assert (chunk.eval_duration, chunk.total_duration) == (None, 5)
    assert (chunk.load_duration, chunk.prompt_eval_duration) == (None, None)
