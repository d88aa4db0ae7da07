"""`ollama-web create-admin` and `ollama-web users ...` against a real database."""

from __future__ import annotations

import asyncio
import io
import os
import pty
import pwd
import selectors
import sqlite3
import subprocess
import sys
import termios
import time
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

import certifi
import pytest
from sqlalchemy import Executable, case, select, update
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncSession

from ollama_web.auth import cli as auth_cli
from ollama_web.auth.passwords import passwords_for
from ollama_web.cli import main
from ollama_web.core.config import Settings
from ollama_web.core.db import create_null_pool_engine, create_sessionmaker, session_scope
from ollama_web.db import AuditEvent, User
from tests.conftest import TEST_SECRET, require_postgres, require_postgres_ca
from tests.fixtures.ports import free_port
from tests.fixtures.privileges import unprivileged

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
    # `$` in a pattern also matches before a final newline: the whole name must match.
    assert run(monkeypatch, ["create-admin", "--username", "eve\n", args[3]], PASSWORD + "\n") == 1
    assert "letters, digits" in capsys.readouterr().err
    assert "eve\n" not in users(cli_settings)


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


def _create_admins(monkeypatch: pytest.MonkeyPatch, *names: str) -> None:
    for name in names:
        args = ["create-admin", "--username", name, "--password-stdin"]
        assert run(monkeypatch, args, PASSWORD + "\n") == 0


