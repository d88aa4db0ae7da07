"""Single-response endpoints of the emulator, checked over real HTTP."""

from __future__ import annotations

import json
import math
import re
from datetime import datetime

import httpx
import pytest

from ollama_web.emulator import EmulatorConfig, ModelSpec, OllamaEmulator
from ollama_web.emulator.config import BUSY_ERROR, DEFAULT_REPLY
from ollama_web.emulator.wire import go_json, parse_go_duration, parse_name, rfc3339_utc
from ollama_web.ollama.names import parse_model_name

JSON_CT = "application/json; charset=utf-8"
RFC3339_UTC = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{1,9})?Z$")
USER_HI = [{"role": "user", "content": "hi"}]


def test_go_json_encoding() -> None:
    assert go_json({"a": "<b>&ö", "n": [1, 2.5]}) == (
        '{"a":"\\u003cb\\u003e\\u0026ö","n":[1,2.5]}'.encode()
    )
    assert RFC3339_UTC.match(rfc3339_utc())
    assert rfc3339_utc(1_000_000_000_500_000_000) == "2001-09-09T01:46:40.5Z"
    assert parse_go_duration("1h30m") == 5400.0
    assert parse_go_duration("10x") is None


@pytest.mark.parametrize(
    "name",
    [
        "llama3.2", "__main__", "_x/_y:_z", "host_1.local:5000/ns/model:tag", "a-b/c.d:e.f",
        "name.space/model", "-llama", ".llama", "llama3:-tag", "a/b/c/d", "llama 3", "modèle",
        "x" * 80, "x" * 81, "model:" + "t" * 81, ":latest", "llama3:",
    ],
)  # fmt: skip
def test_the_emulator_reads_names_as_ollama_and_the_server_do(name: str) -> None:
    """Both follow Ollama's types/model/name.go: a name one takes, the other takes."""
    assert (parse_name(name) is None) == (parse_model_name(name) is None)


def test_name_normalisation() -> None:
    name = parse_name("Llama3.2")
    assert name is not None
    assert name.short() == "Llama3.2:latest"
    assert name.key() == parse_name("registry.ollama.ai/library/llama3.2:latest").key()  # type: ignore[union-attr]
    assert parse_name("bad name!") is None
    assert ModelSpec("qwen3").name == "qwen3:latest"
    assert len(ModelSpec("qwen3").digest) == 64


async def test_root_version_and_head(client: httpx.AsyncClient) -> None:
    resp = await client.get("/")
    assert resp.status_code == 200
    assert resp.headers["content-type"] == "text/plain; charset=utf-8"
    assert resp.text == "Ollama is running"
    head = await client.head("/")
    assert head.status_code == 200
    assert head.content == b""
    version = await client.get("/api/version")
    assert version.headers["content-type"] == JSON_CT
    assert version.content == b'{"version":"0.33.0"}'


async def test_unknown_path_and_wrong_method(client: httpx.AsyncClient) -> None:
    resp = await client.get("/api/nope")
    assert resp.status_code == 404
    assert resp.headers["content-type"] == "text/plain"
    assert resp.text == "404 page not found"
    resp = await client.get("/api/chat")
    assert resp.status_code == 405
    assert resp.headers["content-type"] == "text/plain"
    assert resp.text == "405 method not allowed"


@pytest.mark.parametrize(
    ("headers", "refused"),
    [
        ({"Host": "evil.example.com"}, True),
        ({"Host": "evil.example.com:11434"}, True),
        ({"Host": "8.8.8.8"}, True),
        ({"Host": "localhost:11434"}, False),
        ({"Host": "[::1]:11434"}, False),
        ({"Host": "10.1.2.3"}, False),
        ({"Host": "gpu1.local"}, False),
        ({"Host": "ollama.internal:8080"}, False),
        ({"Origin": "https://evil.example.com"}, True),
        ({"Origin": "null"}, True),
        ({"Origin": "http://localhost:3000"}, False),
        ({"Origin": "https://127.0.0.1"}, False),
        ({"Origin": "chrome-extension://abcdef"}, False),
        ({"Origin": "vscode-webview://x"}, False),
        ({"Host": "gpu1.local:11434", "Origin": "http://gpu1.local:11434"}, False),
    ],
)
async def test_host_and_origin_guards_answer_an_empty_403(
    client: httpx.AsyncClient, headers: dict[str, str], refused: bool
) -> None:
    """ollama-api.md §0: bound to loopback, Ollama refuses a foreign Host (DNS rebinding)
    and any disallowed Origin, with 403 and no body, on every route."""
    for path in ("/api/version", "/api/nope"):
        response = await client.get(path, headers=headers)
        if refused:
            assert (response.status_code, response.content) == (403, b"")
        else:
            assert response.status_code in (200, 404)


