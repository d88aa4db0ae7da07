"""Security headers on every kind of response, the docs pages under the CSP, and CORS."""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import httpx
import pytest
from fastapi import APIRouter, FastAPI
from fastapi.responses import StreamingResponse

from ollama_web.core.config import Settings
from ollama_web.middleware.security_headers import API_CSP, PAGE_CSP
from tests.conftest import asgi_client

COMMON = {
    "x-frame-options": "DENY",
    "x-content-type-options": "nosniff",
    "referrer-policy": "no-referrer",
    "cross-origin-opener-policy": "same-origin",
}

probe_router = APIRouter()


@probe_router.get("/probe/events")
async def events() -> StreamingResponse:
    async def stream() -> AsyncIterator[bytes]:
        for number in range(3):
            yield f"id: {number}\nevent: tick\ndata: {{}}\n\n".encode()
            await asyncio.sleep(0)

    return StreamingResponse(stream(), media_type="text/event-stream")


@probe_router.get("/probe/crash")
async def crash() -> None:
    raise RuntimeError("boom")


@probe_router.post("/probe/echo")
async def echo(body: dict[str, int]) -> dict[str, int]:
    return body


AppMaker = Callable[..., Awaitable[FastAPI]]


@pytest.fixture
def make_app(
    app_factory: Callable[[Settings], Awaitable[FastAPI]],
    settings_factory: Callable[..., Settings],
) -> AppMaker:
    async def make(**overrides: Any) -> FastAPI:
        app = await app_factory(settings_factory(**overrides))
        app.include_router(probe_router)
        return app

    return make


def assert_protected(response: httpx.Response, *, html: bool = False) -> None:
    for name, value in COMMON.items():
        assert response.headers.get(name) == value, (response.url, name)
    permissions = response.headers["permissions-policy"]
    assert "camera=()" in permissions
    assert "geolocation=()" in permissions
    csp = response.headers["content-security-policy"]
    assert csp == (PAGE_CSP if html else API_CSP), response.url
    assert "frame-ancestors 'none'" in csp
    script_src = re.search(r"(?:script-src|default-src) ([^;]*)", csp)
    assert script_src is not None
    assert "'unsafe-inline'" not in script_src.group(1)
    assert "strict-transport-security" not in response.headers  # plain http by default


async def test_nothing_sensitive_is_cached_and_routes_keep_their_own_cache_control(
    make_app: AppMaker,
) -> None:
    """The first admin's API key, a new key, the CSRF token, who I am: `no-store`, as every
    answer without a Cache-Control of its own; the docs assets keep theirs."""
    app = await make_app()
    async with asgi_client(app) as client:
        setup = await client.post(
            "/api/auth/setup", json={"username": "admin", "password": "a long passphrase"}
        )
        headers = {"Authorization": f"Bearer {setup.json()['api_key']}"}
        answers = [
            setup,
            await client.post("/api/keys", json={"name": "laptop"}, headers=headers),
            await client.get("/api/auth/me", headers=headers),
            await client.get("/api/auth/csrf"),
            await client.get("/api/conversations", headers=headers),
            await client.get("/api/conversations/" + "0" * 32, headers=headers),
        ]
        asset = await client.get("/docs/static/swagger-ui-bundle.js")
    assert [a.status_code for a in answers] == [201, 201, 200, 200, 200, 404]
    for answer in answers:
        assert answer.headers["cache-control"] == "no-store", answer.url
    assert asset.headers["cache-control"] == "public, max-age=86400"


async def test_headers_on_json_errors_files_and_pages(make_app: AppMaker) -> None:
    app = await make_app(max_request_bytes=2048)
    async with asgi_client(app) as client:
        cases = {
            "json": await client.get("/info"),
            "not found": await client.get("/no/such/route"),
            "unauthenticated": await client.get("/api/auth/me"),
            "method not allowed": await client.delete("/info"),
            "invalid json": await client.post(
                "/probe/echo", content=b"{nope", headers={"content-type": "application/json"}
            ),
            "validation": await client.post("/probe/echo", json={"a": "x"}),
            "too large": await client.post("/probe/echo", content=b"x" * 4096),
            "unexpected 500": await client.get("/probe/crash"),
            "docs asset": await client.get("/docs/static/swagger-ui-bundle.js"),
        }
        pages = {"swagger": await client.get("/docs"), "redoc": await client.get("/redoc")}
    expected = {
        "json": 200, "not found": 404, "unauthenticated": 401, "method not allowed": 405,
        "invalid json": 400, "validation": 422, "too large": 413, "unexpected 500": 500,
        "docs asset": 200,
    }  # fmt: skip
    for name, status in expected.items():
        assert cases[name].status_code == status, name
        assert_protected(cases[name])
    assert cases["unexpected 500"].json()["error"] == "INTERNAL_ERROR"
    for page in pages.values():
        assert page.status_code == 200
        assert_protected(page, html=True)


