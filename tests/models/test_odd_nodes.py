"""A node whose answers have fields of other types than Ollama documents (a proxy, another
server on the port, a future version): those fields read as missing, never a 500."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ollama_web.core.config import Settings
from tests.conftest import asgi_client
from tests.fixtures.auth import create_test_user
from tests.ollama.faults import json_node, serving

ODD_DETAILS = {
    "family": 5,
    "families": [1, "llama"],
    "format": [],
    "parameter_size": 3,
    "quantization_level": True,
    "context_length": "long",
}
ANSWERS: dict[bytes, Any] = {
    b"GET /api/version": {"version": "0.33.0"},
    b"GET /api/tags": {
        "models": [
            {
                "name": "odd:latest",
                "model": ["no"],
                "size": "big",
                "digest": 7,
                "modified_at": {"a": 1},
                "details": ODD_DETAILS,
                "capabilities": [1, "completion"],
            }
        ]
    },
    b"GET /api/ps": {
        "models": [
            {
                "name": "odd:latest",
                "model": 3,
                "size": "big",
                "size_vram": "x",
                "expires_at": 5,
                "digest": [],
                "details": ODD_DETAILS,
            }
        ]
    },
    b"POST /api/show": {
        "details": ODD_DETAILS,
        "model_info": {"general.architecture": 9, "general.parameter_count": "many"},
        "capabilities": "completion",
        "parameters": 4,
        "template": [],
        "license": {},
        "modified_at": 1,
    },
}


AppFactory = Callable[[Settings], Any]


async def _answers_of(
    app_factory: AppFactory,
    settings_factory: Callable[..., Settings],
    node_answers: dict[bytes, Any],
    paths: list[str],
) -> list[Any]:
    """Our answers to GET `paths`, with a node that answers `node_answers`."""
    node = json_node({path: (200, answer) for path, answer in node_answers.items()})
    async with serving(node) as port:
        app = await app_factory(settings_factory(ollama_url=[f"http://127.0.0.1:{port}"]))
        user = await create_test_user(app)
        async with asgi_client(app) as client:
            return [await client.get(path, headers=user.headers) for path in paths]


async def test_odd_field_types_read_as_missing(
    app_factory: AppFactory, settings_factory: Callable[..., Settings]
) -> None:
    paths = ["/api/models", "/api/models/running", "/api/models/odd"]
    listed, running, shown = await _answers_of(app_factory, settings_factory, ANSWERS, paths)
    assert listed.status_code == running.status_code == shown.status_code == 200
    (model,) = listed.json()["models"]
    assert (model["name"], model["model"], model["size"], model["digest"]) == (
        "odd:latest",
        "odd:latest",
        None,
        None,
    )
    assert (model["family"], model["families"], model["capabilities"]) == (
        None,
        ["llama"],
        ["completion"],
    )
    (loaded,) = running.json()["models"]
    assert (loaded["model"], loaded["size"], loaded["expires_at"]) == ("odd:latest", None, None)
    details = shown.json()
    assert (details["architecture"], details["parameter_count"], details["template"]) == (
        None,
        None,
        None,
    )
    assert details["capabilities"] == []


async def test_a_parameter_nested_past_the_json_parsers_depth_is_kept_as_text(
    app_factory: AppFactory, settings_factory: Callable[..., Settings]
) -> None:
    deep = "[" * 100_000 + "]" * 100_000
    answers = {
        **ANSWERS,
        b"POST /api/show": {"parameters": f'num_ctx 4096\nstop "<|eot|>"\ndeep {deep}'},
    }
    (shown,) = await _answers_of(app_factory, settings_factory, answers, ["/api/models/odd"])
    assert shown.status_code == 200, shown.text
    assert shown.json()["parameters"] == {"num_ctx": 4096, "stop": ["<|eot|>"], "deep": deep}
