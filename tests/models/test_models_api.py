"""`/api/models`: merged listing, node test, details, running models, delete — two nodes."""

from __future__ import annotations

from urllib.parse import unquote

import pytest

from ollama_web.emulator import ModelSpec, OllamaEmulator
from tests.models.conftest import Cluster
from tests.ollama.streams import collect


def tags_calls(emulator: OllamaEmulator) -> int:
    return sum(1 for r in emulator.requests if r.path == "/api/tags")


async def test_models_of_both_nodes_are_merged_by_canonical_name(cluster: Cluster) -> None:
    response = await cluster.client.get("/api/models", headers=cluster.user.headers)
    assert response.status_code == 200
    body = response.json()
    by_name = {m["name"]: m for m in body["models"]}
    assert list(by_name) == ["llama3.2:latest", "mistral:latest", "qwen3:latest"]
    a, b = cluster.node_a.url, cluster.node_b.url
    assert by_name["llama3.2:latest"]["nodes"] == [a, b]
    assert by_name["qwen3:latest"]["nodes"] == [a]
    assert by_name["mistral:latest"]["nodes"] == [b]
    qwen = by_name["qwen3:latest"]
    assert qwen["family"] == "qwen3"
    assert qwen["parameter_size"] == "8.2B"
    assert qwen["quantization_level"] == "Q4_K_M"
    assert qwen["size"] == 5225388164
    assert qwen["capabilities"] == ["completion", "tools", "thinking"]
    assert qwen["context_length"] == 40960
    assert qwen["modified_at"]
    assert body["nodes"] == [
        {"url": a, "status": "up", "error": None},
        {"url": b, "status": "up", "error": None},
    ]


async def test_a_model_whose_families_ollama_sends_as_null_lists_none(cluster: Cluster) -> None:
    """Ollama sends `details.families: null` for some models (a Go nil slice)."""
    for node in (cluster.node_a, cluster.node_b):
        for spec in node.config.models:
            spec.families_null = True
    response = await cluster.client.get("/api/models", headers=cluster.user.headers)
    assert response.status_code == 200
    by_name = {m["name"]: m for m in response.json()["models"]}
    assert by_name["qwen3:latest"]["families"] == []
    assert by_name["qwen3:latest"]["family"] == "qwen3"


async def test_one_node_down_still_lists_the_other_and_reports_it(cluster: Cluster) -> None:
    await cluster.node_b.stop()
    response = await cluster.client.get("/api/models", headers=cluster.user.headers)
    assert response.status_code == 200
    body = response.json()
    assert [m["name"] for m in body["models"]] == ["llama3.2:latest", "qwen3:latest"]
    assert all(m["nodes"] == [cluster.node_a.url] for m in body["models"])
    down = body["nodes"][1]
    assert down["url"] == cluster.node_b.url
    assert down["status"] == "down"
    assert down["error"].startswith("connection failed")


async def test_a_model_whose_only_node_is_down_is_unavailable_not_unknown(
    cluster: Cluster,
) -> None:
    """mistral is on node b alone. With b down it is out of reach, not gone: 503
    OLLAMA_UNAVAILABLE naming b (a chat keeps the user's message), where it was 404
    MODEL_NOT_FOUND ("check available models"). A model no node ever listed is still 404."""
    headers = cluster.user.headers
    assert (await cluster.client.get("/api/models", headers=headers)).status_code == 200
    await cluster.node_b.stop()
    shown = await cluster.client.get("/api/models/mistral", headers=headers)
    assert (shown.status_code, shown.json()["error"]) == (503, "OLLAMA_UNAVAILABLE"), shown.text
    assert [n["url"] for n in shown.json()["details"]["nodes"]] == [cluster.node_b.url]
    body = {"model": "mistral", "content": "are you there?"}
    chat = await cluster.client.post("/api/chat/message", json=body, headers=headers)
    assert (chat.status_code, chat.json()["error"]) == (503, "OLLAMA_UNAVAILABLE")
    conversation_id = chat.json()["details"]["conversation_id"]
    stored = await cluster.client.get(f"/api/conversations/{conversation_id}", headers=headers)
    assert [m["content"] for m in stored.json()["messages"]] == ["are you there?"]
    unknown = await cluster.client.get("/api/models/nothing-like-it", headers=headers)
    assert (unknown.status_code, unknown.json()["error"]) == (404, "MODEL_NOT_FOUND")
    admin = cluster.admin.headers
    anywhere = await cluster.client.delete("/api/models/mistral", headers=admin)
    on_b = await cluster.client.delete(
        "/api/models/mistral", params={"node": cluster.node_b.url}, headers=admin
    )
    for response in (anywhere, on_b):
        assert (response.status_code, response.json()["error"]) == (503, "OLLAMA_UNAVAILABLE")
    assert cluster.node_b.url in on_b.json()["message"]  # not "no node is reachable"