async def test_headers_on_a_real_event_stream(make_app: AppMaker, live_server: Any) -> None:
    app = await make_app()
    async with (
        live_server(app) as base_url,
        httpx.AsyncClient(base_url=base_url) as client,
        client.stream("GET", "/probe/events") as response,
    ):
        assert response.headers["content-type"].startswith("text/event-stream")
        assert_protected(response)
        body = b"".join([chunk async for chunk in response.aiter_bytes()])
    assert body.count(b"event: tick") == 3


async def test_docs_pages_load_only_what_their_policy_allows(make_app: AppMaker) -> None:
    app = await make_app()
    async with asgi_client(app) as client:
        for page in ("/docs", "/redoc"):
            html = (await client.get(page)).text
            assert not re.search(r"<script(?![^>]*\bsrc=)[^>]*>", html), "inline script"
            assert not re.search(r"\son[a-z]+\s*=", html), "inline event handler"
            for url in re.findall(r'(?:src|href)="([^"]+)"', html):
                assert url.startswith("/"), f"{page} loads {url} from another origin"
                assert (await client.get(url)).status_code == 200, url
    directives = dict(part.strip().split(" ", 1) for part in PAGE_CSP.split(";"))
    assert directives["script-src"] == "'self'"
    assert "blob:" in directives["worker-src"], "ReDoc runs its search worker from a blob"
    assert "data:" in directives["img-src"], "Swagger UI draws icons from data: URLs"
    assert directives["connect-src"] == "'self'", "the pages fetch /openapi.json"


async def test_hsts_on_https_or_when_enabled(make_app: AppMaker) -> None:
    app = await make_app(trusted_proxies="127.0.0.1")
    async with asgi_client(app) as client:
        plain = await client.get("/info")
        proxied = await client.get("/info", headers={"X-Forwarded-Proto": "https"})
    transport = httpx.ASGITransport(app=app, client=("127.0.0.1", 50000))
    async with httpx.AsyncClient(transport=transport, base_url="https://testserver") as client:
        direct = await client.get("/info")
    assert "strict-transport-security" not in plain.headers
    assert proxied.headers["strict-transport-security"].startswith("max-age=31536000")
    assert direct.headers["strict-transport-security"].startswith("max-age=31536000")

    forced = await make_app(hsts_enabled=True)
    async with asgi_client(forced) as client:
        assert "strict-transport-security" in (await client.get("/info")).headers

    untrusted = await make_app()
    async with asgi_client(untrusted) as client:
        spoofed = await client.get("/info", headers={"X-Forwarded-Proto": "https"})
    assert "strict-transport-security" not in spoofed.headers


async def test_switched_off_sends_none(make_app: AppMaker) -> None:
    app = await make_app(security_headers_enabled=False)
    async with asgi_client(app) as client:
        response = await client.get("/info")
    assert "content-security-policy" not in response.headers
    assert "x-frame-options" not in response.headers


async def test_cors_allows_listed_origins_with_credentials_never_a_wildcard(
    make_app: AppMaker,
) -> None:
    app = await make_app(cors_origins="http://localhost:5173,https://chat.example.org")
    preflight_headers = {
        "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "authorization,content-type,x-csrf-token",
    }
    async with asgi_client(app) as client:
        allowed = await client.options(
            "/api/conversations",
            headers={"Origin": "https://chat.example.org", **preflight_headers},
        )
        refused = await client.options(
            "/api/conversations", headers={"Origin": "https://evil.example", **preflight_headers}
        )
        simple = await client.get("/info", headers={"Origin": "http://localhost:5173"})
        foreign = await client.get("/info", headers={"Origin": "https://evil.example"})
    assert allowed.status_code == 200
    assert allowed.headers["access-control-allow-origin"] == "https://chat.example.org"
    assert allowed.headers["access-control-allow-credentials"] == "true"
    assert "x-csrf-token" in allowed.headers["access-control-allow-headers"].lower()
    assert_protected(allowed)
    assert refused.status_code == 403
    assert refused.json()["error"] == "FORBIDDEN"
    assert "access-control-allow-origin" not in refused.headers
    assert simple.headers["access-control-allow-origin"] == "http://localhost:5173"
    assert "x-request-id" in simple.headers["access-control-expose-headers"].lower()
    assert "access-control-allow-origin" not in foreign.headers
    for response in (allowed, refused, simple, foreign):
        assert response.headers.get("access-control-allow-origin") != "*"


def test_a_wildcard_origin_is_refused_by_the_settings(
    settings_factory: Callable[..., Settings],
) -> None:
    with pytest.raises(ValueError, match="wildcard"):
        settings_factory(cors_origins="*")