async def test_the_optional_traps_ollama_sends_can_be_sent(
    emu: OllamaEmulator, client: httpx.AsyncClient
) -> None:
    """`details.families: null` (a Go nil slice) and `done_reason: ""` (ollama-api.md, 12)."""
    emu.config.models = [ModelSpec("nil:latest", families_null=True)]
    emu.config.done_reason = ""
    (listed,) = (await client.get("/api/tags")).json()["models"]
    assert listed["details"]["families"] is None
    body = {"model": "nil", "messages": USER_HI, "stream": False}
    answer = (await client.post("/api/chat", json=body)).json()
    assert (answer["done"], answer["done_reason"]) == (True, "")


async def test_tags_shape_newest_first(emu: OllamaEmulator, client: httpx.AsyncClient) -> None:
    emu.config.models = [ModelSpec("old:latest", modified_at=1000.0), ModelSpec.preset("qwen3")]
    body = (await client.get("/api/tags")).json()
    names = [m["name"] for m in body["models"]]
    assert names == ["qwen3:latest", "old:latest"]
    first = body["models"][0]
    assert list(first) == [
        "name", "model", "modified_at", "size", "digest", "details", "capabilities",
    ]  # fmt: skip
    assert re.fullmatch(r"[0-9a-f]{64}", first["digest"])
    assert first["details"]["families"] == ["qwen3"]
    assert "thinking" in first["capabilities"]
    assert re.match(
        r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?(Z|[+-]\d\d:\d\d)$", first["modified_at"]
    )
    emu.config.models = []
    assert (await client.get("/api/tags")).content == b'{"models":[]}'


async def test_show_and_not_found(client: httpx.AsyncClient) -> None:
    resp = await client.post("/api/show", json={"model": "LLAMA3.2"})
    assert resp.status_code == 200
    body = resp.json()
    assert isinstance(body["parameters"], str)
    assert body["parameters"].startswith("stop ")
    assert body["model_info"]["general.architecture"] == "llama"
    assert body["model_info"]["tokenizer.ggml.tokens"] == []
    assert "\\u003c|start_header_id|\\u003e" in resp.text
    assert body["capabilities"] == ["completion"]
    missing = await client.post("/api/show", json={"model": "foo"})
    assert missing.status_code == 404
    assert missing.json() == {"error": "model 'foo:latest' not found"}
    empty = await client.post("/api/show", json={})
    assert empty.status_code == 400


async def test_request_errors(client: httpx.AsyncClient) -> None:
    cases = [
        ({"messages": USER_HI}, 400, "model is required"),
        ({"model": "nope", "messages": USER_HI}, 404, "model 'nope' not found"),
        ({"model": "llama3.2", "messages": USER_HI, "think": True}, 400,
         '"llama3.2" does not support thinking'),
        ({"model": "llama3.2", "messages": USER_HI, "options": {"num_ctx": "big"}}, 500,
         'option "num_ctx" must be of type integer'),
        ({"model": "llama3.2", "messages": USER_HI, "tools": [{"type": "function"}]}, 400,
         "registry.ollama.ai/library/llama3.2:latest does not support tools"),
    ]  # fmt: skip
    for payload, status, message in cases:
        resp = await client.post("/api/chat", json=payload)
        assert resp.status_code == status, payload
        assert resp.headers["content-type"] == JSON_CT
        assert resp.json() == {"error": message}
    empty = await client.post("/api/chat", content=b"")
    assert empty.json() == {"error": "missing request body"}
    bad = await client.post("/api/chat", content=b"{bad")
    assert bad.status_code == 400
    assert bad.json()["error"].startswith("invalid character 'b'")
    gen = await client.post("/api/generate", json={"model": "", "prompt": "x"})
    assert (gen.status_code, gen.json()) == (404, {"error": "model '' not found"})


async def test_top_logprobs_outside_0_to_20_is_refused(client: httpx.AsyncClient) -> None:
    for path, payload in [
        ("/api/chat", {"model": "llama3.2", "messages": USER_HI}),
        ("/api/generate", {"model": "llama3.2", "prompt": "hi"}),
    ]:
        for value in (-1, 21):
            resp = await client.post(path, json={**payload, "top_logprobs": value})
            assert resp.status_code == 400, (path, value)
            assert resp.json() == {"error": "top_logprobs must be between 0 and 20"}
        for value in (0, 20):
            ok = await client.post(path, json={**payload, "top_logprobs": value})
            assert ok.status_code == 200, (path, value)