async def test_all_nodes_down_is_503(cluster: Cluster) -> None:
    await cluster.node_a.stop()
    await cluster.node_b.stop()
    response = await cluster.client.get("/api/models", headers=cluster.user.headers)
    assert response.status_code == 503
    body = response.json()
    assert body["error"] == "OLLAMA_UNAVAILABLE"
    assert [n["status"] for n in body["details"]["nodes"]] == ["down", "down"]


async def test_connection_test_reports_each_node(cluster: Cluster) -> None:
    ok = await cluster.client.get("/api/models/test", headers=cluster.user.headers)
    await cluster.node_b.stop()
    degraded = await cluster.client.get("/api/models/test", headers=cluster.user.headers)
    await cluster.node_a.stop()
    down = await cluster.client.get("/api/models/test", headers=cluster.user.headers)
    assert ok.status_code == 200
    assert ok.json()["status"] == "ok"
    node = ok.json()["nodes"][0]
    assert node["reachable"] is True
    assert node["version"] == "0.33.0"
    assert node["latency_ms"] > 0
    assert degraded.status_code == 200
    body = degraded.json()
    assert (body["status"], body["reachable"], body["total"]) == ("degraded", 1, 2)
    assert body["nodes"][1]["reachable"] is False
    assert body["nodes"][1]["error"]
    assert down.status_code == 503
    assert down.json()["error"] == "OLLAMA_UNAVAILABLE"
    assert len(down.json()["details"]["nodes"]) == 2


@pytest.mark.parametrize("path", ["/api/models", "/api/models/test", "/api/models/llama3.2"])
async def test_model_routes_need_authentication(cluster: Cluster, path: str) -> None:
    response = await cluster.client.get(path)
    assert (response.status_code, response.json()["error"]) == (401, "UNAUTHENTICATED")


async def test_details_come_from_show(cluster: Cluster) -> None:
    response = await cluster.client.get("/api/models/llama3.2", headers=cluster.user.headers)
    assert response.status_code == 200
    body = response.json()
    assert body["name"] == "llama3.2:latest"
    assert body["node"] == cluster.node_a.url
    assert body["context_length"] == 131072
    assert body["architecture"] == "llama"
    assert body["capabilities"] == ["completion", "tools"]
    assert body["parameters"]["stop"] == ["<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"]
    assert "{{ .System }}" in body["template"]
    assert body["license"].startswith("EMULATOR")
    assert body["parameter_count"] == 3_200_000_000


async def test_names_with_slashes_and_colons_work_in_paths(cluster: Cluster) -> None:
    cluster.node_b.config.models.append(ModelSpec("hf.co/bartowski/Llama-3.2-1B-GGUF:Q4_K_M"))
    response = await cluster.client.get(
        "/api/models/hf.co/bartowski/Llama-3.2-1B-GGUF:Q4_K_M", headers=cluster.user.headers
    )
    assert response.status_code == 200
    assert response.json()["name"] == "hf.co/bartowski/Llama-3.2-1B-GGUF:Q4_K_M"
    assert response.json()["node"] == cluster.node_b.url


@pytest.mark.parametrize("name", ["bad%20name", "a/b/c/d", "x:", "-x", "mod%C3%A8le"])
async def test_invalid_names_are_422_before_any_upstream_call(cluster: Cluster, name: str) -> None:
    for emulator in (cluster.node_a, cluster.node_b):
        emulator.reset_counters()
    response = await cluster.client.get(f"/api/models/{name}", headers=cluster.user.headers)
    deleted = await cluster.client.delete(f"/api/models/{name}", headers=cluster.admin.headers)
    body = {"name": unquote(name)}
    pulled = await cluster.client.post("/api/models/pull", json=body, headers=cluster.admin.headers)
    cancel = "/api/models/pull/cancel"
    cancelled = await cluster.client.post(cancel, json=body, headers=cluster.admin.headers)
    answers = (response, deleted, pulled, cancelled)
    assert [answer.status_code for answer in answers] == [422] * 4
    assert response.json()["error"] == "VALIDATION_ERROR"
    # The field the name came in (`name`, in the path or the body), as every other 422 says.
    assert [answer.json()["details"]["fields"][0]["loc"] for answer in answers] == [["name"]] * 4
    assert cluster.node_a.requests == []
    assert cluster.node_b.requests == []


async def test_unknown_model_details_are_404(cluster: Cluster) -> None:
    response = await cluster.client.get("/api/models/nope:1b", headers=cluster.user.headers)
    assert response.status_code == 404
    assert response.json()["error"] == "MODEL_NOT_FOUND"
    assert response.json()["details"] == {
        "model_name": "nope:1b",
        "suggestion": "Check available models using /api/models endpoint",
    }