def test_users_list_and_enable(
    cli_settings: Settings, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    _create_admins(monkeypatch, "boss", "helper")
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


def test_a_repeated_disable_or_enable_changes_nothing_and_records_nothing(
    cli_settings: Settings, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    _create_admins(monkeypatch, "boss", "helper")
    for command in ("disable", "disable", "enable", "enable"):
        assert run(monkeypatch, ["users", command, "helper"]) == 0
    said = capsys.readouterr().out.splitlines()
    assert said[-4:] == [
        "helper disabled (0 sessions ended)",
        "helper is already disabled",
        "helper enabled",
        "helper is already enabled",
    ]
    recorded = audit_actions(cli_settings)
    assert recorded.count("cli.user_disabled") == recorded.count("cli.user_enabled") == 1


def _execute(settings: Settings, statement: Executable) -> Coroutine[Any, Any, None]:
    async def execute() -> None:
        engine = create_null_pool_engine(settings)
        try:
            async with session_scope(create_sessionmaker(engine)) as session:
                await session.execute(statement)
        finally:
            await engine.dispose()

    return execute()


def test_disabling_a_user_promoted_meanwhile_keeps_an_active_admin(
    cli_settings: Settings, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The command read a plain user; the server then made it the only admin before the
    command wrote: the disable was not checked as an admin's and left none."""
    _create_admins(monkeypatch, "boss", "helper")
    asyncio.run(
        _execute(cli_settings, update(User).where(User.username == "helper").values(role="user"))
    )
    only_helper = update(User).values(role=case((User.username == "helper", "admin"), else_="user"))
    original = auth_cli.find_by_username

    async def then_promote(session: AsyncSession, username: str) -> User | None:
        found = await original(session, username)
        await _execute(cli_settings, only_helper)
        return found

    monkeypatch.setattr(auth_cli, "find_by_username", then_promote)
    capsys.readouterr()

    assert run(monkeypatch, ["users", "disable", "helper"]) == 1
    assert "last active admin" in capsys.readouterr().err
    helper = users(cli_settings)["helper"]
    assert (helper.role, helper.is_active) == ("admin", True)


def test_the_password_is_never_a_command_line_argument() -> None:
    with pytest.raises(SystemExit):
        main(["create-admin", "--username", "boss", "--password", PASSWORD])


def _one_line(stderr: str) -> str:
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr
    return lines[0]


@pytest.mark.parametrize(
    "args",
    [
        ["create-admin", "--username", "boss", "--password-stdin"],
        ["users", "list"],
        ["users", "disable", "boss"],
    ],
)
def test_an_unreachable_database_is_one_line_and_exit_3(
    settings_factory: Callable[..., Settings],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    args: list[str],
) -> None:
    settings = settings_factory()
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("SECRET_KEY", TEST_SECRET)
    monkeypatch.setenv("DATA_DIR", str(settings.data_dir))
    url = f"postgresql://ollama_web:pw-not-shown@127.0.0.1:{free_port()}/ollama_web"
    monkeypatch.setenv("DATABASE_URL", url)

    assert run(monkeypatch, args, PASSWORD + "\n") == 3

    line = _one_line(capsys.readouterr().err)
    assert line.startswith("error: cannot use the database postgresql://ollama_web:***@")
    assert "ConnectionRefusedError" in line
    assert "pw-not-shown" not in line


def test_a_wrong_postgres_password_is_one_line_and_exit_3(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    admin_url = require_postgres()
    user = make_url(admin_url).username
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("SECRET_KEY", TEST_SECRET)
    monkeypatch.setenv("DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv(
        "DATABASE_URL", make_url(admin_url).set(password="pw-not-shown").render_as_string(False)
    )

    assert run(monkeypatch, ["users", "list"]) == 3

    line = _one_line(capsys.readouterr().err)
    assert f'password authentication failed for user "{user}"' in line
    assert "pw-not-shown" not in line


@pytest.mark.parametrize(
    ("query", "said"),
    [
        # The public CAs (httpx's bundle) do not vouch for the test server's own certificate.
        (f"sslmode=verify-full&sslrootcert={certifi.where()}", "verify failed"),
        ("sslmode=verify-ca&sslrootcert=/nonexistent/ca.pem", "No such file or directory"),
    ],
)
def test_a_server_certificate_that_cannot_be_verified_is_one_line_and_exit_3(
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    query: str,
    said: str,
) -> None:
    admin_url = require_postgres()
    require_postgres_ca()  # the server speaks TLS
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("SECRET_KEY", TEST_SECRET)
    monkeypatch.setenv("DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("DATABASE_URL", f"{admin_url}?{query}")

    assert run(monkeypatch, ["users", "list"]) == 3

    line = _one_line(capsys.readouterr().err)
    assert line.startswith("error: cannot use the database postgresql://")
    assert said in line


def test_a_locked_database_is_one_line_and_exit_3(
    settings_factory: Callable[..., Settings],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
) -> None:
    settings = settings_factory()
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("SECRET_KEY", TEST_SECRET)
    monkeypatch.setenv("DATA_DIR", str(settings.data_dir))
    args = ["create-admin", "--username", "boss", "--password-stdin"]
    assert run(monkeypatch, args, PASSWORD + "\n") == 0
    monkeypatch.setattr("ollama_web.core.db.SQLITE_BUSY_TIMEOUT_MS", 100)
    holder = sqlite3.connect(settings.data_dir / "ollama_web.db", isolation_level=None)
    try:
        holder.execute("BEGIN IMMEDIATE")
        capsys.readouterr()
        code = run(
            monkeypatch,
            ["create-admin", "--username", "other", "--password-stdin"],
            PASSWORD + "\n",
        )
        disable = run(monkeypatch, ["users", "disable", "boss"])
    finally:
        holder.close()

    assert (code, disable) == (3, 3)
    for line in capsys.readouterr().err.strip().splitlines():
        assert line == (
            f"error: cannot use the database {settings.data_dir / 'ollama_web.db'}: "
            "OperationalError: database is locked"
        )


def _command_env(tmp_path: Path) -> dict[str, str]:
    """The environment of a command run as a process, on a SQLite database in tmp_path."""
    env = {
        **os.environ,
        "SECRET_KEY": TEST_SECRET,
        "DATA_DIR": str(tmp_path / "data"),
        "LOG_DIR": str(tmp_path / "logs"),
    }
    env.pop("DATABASE_URL", None)
    return env


def test_create_admin_without_a_terminal_nor_password_stdin_says_what_to_do(
    tmp_path: Path,
) -> None:
    env = _command_env(tmp_path)
    result = subprocess.run(
        [sys.executable, "-m", "ollama_web", "create-admin", "--username", "boss"],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        start_new_session=True,  # no controlling terminal, as under cron or CI
        timeout=60,
        check=False,
    )
    assert result.returncode == 1
    assert "--password-stdin" in _one_line(result.stderr)


# Runs a command on the terminal given as its standard input: a new session that takes that
# terminal as its controlling one (getpass reads /dev/tty), with Ctrl+C's default action.
ON_A_TERMINAL = """
import fcntl, os, signal, sys, termios
fcntl.ioctl(0, termios.TIOCSCTTY, 0)
signal.signal(signal.SIGINT, signal.SIG_DFL)
os.execv(sys.executable, [sys.executable, "-m", "ollama_web", *sys.argv[1:]])
"""


def _read_until(terminal: int, wanted: bytes, seconds: float) -> bytes:
    """What the terminal shows until `wanted` (or the time is up, or the command ended)."""
    seen = b""
    deadline = time.monotonic() + seconds
    with selectors.DefaultSelector() as selector:
        selector.register(terminal, selectors.EVENT_READ)
        while wanted not in seen and time.monotonic() < deadline:
            if not selector.select(timeout=0.1):
                continue
            try:
                chunk = os.read(terminal, 4096)
            except OSError:  # EIO: the command ended, its side of the terminal is closed
                break
            if not chunk:
                break
            seen += chunk
    return seen


def test_one_ctrl_c_at_the_password_prompt_interrupts_create_admin(tmp_path: Path) -> None:
    """The prompt ran inside asyncio.run, whose first Ctrl+C only asks its task to cancel:
    the prompt kept waiting, and it took a second Ctrl+C to leave it. One is enough now:
    exit 130, one line, the terminal as it was, and nothing created."""
    terminal, command_side = pty.openpty()
    try:
        process = subprocess.Popen(
            [sys.executable, "-c", ON_A_TERMINAL, "create-admin", "--username", "boss"],
            stdin=command_side, stdout=command_side, stderr=command_side,
            env=_command_env(tmp_path), cwd=tmp_path, start_new_session=True,
        )  # fmt: skip
        os.close(command_side)
        try:
            assert b"Password: " in _read_until(terminal, b"Password: ", 60)
            echo_off = termios.tcgetattr(terminal)
            os.write(terminal, b"\x03")
            shown = _read_until(terminal, b"interrupted\r\n", 10)
            status = process.wait(timeout=10)
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()
        restored = termios.tcgetattr(terminal)
    finally:
        os.close(terminal)
    assert status == 130, shown
    assert shown.endswith(b"interrupted\r\n"), shown
    assert not echo_off[3] & termios.ECHO  # the prompt hid what was typed
    assert restored[3] & termios.ECHO  # and the terminal echoes again
    assert not (tmp_path / "data" / "ollama_web.db").exists()


def test_a_reader_that_leaves_early_ends_the_listing_quietly(tmp_path: Path) -> None:
    """`ollama-web users list | head`: the pipe's reader is gone before the listing is
    written. Not a database error (it was exit 3, "cannot use the database: BrokenPipeError")
    and no traceback: silence and a shell's status for SIGPIPE."""
    env = _command_env(tmp_path)
    command = [sys.executable, "-m", "ollama_web"]
    created = subprocess.run(
        [*command, "create-admin", "--username", "boss", "--password-stdin"],
        input=PASSWORD,
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=60,
        check=False,
    )
    assert created.returncode == 0, created.stderr
    read_end, write_end = os.pipe()
    os.close(read_end)  # the reader left before anything was written: every write fails
    try:
        listing = subprocess.run(
            [*command, "users", "list"],
            stdout=write_end,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
            cwd=tmp_path,
            timeout=60,
            check=False,
        )
    finally:
        os.close(write_end)
    assert (listing.returncode, listing.stderr) == (141, "")


@pytest.mark.parametrize("command", [["users", "list"], ["migrate"], ["migrate", "--status"]])
def test_a_database_another_user_owns_is_named_with_its_owner_and_mode(
    tmp_path: Path, command: list[str]
) -> None:
    """A database of root's, 0600 (a command run as root, a copy): the commands said only
    SQLite's "unable to open database file"; `serve` names its owner and mode, so do they."""
    if os.geteuid() != 0:
        pytest.skip("making a file of another user's takes root")
    env = _command_env(tmp_path)
    run = [sys.executable, "-m", "ollama_web"]
    migrated = subprocess.run(
        [*run, "migrate"], capture_output=True, text=True, env=env, timeout=60, check=False
    )
    assert migrated.returncode == 0, migrated.stderr
    database = tmp_path / "data" / "ollama_web.db"
    os.chown(database, 65534, 65534)  # nobody's
    database.chmod(0o600)
    result = subprocess.run(
        [*unprivileged(), *run, *command],
        capture_output=True, text=True, env=env, cwd=tmp_path, timeout=60, check=False,
    )  # fmt: skip
    assert result.returncode == 3, result.stderr
    owner = pwd.getpwuid(65534).pw_name
    assert result.stderr == (
        f"error: cannot use the database {database}: owned by {owner}, mode 0600, and this "
        "user (root) cannot read and write it\n"
    )


@pytest.mark.parametrize(
    "command", [["migrate"], ["create-admin", "--username", "boss", "--password-stdin"]]
)
def test_a_database_the_command_creates_is_0600(tmp_path: Path, command: list[str]) -> None:
    """`mkdir -m 755 data` (or a Docker volume), then the first command: the database it
    created, with every password hash in it, was 0644."""
    import stat

    env = _command_env(tmp_path)
    (tmp_path / "data").mkdir(mode=0o755)
    previous = os.umask(0o022)  # inherited by the command
    try:
        result = subprocess.run(
            [sys.executable, "-m", "ollama_web", *command],
            input=PASSWORD,
            capture_output=True,
            text=True,
            env=env,
            cwd=tmp_path,
            timeout=60,
            check=False,
        )
    finally:
        os.umask(previous)
    assert result.returncode == 0, result.stderr
    assert stat.S_IMODE((tmp_path / "data" / "ollama_web.db").stat().st_mode) == 0o600


@pytest.mark.parametrize(
    "command",
    [
        ["users", "list"],
        ["users", "disable", "boss"],
        ["create-admin", "--username", "boss", "--reset-password", "--password-stdin"],
    ],
)
def test_a_command_that_only_reads_or_changes_users_makes_no_database(
    tmp_path: Path, command: list[str]
) -> None:
    """Run from the wrong directory (or with the wrong DATA_DIR), `users list` made an
    empty database and said there were no users (exit 0); as `backup`, it now refuses."""
    result = subprocess.run(
        [sys.executable, "-m", "ollama_web", *command],
        input=PASSWORD,
        capture_output=True,
        text=True,
        env=_command_env(tmp_path),
        cwd=tmp_path,
        timeout=60,
        check=False,
    )
    database = tmp_path / "data" / "ollama_web.db"
    assert result.returncode == 3
    assert result.stderr == f"error: there is no database at {database} (check DATA_DIR)\n"
    assert not database.exists()


@pytest.mark.parametrize(
    "locale",
    [
        {"LC_ALL": "C"},  # Python decodes the bytes to lone surrogates (surrogateescape)
        {"LC_ALL": "C.UTF-8", "PYTHONIOENCODING": "utf-8:strict"},  # decoding fails instead
    ],
    ids=["surrogateescape", "strict"],
)
def test_a_password_that_is_not_utf8_is_one_line_and_creates_nothing(
    tmp_path: Path, locale: dict[str, str]
) -> None:
    """It was a UnicodeEncodeError traceback from argon2, after the database was migrated."""
    env = {**_command_env(tmp_path), **locale}
    command = ["create-admin", "--username", "admin1", "--password-stdin"]
    result = subprocess.run(
        [sys.executable, "-m", "ollama_web", *command],
        input=b"\xff\xfe bad utf8 password long enough here\n",
        capture_output=True,
        env=env,
        cwd=tmp_path,
        timeout=60,
        check=False,
    )
    stderr = result.stderr.decode()
    assert result.returncode == 1, stderr
    assert _one_line(stderr) == "error: The password is not valid UTF-8."
    assert not (tmp_path / "data" / "ollama_web.db").exists()


def test_a_prompted_password_that_is_not_utf8_is_refused(
    cli_settings: Settings, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def undecodable(prompt: str = "") -> str:
        raise UnicodeDecodeError("utf-8", b"\xff", 0, 1, "invalid start byte")

    monkeypatch.setattr("getpass.getpass", undecodable)
    assert run(monkeypatch, ["create-admin", "--username", "boss"]) == 1
    assert capsys.readouterr().err == "error: The password is not valid UTF-8.\n"
    assert "boss" not in users(cli_settings)


async def test_a_setup_while_create_admin_writes_waits_for_it_and_is_refused(
    cli_settings: Settings, app_factory: Callable[..., Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The operator's `create-admin` has written its admin, not yet committed; a setup from
    the network meanwhile waits for it and is refused (setup is only for a database with no
    user). On PostgreSQL it made a second admin: it could not see the uncommitted one."""
    import threading

    from tests.conftest import asgi_client

    app = await app_factory(cli_settings)  # the same database
    written, release = threading.Event(), threading.Event()
    record = auth_cli.record_event

    async def paused(*args: Any, **kwargs: Any) -> None:
        written.set()
        await asyncio.to_thread(release.wait, 10)
        await record(*args, **kwargs)

    monkeypatch.setattr(auth_cli, "record_event", paused)
    monkeypatch.setattr("sys.stdin", io.StringIO(PASSWORD + "\n"))
    command = ["create-admin", "--username", "boss", "--password-stdin"]
    cli = asyncio.ensure_future(asyncio.to_thread(main, command))
    assert await asyncio.to_thread(written.wait, 10)
    async with asgi_client(app) as client:
        intruder = {"username": "intruder", "password": "intruder-password-1"}
        setup = asyncio.ensure_future(client.post("/api/auth/setup", json=intruder))
        await asyncio.sleep(0.5)
        waited = not setup.done()
        release.set()
        response = await setup
    assert await cli == 0
    assert waited, response.text
    assert (response.status_code, response.json()["error"]) == (409, "SETUP_ALREADY_COMPLETED")
    assert set(await asyncio.to_thread(users, cli_settings)) == {"boss"}
