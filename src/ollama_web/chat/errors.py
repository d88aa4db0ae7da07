"""Errors of the chat domain (rendered by the one core handler)."""

from __future__ import annotations

from typing import Any

from ollama_web.core.errors import AppError, ConflictError, RateLimitedError

RETRY_AFTER_SECONDS = 5


class TooManyGenerationsError(RateLimitedError):
    """MAX_CONCURRENT_GENERATIONS_PER_USER answers are already being generated."""

    code = "TOO_MANY_GENERATIONS"

    def __init__(self, limit: int) -> None:
        super().__init__(
            f"At most {limit} answers can be generated at once; wait for one to finish.",
            details={"limit": limit, "retry_after_seconds": RETRY_AFTER_SECONDS},
            headers={"Retry-After": str(RETRY_AFTER_SECONDS)},
        )


class AnswerInProgressError(ConflictError):
    """A question after an answer still being generated: the model would be given half an
    answer as the context, and the answer would go on growing above the question."""

    code = "ANSWER_IN_PROGRESS"

    def __init__(self, conversation_id: str, answer_id: str) -> None:
        super().__init__(
            "The conversation's last answer is still being generated: wait for it to end, "
            "or stop it (POST /api/chat/{assistant_message_id}/stop), then send again.",
            details={"conversation_id": conversation_id, "assistant_message_id": answer_id},
        )


class GenerationNotHereError(ConflictError):
    """The answer is still being generated, but by another server process."""

    code = "GENERATION_ELSEWHERE"


def error_body(error: AppError) -> dict[str, Any]:
    return {"error": error.code, "message": error.message, "details": error.details}


class GenerationInterrupted(AppError):
    status_code = 503
    code = "GENERATION_INTERRUPTED"


class AnswerNotStored(AppError):
    """The answer ended but the database refused its final write, tried again for
    FINAL_WRITE_RETRY_SECONDS (see `generation`): the client gets the text in
    `details.assistant_message` and an error, never a `done` that the database contradicts."""

    status_code = 503
    code = "ANSWER_NOT_STORED"