def _message(**fields: object) -> dict[str, object]:
    return {"model": "llama3.2", "messages": [{"role": "user", "content": "hi", **fields}]}


@pytest.mark.parametrize(
    ("images", "error"),
    [
        (["data:image/png;base64,aGk="], "illegal base64 data at input byte 4"),
        (["not base64!"], "illegal base64 data at input byte 3"),
        (["aGk"], "illegal base64 data at input byte 0"),
        (["aGk=x"], "illegal base64 data at input byte 4"),
        (["a==="], "illegal base64 data at input byte 1"),
        (["aGk=", "aG=k"], "illegal base64 data at input byte 2"),
        ([7], "json: cannot unmarshal number into Go struct field "
              "ChatRequest.messages.images of type api.ImageData"),
    ],
)  # fmt: skip
async def test_images_must_be_base64_strings(
    client: httpx.AsyncClient, images: list[object], error: str
) -> None:
    """`images` is []ImageData ([]byte): Go's JSON decodes each string as std base64."""
    resp = await client.post("/api/chat", json=_message(images=images))
    assert (resp.status_code, resp.json()) == (400, {"error": error})


async def test_valid_images_and_object_tool_arguments_are_accepted(
    client: httpx.AsyncClient,
) -> None:
    images = ["aGk=", "aGVs\nbG8=", "aGVsbG8h\r\n", "", None]
    ok = await client.post("/api/chat", json={**_message(images=images), "stream": False})
    assert ok.status_code == 200
    call = {"function": {"name": "f", "arguments": {"city": "Tokyo"}}}
    history = _message(role="assistant", tool_calls=[call])
    assert (await client.post("/api/chat", json={**history, "stream": False})).status_code == 200


async def test_tool_call_arguments_must_be_an_object(client: httpx.AsyncClient) -> None:
    call = {"function": {"name": "f", "arguments": '{"city": "Tokyo"}'}}
    resp = await client.post("/api/chat", json=_message(role="assistant", tool_calls=[call]))
    assert resp.status_code == 400
    assert resp.json() == {
        "error": "json: cannot unmarshal string into Go struct field "
        "ChatRequest.messages.tool_calls.function.arguments of type api.ToolCallFunctionArguments"
    }


async def test_busy_503(emu: OllamaEmulator, client: httpx.AsyncClient) -> None:
    emu.config.busy = True
    for path, payload in [
        ("/api/chat", {"model": "llama3.2", "messages": USER_HI}),
        ("/api/generate", {"model": "llama3.2", "prompt": "hi"}),
    ]:
        resp = await client.post(path, json=payload)
        assert resp.status_code == 503
        assert resp.json() == {"error": BUSY_ERROR}


async def test_stream_false_and_load_replies(
    emu: OllamaEmulator, client: httpx.AsyncClient
) -> None:
    resp = await client.post(
        "/api/chat", json={"model": "llama3.2", "messages": USER_HI, "stream": False}
    )
    body = resp.json()
    assert resp.headers["content-type"] == JSON_CT
    assert body["message"] == {"role": "assistant", "content": DEFAULT_REPLY}
    assert body["done"] is True
    assert body["done_reason"] == "stop"
    load = await client.post("/api/chat", json={"model": "llama3.2", "messages": []})
    assert load.headers["content-type"] == JSON_CT
    assert load.json()["done_reason"] == "load"
    assert load.json()["message"] == {"role": "assistant", "content": ""}
    unload = await client.post("/api/generate", json={"model": "llama3.2", "keep_alive": 0})
    assert unload.json()["done_reason"] == "unload"
    assert emu.loaded_models() == []


async def test_ps_after_chat(emu: OllamaEmulator, client: httpx.AsyncClient) -> None:
    assert (await client.get("/api/ps")).json() == {"models": []}
    await client.post("/api/chat", json={"model": "llama3.2", "messages": USER_HI})
    assert emu.loaded_models() == ["llama3.2:latest"]
    running = (await client.get("/api/ps")).json()["models"]
    assert [m["name"] for m in running] == ["llama3.2:latest"]
    assert running[0]["size_vram"] == running[0]["size"]
    assert running[0]["context_length"] == 4096


