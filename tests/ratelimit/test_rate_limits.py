"""Request rate limits with in-process storage: budgets, groups, keys, headers, exemptions."""

from __future__ import annotations

import asyncio
import time

import httpx
from fastapi import FastAPI

from ollama_web.auth.tokens import api_key_display_prefix, generate_api_key, sha256_hex
from ollama_web.core.db import session_scope
from ollama_web.db import ApiKey
from ollama_web.ratelimit.dependencies import rate_limit_storage
from ollama_web.ratelimit.limiter import AUTH, CHAT, DEFAULT, group_for
from tests.conftest import asgi_client
from tests.fixtures.auth import create_test_user
from tests.ratelimit.conftest import LimitedApp

RATE_HEADERS = ("x-ratelimit-limit", "x-ratelimit-remaining", "x-ratelimit-reset")


async def _burst(
    client: httpx.AsyncClient, count: int, path: str = "/info", **kwargs: object
) -> list[httpx.Response]:
    method = str(kwargs.pop("method", "GET"))
    return list(
        await asyncio.gather(*(client.request(method, path, **kwargs) for _ in range(count)))  # type: ignore[arg-type]
    )


async def test_200_concurrent_requests_against_5_per_minute_let_exactly_5_through(
    limited_app: LimitedApp,
) -> None:
    app = await limited_app(rate_limit_per_minute=5)
    async with asgi_client(app) as client:
        responses = await _burst(client, 200)
    statuses = [response.status_code for response in responses]
    assert statuses.count(200) == 5
    assert statuses.count(429) == 195
    passed = sorted(
        int(r.headers["x-ratelimit-remaining"]) for r in responses if r.status_code == 200
    )
    assert passed == [0, 1, 2, 3, 4]
    refused = next(r for r in responses if r.status_code == 429)
    body = refused.json()
    assert body["error"] == "RATE_LIMITED"
    assert body["details"]["group"] == DEFAULT
    assert body["request_id"] == refused.headers["x-request-id"]
    assert 1 <= int(refused.headers["retry-after"]) <= 60
    assert refused.headers["x-ratelimit-limit"] == "5"
    assert refused.headers["x-ratelimit-remaining"] == "0"
    assert int(refused.headers["x-ratelimit-reset"]) >= int(time.time())


async def test_every_limited_response_carries_the_rate_headers(limited_app: LimitedApp) -> None:
    app = await limited_app(rate_limit_per_minute=50)
    async with asgi_client(app) as client:
        for path in ("/info", "/docs", "/docs/static/swagger-init.js", "/api/chat/probe"):
            response = await client.get(path)
            assert response.status_code == 200, path
            assert all(name in response.headers for name in RATE_HEADERS), path
        unmatched = await client.get("/no-such-route")
        assert unmatched.status_code == 404
        assert "x-ratelimit-limit" not in unmatched.headers, "no route, nothing counted"
        error = await client.get("/api/auth/me")
    assert error.status_code == 401
    assert all(name in error.headers for name in RATE_HEADERS)


async def test_health_endpoints_are_exempt(limited_app: LimitedApp) -> None:
    app = await limited_app(rate_limit_per_minute=1)
    async with asgi_client(app) as client:
        for path in ("/health", "/health/live", "/health/ready"):
            responses = await _burst(client, 20, path)
            assert {r.status_code for r in responses} == {200}, path
            assert "x-ratelimit-limit" not in responses[0].headers
        exempt = await _burst(client, 5, "/api/unlimited-probe")
        assert {r.status_code for r in exempt} == {200}


async def test_switched_off_means_no_limit_and_no_headers(limited_app: LimitedApp) -> None:
    app = await limited_app(rate_limit_enabled=False, rate_limit_per_minute=1)
    async with asgi_client(app) as client:
        responses = await _burst(client, 30)
    assert {r.status_code for r in responses} == {200}
    assert "x-ratelimit-limit" not in responses[0].headers
    assert rate_limit_storage(app) is not None, "the storage stays for the login throttle"


async def test_groups_have_their_own_budgets(limited_app: LimitedApp) -> None:
    app = await limited_app(
        rate_limit_per_minute=3, rate_limit_chat_per_minute=2, rate_limit_auth_per_minute=1
    )
    async with asgi_client(app) as client:
        chat = [(await client.get("/api/chat/probe")).status_code for _ in range(3)]
        auth = [(await client.post("/api/auth/login-probe")).status_code for _ in range(2)]
        default = [(await client.get("/info")).status_code for _ in range(4)]
        verify = await client.post("/api/auth/verify")
    assert chat == [200, 200, 429]
    assert auth == [200, 429]
    assert default == [200, 200, 200, 429]
    # The real credential check shares the auth budget of this address (already spent).
    assert verify.status_code == 429
    assert verify.json()["details"]["group"] == AUTH


