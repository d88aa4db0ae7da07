"""`ollama-web create-admin` and `ollama-web users ...` against a real database."""

from __future__ import annotations

import asyncio
import io
from collections.abc import Callable
from pathlib import Path

import pytest
from sqlalchemy import select

from ollama_web.auth.passwords import passwords_for
from ollama_web.cli import main
from ollama_web.core.config import Settings
from ollama_web.core.db import create_null_pool_engine, create_sessionmaker, session_scope
from ollama_web.db import AuditEvent, User
from tests.conftest import TEST_SECRET

PASSWORD = "cli admin password"


@pytest.fixture
def cli_settings(
    settings_factory: Callable[..., Settings],
    database_url: str | None,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> Settings:
    """The command reads its settings from the environment, like in production."""
    settings = settings_factory(database_url=database_url)
    monkeypatch.chdir(tmp_path)  # no stray .env
    monkeypatch.setenv("SECRET_KEY", TEST_SECRET)
    monkeypatch.setenv("DATA_DIR", str(settings.data_dir))
    monkeypatch.setenv("LOG_DIR", str(settings.log_dir))
    if database_url:
        monkeypatch.setenv("DATABASE_URL", database_url)
    return settings


def run(monkeypatch: pytest.MonkeyPatch, args: list[str], stdin: str = "") -> int:
    monkeypatch.setattr("sys.stdin", io.StringIO(stdin))
    return main(args)


def users(settings: Settings) -> dict[str, User]:
    async def load() -> dict[str, User]:
        engine = create_null_pool_engine(settings)
        try:
            async with session_scope(create_sessionmaker(engine)) as session:
                rows = (await session.scalars(select(User))).all()
                return {row.username: row for row in rows}
        finally:
            await engine.dispose()

    return asyncio.run(load())


def audit_actions(settings: Settings) -> list[str]:
    async def load() -> list[str]:
        engine = create_null_pool_engine(settings)
        try:
            async with session_scope(create_sessionmaker(engine)) as session:
                stmt = select(AuditEvent.action).order_by(AuditEvent.created_at)
                return list((await session.scalars(stmt)).all())
        finally:
            await engine.dispose()

    return asyncio.run(load())


def test_create_admin_reads_the_password_from_stdin(
    cli_settings: Settings, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["create-admin", "--username", "boss", "--email", "boss@example.org"]
    code = run(monkeypatch, [*args, "--password-stdin"], PASSWORD + "\n")

    assert code == 0
    assert "created admin boss" in capsys.readouterr().out
    boss = users(cli_settings)["boss"]
    assert boss.role == "admin"
    assert boss.email == "boss@example.org"
    assert passwords_for(cli_settings).verify(boss.password_hash, PASSWORD)
    assert audit_actions(cli_settings) == ["cli.admin_created"]


def test_create_admin_prompts_twice_without_stdin(
    cli_settings: Settings, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    answers = iter([PASSWORD, "something else"])
    monkeypatch.setattr("getpass.getpass", lambda prompt="": next(answers))

    code = run(monkeypatch, ["create-admin", "--username", "boss"])

    assert code == 1
    assert "do not match" in capsys.readouterr().err
    assert "boss" not in users(cli_settings)


def test_create_admin_refuses_weak_passwords_and_existing_users(
    cli_settings: Settings, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["create-admin", "--username", "boss", "--password-stdin"]
    assert run(monkeypatch, args, "short\n") == 1
    assert "at least 8" in capsys.readouterr().err
    assert run(monkeypatch, args, PASSWORD + "\n") == 0

    assert run(monkeypatch, [*args[:2], "BOSS", args[3]], PASSWORD + "\n") == 1
    assert "--reset-password" in capsys.readouterr().err
    missing = ["create-admin", "--username", "nobody", "--reset-password", "--password-stdin"]
    assert run(monkeypatch, missing, PASSWORD + "\n") == 1


def test_reset_password_restores_an_admin(
    cli_settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    args = ["create-admin", "--username", "boss", "--password-stdin"]
    assert run(monkeypatch, args, PASSWORD + "\n") == 0
    assert run(monkeypatch, ["users", "disable", "boss"], "") == 1  # the last admin
    assert (
        run(
            monkeypatch,
            ["create-admin", "--username", "second", "--password-stdin"],
            PASSWORD + "\n",
        )
        == 0
    )
    assert run(monkeypatch, ["users", "disable", "boss"], "") == 0
    assert users(cli_settings)["boss"].is_active is False

    code = run(monkeypatch, [*args, "--reset-password"], "a new password\n")

    assert code == 0
    boss = users(cli_settings)["boss"]
    assert boss.is_active is True
    assert boss.role == "admin"
    assert passwords_for(cli_settings).verify(boss.password_hash, "a new password")
    assert "cli.password_reset" in audit_actions(cli_settings)


def test_users_list_and_enable(
    cli_settings: Settings, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    for name in ("boss", "helper"):
        args = ["create-admin", "--username", name, "--password-stdin"]
        assert run(monkeypatch, args, PASSWORD + "\n") == 0
    assert run(monkeypatch, ["users", "disable", "helper"]) == 0
    capsys.readouterr()

    assert run(monkeypatch, ["users", "list"]) == 0
    listing = capsys.readouterr().out.splitlines()
    assert listing[0].split() == ["USERNAME", "ROLE", "ACTIVE", "CREATED"]
    assert [line.split()[:3] for line in listing[1:]] == [
        ["boss", "admin", "yes"],
        ["helper", "admin", "no"],
    ]
    assert run(monkeypatch, ["users", "enable", "helper"]) == 0
    assert users(cli_settings)["helper"].is_active is True
    assert run(monkeypatch, ["users", "disable", "ghost"]) == 1


def test_the_password_is_never_a_command_line_argument() -> None:
    with pytest.raises(SystemExit):
        main(["create-admin", "--username", "boss", "--password", PASSWORD])