async def test_running_models_per_node(cluster: Cluster) -> None:
    async with cluster.app.state.gateway.open_chat("mistral", []) as stream:
        await collect(stream)
    response = await cluster.client.get("/api/models/running", headers=cluster.user.headers)
    assert response.status_code == 200
    (running,) = response.json()["models"]
    assert running["name"] == "mistral:latest"
    assert running["node"] == cluster.node_b.url
    assert running["size_vram"] == running["size"]
    assert running["expires_at"]
    assert [n["status"] for n in response.json()["nodes"]] == ["up", "up"]


async def test_delete_removes_from_every_node_and_refreshes_the_list(cluster: Cluster) -> None:
    headers = cluster.admin.headers
    assert (await cluster.client.get("/api/models", headers=headers)).status_code == 200
    response = await cluster.client.delete("/api/models/LLAMA3.2", headers=headers)
    assert response.status_code == 204
    assert response.content == b""
    assert cluster.node_a.find_model("llama3.2") is None
    assert cluster.node_b.find_model("llama3.2") is None
    listed = (await cluster.client.get("/api/models", headers=headers)).json()["models"]
    assert [m["name"] for m in listed] == ["mistral:latest", "qwen3:latest"]
    again = await cluster.client.delete("/api/models/llama3.2", headers=headers)
    assert (again.status_code, again.json()["error"]) == (404, "MODEL_NOT_FOUND")


async def test_delete_on_one_node_only(cluster: Cluster) -> None:
    response = await cluster.client.delete(
        "/api/models/llama3.2", params={"node": cluster.node_b.url}, headers=cluster.admin.headers
    )
    assert response.status_code == 204
    assert cluster.node_a.find_model("llama3.2") is not None
    assert cluster.node_b.find_model("llama3.2") is None


async def test_delete_when_no_node_answers_is_503_not_404(cluster: Cluster) -> None:
    await cluster.node_b.stop()
    headers = cluster.admin.headers
    on_b = await cluster.client.delete(
        "/api/models/mistral", params={"node": cluster.node_b.url}, headers=headers
    )
    await cluster.node_a.stop()
    anywhere = await cluster.client.delete("/api/models/llama3.2", headers=headers)
    for response in (on_b, anywhere):
        assert (response.status_code, response.json()["error"]) == (503, "OLLAMA_UNAVAILABLE")
    assert [n["url"] for n in on_b.json()["details"]["nodes"]] == [cluster.node_b.url]
    assert [n["status"] for n in anywhere.json()["details"]["nodes"]] == ["down", "down"]


async def test_delete_missing_on_a_reachable_node_is_404_even_with_another_down(
    cluster: Cluster,
) -> None:
    await cluster.node_b.stop()
    response = await cluster.client.delete("/api/models/mistral", headers=cluster.admin.headers)
    assert (response.status_code, response.json()["error"]) == (404, "MODEL_NOT_FOUND")


async def test_delete_on_an_unknown_node_is_422(cluster: Cluster) -> None:
    response = await cluster.client.delete(
        "/api/models/llama3.2", params={"node": "http://nope:1"}, headers=cluster.admin.headers
    )
    assert (response.status_code, response.json()["error"]) == (422, "VALIDATION_ERROR")
    assert response.json()["details"]["nodes"] == [cluster.node_a.url, cluster.node_b.url]
    assert cluster.node_a.find_model("llama3.2") is not None


async def test_delete_is_admin_only(cluster: Cluster) -> None:
    response = await cluster.client.delete("/api/models/llama3.2", headers=cluster.user.headers)
    anonymous = await cluster.client.delete("/api/models/bad name")
    assert (response.status_code, response.json()["error"]) == (403, "FORBIDDEN")
    assert anonymous.status_code == 401  # authentication before validation
    assert cluster.node_a.find_model("llama3.2") is not None


class TestListCache:
    @pytest.fixture
    def cluster_settings(self) -> dict[str, float]:
        return {"ollama_health_cache_seconds": 60.0}

    async def test_the_list_is_cached_and_refreshed_after_a_delete(self, cluster: Cluster) -> None:
        headers = cluster.admin.headers
        for _ in range(3):
            assert (await cluster.client.get("/api/models", headers=headers)).status_code == 200
        assert tags_calls(cluster.node_a) == tags_calls(cluster.node_b) == 1
        await cluster.client.delete("/api/models/qwen3", headers=headers)
        listed = (await cluster.client.get("/api/models", headers=headers)).json()["models"]
        assert "qwen3:latest" not in [m["name"] for m in listed]