async def test_bodies_that_are_not_json_count_and_are_refused_once_over_the_limit(
    limited_app: LimitedApp,
) -> None:
    """FastAPI refuses a body that is not JSON before any dependency runs: such requests
    count as any other (a login flood of broken JSON included), each once, and over the
    limit the answer is 429, not 400."""
    app = await limited_app(rate_limit_per_minute=4, rate_limit_auth_per_minute=2)
    user = await create_test_user(app)
    bodies = [
        (b'{"title":', "application/json"),
        (b"{}", "application/json"),
        (b'{"title": "x"}', "text/plain"),  # read by FastAPI, refused after the dependencies
        (b'{"title":', "application/json"),
        (b'{"title":', "application/json"),
    ]
    json_type = {"content-type": "application/json"}
    async with asgi_client(app) as client:
        statuses = []
        for body, media_type in bodies:
            headers = {**user.headers, "content-type": media_type}
            response = await client.post("/api/conversations", content=body, headers=headers)
            statuses.append(response.status_code)
        logins = [
            (await client.post("/api/auth/login", content=b"{", headers=json_type)).status_code
            for _ in range(3)
        ]
    assert statuses == [400, 422, 415, 400, 429]
    assert logins == [400, 400, 429]


def test_groups_follow_the_route_templates() -> None:
    assert group_for("/api/auth/login", "POST") == AUTH
    assert group_for("/api/auth/setup", "POST") == AUTH
    assert group_for("/api/auth/password", "POST") == AUTH
    assert group_for("/api/auth/verify", "POST") == AUTH
    assert group_for("/api/auth/setup", "GET") == DEFAULT
    assert group_for("/api/auth/me", "GET") == DEFAULT
    assert group_for("/api/chat/stream", "POST") == CHAT
    assert group_for("/api/chat/{message_id}/stop", "POST") == CHAT
    assert group_for("/api/chatty", "GET") == DEFAULT
    assert group_for("/api/conversations", "POST") == DEFAULT
    for path in ("/health", "/health/live", "/health/ready"):
        assert group_for(path, "GET") is None


async def test_authenticated_requests_are_limited_per_user_not_per_address(
    limited_app: LimitedApp,
) -> None:
    app = await limited_app(rate_limit_per_minute=3)
    alice = await create_test_user(app)
    bob = await create_test_user(app)
    second_key = generate_api_key()
    async with session_scope(app.state.core.sessionmaker) as session:
        session.add(
            ApiKey(
                user_id=alice.id,
                name="second",
                prefix=api_key_display_prefix(second_key),
                key_hash=sha256_hex(second_key),
            )
        )
    async with asgi_client(app) as client:
        first_key = [
            (await client.get("/api/auth/me", headers=alice.headers)).status_code for _ in range(2)
        ]
        other_key = [
            (await client.get("/api/auth/me", headers={"X-API-Key": second_key})).status_code
            for _ in range(2)
        ]
        bob_statuses = [
            (await client.get("/api/auth/me", headers=bob.headers)).status_code for _ in range(3)
        ]
        anonymous = [(await client.get("/info")).status_code for _ in range(3)]
    assert first_key + other_key == [200, 200, 200, 429], "one budget for all of a user's keys"
    assert bob_statuses == [200, 200, 200], "another user on the same address has his own"
    assert anonymous == [200, 200, 200], "the address budget is separate from the users'"


async def test_bad_credentials_are_limited_by_address(limited_app: LimitedApp) -> None:
    app = await limited_app(rate_limit_per_minute=2)
    async with asgi_client(app) as client:
        statuses = [
            (
                await client.get("/api/auth/me", headers={"Authorization": f"Bearer owk_bad{i}"})
            ).status_code
            for i in range(3)
        ]
    assert statuses == [401, 401, 429], "rotating garbage keys does not buy a fresh budget"


async def test_forwarded_for_splits_budgets_only_behind_trusted_proxies(
    limited_app: LimitedApp,
) -> None:
    app = await limited_app(rate_limit_per_minute=1, trusted_proxies="127.0.0.1")
    async with asgi_client(app) as client:
        behind_proxy = [
            (await client.get("/info", headers={"X-Forwarded-For": f"198.51.100.{i}"})).status_code
            for i in range(3)
        ]
    assert behind_proxy == [200, 200, 200]

    untrusted = await limited_app(rate_limit_per_minute=1)
    async with asgi_client(untrusted) as client:
        spoofed = [
            (await client.get("/info", headers={"X-Forwarded-For": f"198.51.100.{i}"})).status_code
            for i in range(3)
        ]
    assert spoofed == [200, 429, 429]


async def test_shared_storage_is_a_moving_window_limits_storage(limited_app: LimitedApp) -> None:
    from limits import RateLimitItemPerMinute
    from limits.aio.strategies import MovingWindowRateLimiter

    app: FastAPI = await limited_app()
    storage = rate_limit_storage(app)
    assert storage is not None
    limiter = MovingWindowRateLimiter(storage)
    item = RateLimitItemPerMinute(2)
    results = [await limiter.hit(item, "login-failures", "alice") for _ in range(3)]
    assert results == [True, True, False]
