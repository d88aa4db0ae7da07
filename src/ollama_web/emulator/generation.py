"""/api/chat and /api/generate: request validation and planning the reply."""

from __future__ import annotations

import random
import string
from typing import TYPE_CHECKING, Any

from ollama_web.emulator import engine
from ollama_web.emulator.config import BUSY_ERROR, DEFAULT_REPLY, DEFAULT_THINKING, ModelSpec
from ollama_web.emulator.engine import Event, Plan
from ollama_web.emulator.http11 import HttpRequest, Responder
from ollama_web.emulator.wire import (
    ApiError,
    base64_error_at,
    decode_object,
    get_bool,
    get_dict,
    get_int,
    get_list,
    get_str,
    go_kind,
    go_quote,
    parse_keep_alive,
    parse_name,
    rfc3339_utc,
    tokenize,
)

if TYPE_CHECKING:
    from ollama_web.emulator.server import OllamaEmulator

_INT_OPTIONS = {
    "num_ctx",
    "num_predict",
    "num_keep",
    "seed",
    "top_k",
    "repeat_last_n",
    "num_batch",
    "num_gpu",
    "main_gpu",
    "num_thread",
}
_FLOAT_OPTIONS = {
    "temperature",
    "top_p",
    "min_p",
    "typical_p",
    "repeat_penalty",
    "presence_penalty",
    "frequency_penalty",
}
_BOOL_OPTIONS = {"use_mmap", "numa", "low_vram", "penalize_newline"}
_THINK_LEVELS = {"high", "medium", "low", "max"}
DEFAULT_NUM_CTX = 4096


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _int_option(options: dict[str, Any], key: str) -> int | None:
    value = options.get(key)
    return int(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def check_options(options: dict[str, Any]) -> None:
    """Type-check known options like ``api.Options.FromMap`` (500 on a wrong type)."""
    for key, value in options.items():
        if value is None:
            continue
        if key in _INT_OPTIONS and not _is_number(value):
            raise ApiError(500, f"option {go_quote(key)} must be of type integer")
        if key in _FLOAT_OPTIONS and not _is_number(value):
            raise ApiError(500, f"option {go_quote(key)} must be of type float32")
        if key in _BOOL_OPTIONS and not isinstance(value, bool):
            raise ApiError(500, f"option {go_quote(key)} must be of type boolean")
        if key == "stop":
            if not isinstance(value, list):
                raise ApiError(500, 'option "stop" must be of type array')
            if not all(isinstance(item, str) for item in value):
                raise ApiError(500, 'option "stop" must be of an array of strings')


def parse_think(value: Any) -> bool | None:
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, str) and value in _THINK_LEVELS:
        return True
    shown = go_quote(value) if isinstance(value, str) else go_kind(value)
    raise ApiError(
        400, f'invalid think value: {shown} (must be "high", "medium", "low", true, or false)'
    )


def resolve_think(spec: ModelSpec, model: str, think: bool | None) -> bool:
    supports = "thinking" in spec.capabilities
    if think and not supports:
        raise ApiError(400, f"{go_quote(model)} does not support thinking")
    return supports if think is None else think


def _tool_event(calls: list[dict[str, Any]]) -> Event:
    out = []
    for index, call in enumerate(calls):
        suffix = "".join(random.choices(string.ascii_lowercase + string.digits, k=8))
        function = {
            "index": index,
            "name": call.get("name", ""),
            "arguments": call.get("arguments", {}),
        }
        out.append({"id": f"call_{suffix}", "function": function})
    return Event("tools", tool_calls=out)


def plan_events(
    emu: OllamaEmulator, think: bool, with_tools: bool, options: dict[str, Any]
) -> tuple[list[Event], str]:
    """The reply as events (thinking, content, tool calls) and the done reason."""
    cfg = emu.config
    events: list[Event] = []
    if think:
        thinking = DEFAULT_THINKING if cfg.thinking is None else cfg.thinking
        events += [Event("thinking", tok) for tok in tokenize(thinking)]
    if cfg.reply_tokens is not None:
        words = [f"tok{i}" if i == 0 else f" tok{i}" for i in range(cfg.reply_tokens)]
    else:
        words = tokenize(DEFAULT_REPLY if cfg.reply is None else cfg.reply)
    events += [Event("content", word) for word in words]
    if with_tools and cfg.tool_calls:
        events.append(_tool_event(cfg.tool_calls))
    limit = _int_option(options, "num_predict")
    if limit is not None and 0 < limit < len(events):
        return events[:limit], "length" if cfg.done_reason is None else cfg.done_reason
    return events, "stop" if cfg.done_reason is None else cfg.done_reason


def _context_length(options: dict[str, Any], spec: ModelSpec) -> int:
    num_ctx = _int_option(options, "num_ctx")
    if num_ctx is not None and num_ctx > 0:
        return num_ctx
    return min(DEFAULT_NUM_CTX, spec.context_length) or DEFAULT_NUM_CTX


def _lookup(emu: OllamaEmulator, model: str) -> ModelSpec:
    spec = emu.find_model(model) if parse_name(model) else None
    if spec is None:
        raise ApiError(404, f"model '{model}' not found")
    return spec


def _check_top_logprobs(body: dict[str, Any], struct: str) -> None:
    """Ollama checks the range before it looks the model up."""
    if not 0 <= get_int(body, "top_logprobs", struct) <= 20:
        raise ApiError(400, "top_logprobs must be between 0 and 20")