async def test_delete_and_copy(emu: OllamaEmulator, client: httpx.AsyncClient) -> None:
    copied = await client.post("/api/copy", json={"source": "llama3.2", "destination": "mine:v1"})
    assert (copied.status_code, copied.content) == (200, b"")
    assert emu.find_model("mine:v1") is not None
    missing_src = await client.post("/api/copy", json={"source": "x", "destination": "y"})
    assert missing_src.json() == {"error": 'model "x" not found'}
    deleted = await client.request("DELETE", "/api/delete", json={"model": "MINE:v1"})
    assert (deleted.status_code, deleted.content) == (200, b"")
    assert deleted.headers["content-length"] == "0"
    again = await client.request("DELETE", "/api/delete", json={"model": "mine:v1"})
    assert (again.status_code, again.json()) == (404, {"error": "model 'mine:v1' not found"})
    invalid = await client.request("DELETE", "/api/delete", json={"model": "bad name!"})
    assert (invalid.status_code, invalid.json()) == (400, {"error": 'name "bad name!" is invalid'})


async def test_embed_normalised_and_deterministic(
    emu: OllamaEmulator, client: httpx.AsyncClient
) -> None:
    emu.config.models.append(ModelSpec.preset("nomic-embed-text"))
    payload = {"model": "nomic-embed-text", "input": ["a", "b"]}
    body = (await client.post("/api/embed", json=payload)).json()
    assert len(body["embeddings"]) == 2
    for vec in body["embeddings"]:
        assert len(vec) == 768
        assert math.isclose(math.sqrt(sum(v * v for v in vec)), 1.0, rel_tol=1e-5)
    again = (await client.post("/api/embed", json=payload)).json()
    assert again["embeddings"] == body["embeddings"]
    assert body["embeddings"][0] != body["embeddings"][1]
    cut = await client.post("/api/embed", json={**payload, "dimensions": 16})
    assert len(cut.json()["embeddings"][0]) == 16
    empty = await client.post("/api/embed", json={"model": "nomic-embed-text", "input": []})
    assert empty.json() == {"model": "nomic-embed-text", "embeddings": []}
    bad = await client.post("/api/embed", json={"model": "nomic-embed-text", "input": 3})
    assert (bad.status_code, bad.json()) == (400, {"error": "invalid input type"})
    missing = await client.post("/api/embed", json={"model": "x", "input": "a"})
    assert missing.json() == {"error": 'model "x" not found, try pulling it first'}


async def test_pull_success_sequence(emu: OllamaEmulator, client: httpx.AsyncClient) -> None:
    emu.config.pull_steps = 3
    async with client.stream("POST", "/api/pull", json={"model": "Mistral"}) as resp:
        assert resp.headers["content-type"] == "application/x-ndjson"
        lines = [json.loads(line) async for line in resp.aiter_lines()]
    statuses = [line["status"] for line in lines]
    assert statuses[0] == "pulling manifest"
    assert statuses[-3:] == ["verifying sha256 digest", "writing manifest", "success"]
    layers = lines[1:-3]
    assert len(layers) == 6 * (1 + 3)  # a first line with no bytes yet, then 3 steps
    for line in layers:
        digest = line["digest"]
        assert re.fullmatch(r"sha256:[0-9a-f]{64}", digest)
        assert line["status"] == f"pulling {digest[7:19]}"
        assert 0 < line.get("completed", 1) <= line["total"]
    assert "completed" not in layers[0]
    assert layers[3]["completed"] == layers[3]["total"]
    assert emu.find_model("mistral:latest") is not None
    tags = (await client.get("/api/tags")).json()["models"]
    assert tags[0]["name"] == "mistral:latest"
    cached = await client.post("/api/pull", json={"model": "mistral", "stream": False})
    assert (cached.status_code, cached.json()) == (200, {"status": "success"})


async def test_pull_unknown_model(client: httpx.AsyncClient) -> None:
    async with client.stream("POST", "/api/pull", json={"model": "nosuchmodel"}) as resp:
        assert resp.status_code == 200
        lines = [json.loads(line) async for line in resp.aiter_lines()]
    assert lines == [
        {"status": "pulling manifest"},
        {"error": "pull model manifest: file does not exist"},
    ]
    flat = await client.post("/api/pull", json={"model": "nosuchmodel", "stream": False})
    assert flat.status_code == 500
    assert flat.json() == {"error": "pull model manifest: file does not exist"}
    invalid = await client.post("/api/pull", json={"model": "a/b/c/d"})
    assert (invalid.status_code, invalid.json()) == (400, {"error": "invalid model name"})


