"""What a user may ask of the node's runner through a conversation's options.

Options reach the Ollama node that runs the model, and some reach past one answer: Ollama
loads the model again when a request's runner options (GPU layers, threads, memory mapping
and locking, batch size) or its `num_ctx` differ from the loaded runner's, for everyone
using that model meanwhile, and the context's cache grows with `num_ctx` (a large one can
push the model off the GPU or exhaust the node's memory). So on a shared server:

- `num_ctx` is at most MAX_NUM_CTX, for everyone (422 above);
- runner options are for administrators (403 for other users), unless
  RUNNER_OPTIONS_ADMIN_ONLY is false.

Both are checked where a request writes options (a conversation created, replaced, patched
or imported; a chat turn's options) and applied where options are sent: what a
conversation stored before (by an administrator since made a user, or under a larger
MAX_NUM_CTX) is sent without the runner options and with `num_ctx` lowered to the limit,
not refused, so an old conversation goes on answering.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from ollama_web.chat.schemas import OllamaOptions
from ollama_web.core.config import Settings
from ollama_web.core.errors import ForbiddenError, ValidationError

RUNNER_OPTIONS = (
    "num_gpu",
    "main_gpu",
    "num_thread",
    "num_batch",
    "use_mmap",
    "use_mlock",
    "numa",
    "low_vram",
)
"""Options that set how the node loads and runs the model rather than how it answers."""
FORBIDDEN_RESPONSE = {
    "description": "FORBIDDEN: runner options (num_gpu, num_thread...) from a user who is not "
    "an administrator (RUNNER_OPTIONS_ADMIN_ONLY)"
}
"""The 403 in the OpenAPI document of every operation that writes options."""


def _runner_options_refused(is_admin: bool, settings: Settings) -> bool:
    return settings.runner_options_admin_only and not is_admin


def check_options(
    given: OllamaOptions | None,
    *,
    is_admin: bool,
    settings: Settings,
    at: Sequence[str] = ("options",),
) -> None:
    """Refuse what the caller may not write: runner options (403), `num_ctx` above
    MAX_NUM_CTX (422). `given`: the options of the request's body, `at` that path."""
    options = given.as_dict() if given is not None else {}
    runner = [name for name in RUNNER_OPTIONS if name in options]
    if runner and _runner_options_refused(is_admin, settings):
        raise ForbiddenError(
            "Only administrators may set runner options "
            f"({', '.join(RUNNER_OPTIONS)}): they change how the model is loaded for "
            "everyone using it (RUNNER_OPTIONS_ADMIN_ONLY).",
            details={"options": runner},
        )
    num_ctx = options.get("num_ctx")
    if isinstance(num_ctx, int) and num_ctx > settings.max_num_ctx:
        limit = settings.max_num_ctx
        raise ValidationError(
            "The request payload is invalid.",
            details={
                "fields": [
                    {
                        "loc": [*at, "num_ctx"],
                        "message": f"must be at most {limit} (MAX_NUM_CTX)",
                        "type": "less_than_equal",
                    }
                ]
            },
        )


def sendable_options(
    options: Mapping[str, Any] | None, *, is_admin: bool, settings: Settings
) -> dict[str, Any] | None:
    """`options` as they may be sent for this conversation's owner (None when empty)."""
    if not options:
        return None
    sent = dict(options)
    if _runner_options_refused(is_admin, settings):
        for name in RUNNER_OPTIONS:
            sent.pop(name, None)
    num_ctx = sent.get("num_ctx")
    if isinstance(num_ctx, int) and num_ctx > settings.max_num_ctx:
        sent["num_ctx"] = settings.max_num_ctx
    return sent or None