def _check_images(images: list[Any]) -> None:
    """Each is an ``api.ImageData`` ([]byte): a std base64 string, no ``data:`` prefix."""
    for image in images:
        if image is not None and not isinstance(image, str):
            raise ApiError(
                400,
                f"json: cannot unmarshal {go_kind(image)} into Go struct field "
                "ChatRequest.messages.images of type api.ImageData",
            )
        offset = base64_error_at(image.encode()) if image else None
        if offset is not None:
            raise ApiError(400, f"illegal base64 data at input byte {offset}")


def _check_tool_calls(calls: list[Any]) -> None:
    """``function.arguments`` is a JSON object (a string, as OpenAI sends it, is refused)."""
    for call in calls:
        function = call.get("function") if isinstance(call, dict) else None
        arguments = function.get("arguments") if isinstance(function, dict) else None
        if arguments is not None and not isinstance(arguments, dict):
            raise ApiError(
                400,
                f"json: cannot unmarshal {go_kind(arguments)} into Go struct field "
                "ChatRequest.messages.tool_calls.function.arguments of type "
                "api.ToolCallFunctionArguments",
            )


def _check_messages(messages: list[Any]) -> int:
    """Validate message types; returns an estimate of the prompt's token count."""
    count = 8
    for message in messages:
        if not isinstance(message, dict):
            raise ApiError(
                400,
                f"json: cannot unmarshal {go_kind(message)} into Go struct field "
                "ChatRequest.messages of type api.Message",
            )
        for key in ("role", "content"):
            get_str(message, key, "ChatRequest.messages")
        _check_images(get_list(message, "images", "ChatRequest.messages", "[]api.ImageData"))
        _check_tool_calls(get_list(message, "tool_calls", "ChatRequest.messages", "[]api.ToolCall"))
        count += 4 + len(tokenize(str(message.get("content") or "")))
    return count


async def _load_reply(
    emu: OllamaEmulator, resp: Responder, spec: ModelSpec, model: str, api: str, body: Any
) -> None:
    """``messages: []`` / empty prompt: load (or unload) the model, answer one object."""
    keep_alive = parse_keep_alive(body.get("keep_alive"))
    emu.mark_loaded(spec, keep_alive, _context_length(get_dict(body, "options", ""), spec))
    reason = "load"
    if keep_alive == 0:
        emu.unload(spec.name)
        reason = "unload"
    out: dict[str, Any] = {"model": model, "created_at": rfc3339_utc()}
    if api == "chat":
        out["message"] = {"role": "assistant", "content": ""}
    else:
        out["response"] = ""
    out.update({"done": True, "done_reason": reason})
    await resp.json(200, out)


async def chat(emu: OllamaEmulator, req: HttpRequest, resp: Responder) -> None:
    body = decode_object(req.body, "ChatRequest")
    model = get_str(body, "model", "ChatRequest")
    messages = get_list(body, "messages", "ChatRequest", "[]api.Message")
    tools = get_list(body, "tools", "ChatRequest", "api.Tools")
    stream = get_bool(body, "stream", "ChatRequest") is not False
    think = parse_think(body.get("think"))
    keep_alive = parse_keep_alive(body.get("keep_alive"))
    options = get_dict(body, "options", "ChatRequest")
    prompt_tokens = _check_messages(messages)
    _check_top_logprobs(body, "ChatRequest")
    if not model:
        raise ApiError(400, "model is required")
    spec = _lookup(emu, model)
    if "completion" not in spec.capabilities:
        raise ApiError(400, f"{go_quote(model)} does not support chat")
    if tools and "tools" not in spec.capabilities:
        name = parse_name(spec.name)
        raise ApiError(400, f"{name.full() if name else spec.name} does not support tools")
    think_on = resolve_think(spec, model, think)
    check_options(options)
    if emu.config.busy:
        raise ApiError(503, BUSY_ERROR)
    if not messages:
        await _load_reply(emu, resp, spec, model, "chat", body)
        return
    events, reason = plan_events(emu, think_on, bool(tools), options)
    plan = Plan(
        "chat",
        model,
        spec,
        stream,
        events,
        reason,
        prompt_tokens,
        keep_alive,
        _context_length(options, spec),
    )
    await engine.run(emu, resp, plan)


async def generate(emu: OllamaEmulator, req: HttpRequest, resp: Responder) -> None:
    body = decode_object(req.body, "GenerateRequest")
    model = get_str(body, "model", "GenerateRequest")
    prompt = get_str(body, "prompt", "GenerateRequest")
    system = get_str(body, "system", "GenerateRequest")
    template = get_str(body, "template", "GenerateRequest")
    context = get_list(body, "context", "GenerateRequest", "[]int")
    raw = bool(get_bool(body, "raw", "GenerateRequest"))
    stream = get_bool(body, "stream", "GenerateRequest") is not False
    think = parse_think(body.get("think"))
    keep_alive = parse_keep_alive(body.get("keep_alive"))
    options = get_dict(body, "options", "GenerateRequest")
    _check_top_logprobs(body, "GenerateRequest")
    if raw and (template or system or context):
        raise ApiError(400, "raw mode does not support template, system, or context")
    spec = _lookup(emu, model)
    if "completion" not in spec.capabilities:
        raise ApiError(400, f"{go_quote(model)} does not support generate")
    think_on = resolve_think(spec, model, think)
    check_options(options)
    if emu.config.busy:
        raise ApiError(503, BUSY_ERROR)
    if not prompt:
        await _load_reply(emu, resp, spec, model, "generate", body)
        return
    events, reason = plan_events(emu, think_on, False, options)
    prompt_tokens = 8 + len(tokenize(prompt)) + len(tokenize(system)) + len(context)
    plan = Plan(
        "generate",
        model,
        spec,
        stream,
        events,
        reason,
        prompt_tokens,
        keep_alive,
        _context_length(options, spec),
        raw=raw,
    )
    await engine.run(emu, resp, plan)
