"""Every error has one shape, the right status, and a request id; nothing internal leaks."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import APIRouter, FastAPI
from pydantic import BaseModel, Field

from ollama_web.core.config import Settings
from ollama_web.middleware import body_limit
from tests.conftest import asgi_client

probe = APIRouter()


class Item(BaseModel):
    name: str = Field(max_length=10)
    count: int


@probe.post("/_probe/items")
async def create_item(item: Item) -> dict[str, Any]:
    return item.model_dump()


@probe.get("/_probe/boom")
async def boom() -> None:
    raise RuntimeError("internal detail: password=hunter2 Authorization: Bearer owk_leakme")


@probe.get("/_probe/boom/{anything:path}")
async def boom_at(anything: str) -> None:
    raise RuntimeError("boom")


@pytest.fixture
async def probe_client(
    app_factory: Callable[[Settings], Any], settings_factory: Callable[..., Settings]
) -> Any:
    settings = settings_factory(max_request_bytes=2048)
    app: FastAPI = await app_factory(settings)
    app.include_router(probe)
    async with asgi_client(app) as client:
        yield client, settings


def assert_error_shape(response: httpx.Response, status: int, code: str) -> dict[str, Any]:
    assert response.status_code == status
    body: dict[str, Any] = response.json()
    assert set(body) == {"error", "message", "details", "request_id"}
    assert body["error"] == code
    assert body["request_id"] == response.headers["x-request-id"]
    return body


async def test_unknown_route_is_structured_404(probe_client: Any) -> None:
    client, _ = probe_client
    assert_error_shape(await client.get("/no/such/route"), 404, "NOT_FOUND")


async def test_wrong_method_is_structured_405(probe_client: Any) -> None:
    client, _ = probe_client
    assert_error_shape(await client.delete("/health"), 405, "METHOD_NOT_ALLOWED")


@pytest.mark.parametrize(
    ("path", "allowed"),
    [
        # One route per method: the router's own 405 named only the first one it found.
        ("/api/admin/users", "GET, HEAD, POST"),
        ("/api/admin/users/0123456789abcdef0123456789abcdef", "GET, HEAD, PATCH, DELETE"),
        ("/api/conversations/0123456789abcdef0123456789abcdef", "GET, HEAD, PUT, PATCH, DELETE"),
        ("/api/keys", "GET, HEAD, POST"),
        ("/health", "GET, HEAD"),
        ("/api/auth/login", "POST"),
    ],
)
async def test_405_allows_every_method_the_path_serves(
    client: httpx.AsyncClient, path: str, allowed: str
) -> None:
    """RFC 9110 15.5.6: a 405 lists in `Allow` the methods the resource supports."""
    methods = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")
    refused = [method for method in methods if method not in allowed.split(", ")]
    for method in refused:
        response = await client.request(method, path)
        if method != "HEAD":
            assert_error_shape(response, 405, "METHOD_NOT_ALLOWED")
        assert response.status_code == 405
        assert response.headers["allow"] == allowed
    for method in allowed.split(", "):  # each one listed is served (by auth's 401 at least)
        assert (await client.request(method, path)).status_code != 405


async def test_malformed_json_is_400(probe_client: Any) -> None:
    client, _ = probe_client
    response = await client.post(
        "/_probe/items", content=b'{"name": ', headers={"content-type": "application/json"}
    )
    assert_error_shape(response, 400, "INVALID_JSON")


async def test_wrong_types_are_422_with_field_errors(probe_client: Any) -> None:
    client, _ = probe_client
    response = await client.post("/_probe/items", json={"name": "x" * 11, "count": "many"})
    body = assert_error_shape(response, 422, "VALIDATION_ERROR")
    locations = {tuple(field["loc"]) for field in body["details"]["fields"]}
    assert locations == {("name",), ("count",)}


async def test_body_over_limit_is_413_by_declared_length(probe_client: Any) -> None:
    client, _ = probe_client
    response = await client.post(
        "/_probe/items", content=b"x" * 4096, headers={"content-type": "application/json"}
    )
    assert_error_shape(response, 413, "PAYLOAD_TOO_LARGE")


async def test_body_over_limit_is_413_while_streaming_without_length(
    probe_client: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Refused at the limit: after it, only the bounded rest a 413 reads and drops (so
    that its client reads it, middleware/body_limit.py) is read, here 4 KiB."""
    monkeypatch.setattr(body_limit, "LINGER_MIN_BYTES", 4096)
    client, _ = probe_client
    sent = 0

    async def body() -> Any:
        nonlocal sent
        for _ in range(100):
            sent += 512
            yield b" " * 512

    response = await client.post(
        "/_probe/items", content=body(), headers={"content-type": "application/json"}
    )
    assert_error_shape(response, 413, "PAYLOAD_TOO_LARGE")
    assert sent < 100 * 512, "the body must be refused before it has all been read"


async def test_unexpected_exception_is_500_without_internals_and_logged(
    probe_client: Any,
) -> None:
    client, settings = probe_client
    response = await client.get("/_probe/boom", headers={"X-Request-ID": "trace-me-123"})
    body = assert_error_shape(response, 500, "INTERNAL_ERROR")
    assert body["request_id"] == "trace-me-123"
    assert "hunter2" not in response.text
    assert "RuntimeError" not in response.text
    error_log = (Path(settings.log_dir) / "error.log").read_text()
    assert "trace-me-123" in error_log
    assert "Traceback" in error_log
    assert "hunter2" not in error_log
    assert "owk_leakme" not in error_log


async def test_a_path_cannot_forge_a_line_of_the_error_log(probe_client: Any) -> None:
    """The path is the client's: a CR (`%0D`) or an escape sequence in it must not start a
    line, or rewrite one on a terminal, that looks like ours."""
    client, settings = probe_client
    forged = "2026-11-30 00:00:00,000 ERROR ollama_web.auth: admin password is hunter3"
    response = await client.get("/_probe/boom/x%0D%1B[2K" + forged.replace(" ", "%20"))
    assert response.status_code == 500
    lines = (Path(settings.log_dir) / "error.log").read_text().splitlines()
    assert not [line for line in lines if line.startswith(forged)]
    (logged,) = [line for line in lines if "unhandled error on GET /_probe/boom/x" in line]
    assert "/_probe/boom/x\\r\\x1b[2K2026-11-30" in logged


@pytest.mark.parametrize(
    ("incoming", "kept"),
    [("abc-DEF_1.2", True), ("x" * 129, False), ("bad id", False), ("<script>", False)],
)
async def test_request_id_is_kept_only_when_sane(
    probe_client: Any, incoming: str, kept: bool
) -> None:
    client, _ = probe_client
    response = await client.get("/health/live", headers={"X-Request-ID": incoming})
    assert (response.headers["x-request-id"] == incoming) is kept
