"""Chat payloads: the request body of both chat endpoints, Ollama's options, the answers.

`OllamaOptions` accepts exactly the option names Ollama documents (api/types.go `Options` and
`Runner`), each with its type; anything else is a 422 here rather than a silently ignored key
upstream (Ollama only logs `invalid option provided`) or a 500 for a wrong type.
"""

from __future__ import annotations

import base64
import binascii
import re
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt, model_validator

from ollama_web.core.config import NUM_CTX_CEILING, Settings
from ollama_web.core.errors import ValidationError
from ollama_web.core.validation import Identifier

# Strict numbers: JSON `true` is not 1, and "0.7" is not 0.7. Floats accept integers.
Float = Annotated[float, Field(strict=True, allow_inf_nan=False)]
Probability = Annotated[float, Field(strict=True, ge=0, le=1)]
# Ollama's integer options are Go `int`s (64-bit): a larger number is refused here, not
# stored with the conversation and sent again with every turn.
Int = Annotated[StrictInt, Field(ge=-(2**63), le=2**63 - 1)]
NonNegativeInt = Annotated[Int, Field(ge=0)]
_LONE_SURROGATE = re.compile("[\ud800-\udfff]")

MAX_STOP_SEQUENCES = 16
MAX_STOP_CHARS = 200
# A conversation's system prompt, however it is set (chat, PUT/PATCH, import): what a chat
# stores must export and import again.
SYSTEM_PROMPT_CHARS = 100_000


class OllamaOptions(BaseModel):
    """Model options sent to Ollama with every request of a conversation: the names Ollama
    documents (its API's options and its Modelfile parameters), with their types. `num_ctx`
    is at most MAX_NUM_CTX; the runner options (num_gpu, main_gpu, num_thread, num_batch,
    use_mmap, use_mlock, numa, low_vram) are an administrator's (RUNNER_OPTIONS_ADMIN_ONLY)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    # Runner
    num_ctx: Annotated[Int, Field(ge=1, le=NUM_CTX_CEILING)] | None = None
    num_batch: Annotated[Int, Field(ge=1)] | None = None
    num_gpu: Annotated[Int, Field(ge=-1)] | None = None
    main_gpu: NonNegativeInt | None = None
    num_thread: NonNegativeInt | None = None
    use_mmap: StrictBool | None = None
    use_mlock: StrictBool | None = None
    numa: StrictBool | None = None
    low_vram: StrictBool | None = None
    # Sampling and prediction
    num_keep: Annotated[Int, Field(ge=-1)] | None = None
    seed: Int | None = None
    num_predict: Annotated[Int, Field(ge=-2)] | None = None
    top_k: NonNegativeInt | None = None
    top_p: Probability | None = None
    min_p: Probability | None = None
    typical_p: Probability | None = None
    repeat_last_n: Annotated[Int, Field(ge=-1)] | None = None
    temperature: Annotated[float, Field(strict=True, ge=0, le=100)] | None = None
    repeat_penalty: Float | None = None
    presence_penalty: Float | None = None
    frequency_penalty: Float | None = None
    penalize_newline: StrictBool | None = None
    # Listed in Ollama's Modelfile parameters; engines that no longer use them ignore them.
    mirostat: Annotated[Int, Field(ge=0, le=2)] | None = None
    mirostat_eta: Float | None = None
    mirostat_tau: Float | None = None
    tfs_z: Float | None = None
    stop: (
        Annotated[
            list[Annotated[str, Field(min_length=1, max_length=MAX_STOP_CHARS)]],
            Field(max_length=MAX_STOP_SEQUENCES),
        ]
        | None
    ) = None

    def as_dict(self) -> dict[str, Any]:
        return self.model_dump(exclude_none=True)


class ChatRequest(BaseModel):
    """One turn. Modes: append (default), edit (`edit_message_id` + `content`), regenerate
    (`regenerate_message_id`, no `content`). Without `conversation_id` a new conversation is
    created (edit and regenerate find theirs from the message)."""

    model_config = ConfigDict(extra="forbid")

    conversation_id: Identifier | None = None
    model: Annotated[str, Field(min_length=1, max_length=200)] | None = None
    content: str | None = Field(
        default=None, description="The user's message (at most MAX_MESSAGE_CHARS characters)."
    )
    images: list[str] | None = Field(
        default=None,
        description="Base64 images (no `data:` prefix), at most MAX_IMAGES_PER_MESSAGE, each "
        "at most MAX_IMAGE_BYTES once decoded.",
    )
    options: OllamaOptions | None = None
    system_prompt: Annotated[str, Field(max_length=SYSTEM_PROMPT_CHARS)] | None = Field(
        default=None,
        description=f"At most {SYSTEM_PROMPT_CHARS} characters (and MAX_MESSAGE_CHARS).",
    )
    think: StrictBool | None = Field(
        default=None,
        description="Ask a thinking model to think (or not); unset = its default. true for a "
        "model its nodes list without the thinking capability: 422, nothing stored.",
    )
    edit_message_id: Identifier | None = None
    regenerate_message_id: Identifier | None = None

    @model_validator(mode="after")
    def _mode(self) -> ChatRequest:
        if self.edit_message_id and self.regenerate_message_id:
            raise ValueError("give edit_message_id or regenerate_message_id, not both")
        if self.regenerate_message_id:
            if self.content is not None or self.images:
                raise ValueError("regenerate takes no content or images")
        elif not self.content and not self.images:
            raise ValueError("content is required")
        return self

    @property
    def mode(self) -> str:
        if self.edit_message_id:
            return "edit"
        if self.regenerate_message_id:
            return "regenerate"
        return "append"


def _field_error(loc: list[str | int], message: str, kind: str) -> ValidationError:
    return ValidationError(
        "The request payload is invalid.",
        details={"fields": [{"loc": loc, "message": message, "type": kind}]},
    )


def _decoded_size(image: str) -> int:
    try:
        return len(base64.b64decode(image, validate=True))
    except (binascii.Error, ValueError):
        return -1


def check_limits(body: ChatRequest, settings: Settings) -> None:
    """The bounds that come from settings (MAX_MESSAGE_CHARS, image count and size)."""
    limit = settings.max_message_chars
    for name in ("content", "system_prompt"):
        value = getattr(body, name)
        if value is None:
            continue
        if len(value) > limit:
            raise _field_error(
                [name], f"must be at most {limit} characters (MAX_MESSAGE_CHARS)", "too_long"
            )
        if _LONE_SURROGATE.search(value):
            raise _field_error([name], "contains unpaired surrogates", "surrogates")
    problem = image_problem(body.images or [], settings)
    if problem is not None:
        where, message, kind = problem
        raise _field_error(["images", *where], message, kind)


def image_problem(images: list[str], settings: Settings) -> tuple[list[int], str, str] | None:
    """What breaks the image limits first (its index under `images`, or [] for the count;
    the message; the kind), or None. Chat requests and imported messages alike."""
    if len(images) > settings.max_images_per_message:
        limit = settings.max_images_per_message
        return [], f"at most {limit} images (MAX_IMAGES_PER_MESSAGE)", "too_long"
    for index, image in enumerate(images):
        size = _decoded_size(image)
        if size < 0:
            return [index], "is not valid base64", "base64"
        if size == 0:
            return [index], "is empty", "empty"
        if size > settings.max_image_bytes:
            limit = settings.max_image_bytes
            return [index], f"is larger than {limit} bytes (MAX_IMAGE_BYTES)", "too_large"
    return None
