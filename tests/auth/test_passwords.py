"""A password that is no valid text (a lone surrogate) is refused, never hashed: argon2
hashes its UTF-8 bytes, and a surrogate has none (a UnicodeEncodeError: a traceback on the
command line, a 500 over HTTP)."""

from __future__ import annotations

import asyncio
import threading
import time

import httpx
import pytest

from ollama_web.auth.passwords import (
    HASH_THREADS,
    PASSWORD_NOT_UTF8,
    Passwords,
    password_problem,
)
from ollama_web.core.errors import ValidationError
from tests.fixtures.auth import TestUser

# As JSON carries it: the escape, not the character (which no UTF-8 encoder accepts).
LONE_SURROGATE = "\\ud800 and enough other characters"


@pytest.mark.parametrize(
    "password",
    [
        "\udcff\udcfe bad utf8 password long enough here",  # bytes \xff\xfe, decoded by Python
        "a long enough password ending high \ud83d",
        "\udc80",  # not "too short": the reason that applies first
    ],
)
def test_a_password_with_a_lone_surrogate_is_refused(password: str) -> None:
    from ollama_web.auth.users import check_password

    assert password_problem(password) == PASSWORD_NOT_UTF8
    with pytest.raises(ValidationError):
        check_password(password)


def test_a_surrogate_pair_written_as_one_character_is_fine() -> None:
    assert password_problem("an emoji \U0001f600 in a password") is None


async def _post_raw(
    client: httpx.AsyncClient, method: str, path: str, body: str, headers: dict[str, str]
) -> httpx.Response:
    return await client.request(
        method,
        path,
        content=body.encode("ascii"),
        headers={**headers, "content-type": "application/json"},
    )


async def test_every_password_field_over_http_answers_422_for_a_lone_surrogate(
    client: httpx.AsyncClient, admin_user: TestUser
) -> None:
    """The input guard refuses it where the route reads its body, before the route runs
    (setup answers 422, not 409, though users exist): setup, login, password change, and an
    admin creating a user or resetting a password. A 500 would say the guard missed one."""
    requests = [
        ("POST", "/api/auth/setup", f'{{"username": "root", "password": "{LONE_SURROGATE}"}}'),
        ("POST", "/api/auth/login", f'{{"username": "root", "password": "{LONE_SURROGATE}"}}'),
        (
            "POST",
            "/api/auth/password",
            f'{{"current_password": "{LONE_SURROGATE}", "new_password": "{LONE_SURROGATE}"}}',
        ),
        ("POST", "/api/admin/users", f'{{"username": "bob", "password": "{LONE_SURROGATE}"}}'),
        ("PATCH", f"/api/admin/users/{admin_user.id}", f'{{"password": "{LONE_SURROGATE}"}}'),
    ]
    for method, path, body in requests:
        response = await _post_raw(client, method, path, body, admin_user.headers)
        assert response.status_code == 422, (path, response.text)
        assert response.json()["error"] == "VALIDATION_ERROR", path


async def test_hashes_run_on_threads_of_their_own_a_bounded_number_at_once(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A burst of logins waits for the hashing threads (HASH_THREADS at once: each holds
    64 MiB), never in the loop's default executor, which other work needs meanwhile."""
    passwords = Passwords(time_cost=1, memory_kib=64)
    lock = threading.Lock()
    running = most = 0

    def slow_verify(password_hash: str | None, password: str) -> bool:
        nonlocal running, most
        with lock:
            running += 1
            most = max(most, running)
        time.sleep(0.2)
        with lock:
            running -= 1
        return False

    monkeypatch.setattr(passwords, "verify", slow_verify)
    burst = [asyncio.ensure_future(passwords.verify_async(None, "guess")) for _ in range(40)]
    await asyncio.sleep(0.05)
    started = time.perf_counter()
    await asyncio.to_thread(lambda: None)  # what /health's backups check does
    waited = time.perf_counter() - started
    results = await asyncio.gather(*burst)

    assert waited < 0.1
    assert most == HASH_THREADS
    assert results == [False] * 40
    monkeypatch.undo()
    assert await passwords.verify_async(passwords.hash("right one"), "right one") is True