async def test_records_requests(emu: OllamaEmulator, client: httpx.AsyncClient) -> None:
    await client.post("/api/show", json={"model": "llama3.2"}, headers={"X-Test": "1"})
    recorded = emu.requests[-1]
    assert (recorded.method, recorded.path) == ("POST", "/api/show")
    assert recorded.json == {"model": "llama3.2"}
    assert recorded.headers["x-test"] == "1"
    assert "origin" not in recorded.headers
    assert recorded.headers["host"] == emu.url.removeprefix("http://")


async def test_custom_config_models() -> None:
    config = EmulatorConfig(models=[ModelSpec.preset("qwen3")], version="0.0.0")
    async with OllamaEmulator(config) as emulator, httpx.AsyncClient(base_url=emulator.url) as http:
        assert (await http.get("/api/version")).json() == {"version": "0.0.0"}


async def test_keep_alive_units(emu: OllamaEmulator, client: httpx.AsyncClient) -> None:
    """A number is seconds, a string a Go duration, a negative value forever (ollama-api §3);
    a string without a unit, or another type, is a 400."""

    async def expiry(keep_alive: object) -> tuple[int, str]:
        load = {"model": "llama3.2", "prompt": "", "keep_alive": keep_alive}
        answer = await client.post("/api/generate", json=load)
        (model,) = (await client.get("/api/ps")).json()["models"]
        return answer.status_code, model["expires_at"]

    status, seconds = await expiry(60)
    assert status == 200
    _, minutes = await expiry("10m")
    _, forever = await expiry(-1)
    assert 500 < _unix(minutes) - _unix(seconds) < 700  # 10 min against 60 s, not 60 ms
    assert forever.startswith("2319-")
    refusals = [("5", 'time: invalid duration "5"'), (True, "Unsupported type: 'bool'")]
    for refused, error in refusals:
        load = {"model": "llama3.2", "keep_alive": refused}
        answer = await client.post("/api/generate", json=load)
        assert (answer.status_code, answer.json()) == (400, {"error": error})


def _unix(rfc3339: str) -> float:
    """Seconds of an RFC 3339 UTC time (`Z`, up to nanoseconds: cut to microseconds)."""
    return datetime.fromisoformat(rfc3339[:26].rstrip("Z") + "+00:00").timestamp()


async def test_show_verbose_fills_the_tokenizer_arrays(client: httpx.AsyncClient) -> None:
    brief = (await client.post("/api/show", json={"model": "llama3.2"})).json()
    verbose = (await client.post("/api/show", json={"model": "llama3.2", "verbose": True})).json()
    assert brief["model_info"]["tokenizer.ggml.tokens"] == []
    assert len(verbose["model_info"]["tokenizer.ggml.tokens"]) > 0


async def test_chat_with_an_embedding_model_and_raw_mode_with_a_template_are_refused(
    emu: OllamaEmulator, client: httpx.AsyncClient
) -> None:
    emu.config.models.append(ModelSpec.preset("nomic-embed-text"))
    chat = {"model": "nomic-embed-text", "messages": USER_HI}
    embedding = await client.post("/api/chat", json=chat)
    raw = {"model": "llama3.2", "prompt": "x", "raw": True, "template": "{{ .Prompt }}"}
    templated = await client.post("/api/generate", json=raw)
    assert (embedding.status_code, embedding.json()) == (
        400,
        {"error": '"nomic-embed-text" does not support chat'},
    )
    assert (templated.status_code, templated.json()) == (
        400,
        {"error": "raw mode does not support template, system, or context"},
    )


async def test_the_deprecated_name_field_and_a_non_streamed_pull_of_nothing(
    emu: OllamaEmulator, client: httpx.AsyncClient
) -> None:
    """`name` still works for show, pull and delete (ollama-api §5, §7); a pull of a model
    the registry lacks, not streamed, is a 500 (streamed: a 200, then an error line)."""
    assert (await client.post("/api/show", json={"name": "llama3.2"})).status_code == 200
    missing = await client.post("/api/pull", json={"name": "nosuch", "stream": False})
    assert (missing.status_code, missing.json()) == (
        500,
        {"error": "pull model manifest: file does not exist"},
    )
    deleted = await client.request("DELETE", "/api/delete", json={"name": "llama3.2"})
    assert (deleted.status_code, deleted.content) == (200, b"")
    assert emu.find_model("llama3.2") is None
