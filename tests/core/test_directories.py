"""DATA_DIR, LOG_DIR and BACKUP_DIR that cannot be used: one line naming the variable and
exit 78 before the server starts, not a traceback from inside the start, nor (a read-only
LOG_DIR) a server that prints a "Logging error" traceback for every record; and a log file
that fails once the server runs is said once."""

from __future__ import annotations

import logging
import os
import shlex
import stat
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from ollama_web.core.config import Settings
from ollama_web.core.directories import DirectoryError, prepare_directories
from ollama_web.core.logging import SharedRotatingFileHandler
from ollama_web.core.startup import EXIT_CONFIG_ERROR
from tests.fixtures.privileges import unprivileged

# Each makes one directory unusable under tmp_path: (variable, its value, what to make).
Breakage = Callable[[Path], None]


def _regular_file(path: Path) -> None:
    path.write_text("not a directory")


def _under_a_regular_file(path: Path) -> None:
    path.parent.write_text("not a directory")


def _read_only(path: Path) -> None:
    # 0500 stops a write only without CAP_DAC_OVERRIDE: as root the commands run through
    # `unprivileged`, and the in-process checks skip this case.
    path.mkdir()
    path.chmod(0o500)


def _log_file_taken_by_a_directory(path: Path) -> None:
    (path / "app.log").mkdir(parents=True)


CASES: dict[str, tuple[str, str, Breakage]] = {
    "data-dir-is-a-file": ("DATA_DIR", "data", _regular_file),
    "data-dir-under-a-file": ("DATA_DIR", "afile/data", _under_a_regular_file),
    "data-dir-read-only": ("DATA_DIR", "data", _read_only),
    "log-dir-is-a-file": ("LOG_DIR", "logs", _regular_file),
    "log-dir-read-only": ("LOG_DIR", "logs", _read_only),
    "log-file-is-a-directory": ("LOG_DIR", "logs", _log_file_taken_by_a_directory),
    "backup-dir-is-a-file": ("BACKUP_DIR", "backups", _regular_file),
    "prometheus-dir-is-a-file": ("PROMETHEUS_MULTIPROC_DIR", "prometheus", _regular_file),
}


def _directories(tmp_path: Path) -> dict[str, Path]:
    return {
        "DATA_DIR": tmp_path / "data",
        "LOG_DIR": tmp_path / "logs",
        "BACKUP_DIR": tmp_path / "backups",
    }


def _break(tmp_path: Path, case: str) -> tuple[str, Path]:
    variable, value, breakage = CASES[case]
    path = tmp_path / value
    breakage(path)
    return variable, path


@pytest.mark.parametrize("case", list(CASES))
def test_an_unusable_directory_is_named_with_the_os_error(
    settings_factory: Callable[..., Settings], tmp_path: Path, case: str
) -> None:
    if case.endswith("read-only") and os.geteuid() == 0:
        pytest.skip("root writes into a 0500 directory; the command test covers it unprivileged")
    variable, path = _break(tmp_path, case)
    settings = settings_factory(**{variable.lower(): path})
    with pytest.raises(DirectoryError) as info:
        prepare_directories(settings)
    message = str(info.value)
    assert message.startswith(f"cannot use {variable} {path}")
    assert "(E" in message  # the OS error's name: EEXIST, ENOTDIR, EACCES, EISDIR
    assert "\n" not in message


def test_missing_directories_are_created_and_nothing_is_left_in_them(
    settings_factory: Callable[..., Settings], tmp_path: Path
) -> None:
    settings = settings_factory()
    umask = os.umask(0)  # the most permissive: modes are the server's own, not the umask's
    try:
        prepare_directories(settings)
    finally:
        os.umask(umask)
    prepare_directories(settings)  # an existing one is fine
    for variable, path in _directories(tmp_path).items():
        assert list(path.iterdir()) == [], variable
    # What holds the database and the backups is private to the service's user; the logs
    # (0640 files) may be read by its group. LOG_DIR was 0777 under umask 000.
    assert stat.S_IMODE(settings.data_dir.stat().st_mode) == 0o700
    assert stat.S_IMODE(settings.backup_dir.stat().st_mode) == 0o700
    assert stat.S_IMODE(settings.log_dir.stat().st_mode) == 0o750


COMMANDS = {
    "serve": ["-m", "ollama_web", "serve", "--port", "9"],
    "uvicorn": ["-m", "uvicorn", "ollama_web.main:app", "--port", "9"],
    "serve-2-workers": ["-m", "ollama_web", "serve", "--workers", "2", "--port", "9"],
}


@pytest.mark.parametrize(
    ("case", "command"),
    [
        ("data-dir-is-a-file", "serve"),
        ("data-dir-read-only", "serve"),
        ("log-dir-is-a-file", "serve"),
        ("log-dir-read-only", "serve"),
        ("prometheus-dir-is-a-file", "serve"),
        ("data-dir-is-a-file", "uvicorn"),
        ("log-dir-read-only", "uvicorn"),
        ("data-dir-read-only", "serve-2-workers"),
    ],
)
def test_the_server_refuses_an_unusable_directory_in_one_line_with_exit_78(
    tmp_path: Path, case: str, command: str
) -> None:
    """It was a traceback and uvicorn's exit 3 (a read-only LOG_DIR: a running server that
    printed a traceback for every log record). Port 9 is never bound: the check comes first."""
    variable, path = _break(tmp_path, case)
    env = {
        **{k: v for k, v in os.environ.items() if k not in {"SECRET_KEY", "DATABASE_URL"}},
        **{name: str(value) for name, value in _directories(tmp_path).items()},
        variable: str(path),
    }
    result = subprocess.run(
        [*unprivileged(), sys.executable, *COMMANDS[command]],
        capture_output=True, text=True, env=env, cwd=tmp_path, timeout=60, check=False,
    )  # fmt: skip
    assert result.returncode == EXIT_CONFIG_ERROR, result.stderr
    assert result.stderr.startswith(f"error: cannot use {variable} {path}"), result.stderr
    assert result.stderr.count("\n") == 1, result.stderr


NOBODY = 65534  # a user id the tests are not: the owner of what "another user" left


def _base_env(tmp_path: Path) -> dict[str, str]:
    return {
        **{k: v for k, v in os.environ.items() if k not in {"SECRET_KEY", "DATABASE_URL"}},
        **{name: str(value) for name, value in _directories(tmp_path).items()},
    }


@pytest.mark.parametrize(
    "name", ["ollama_web.db", "ollama_web.db-wal", ".secret_key", "ollama-web.lock"]
)
def test_a_server_file_another_user_left_is_named_in_one_line_with_exit_78(
    tmp_path: Path, name: str
) -> None:
    """A database, -wal, secret key or lock file of another user's, mode 0600 (left by a
    copy, or a command run as another user): the start failed deep inside with "unable to
    open database file" or a bare EACCES and exit status 3, which systemd restarts for ever."""
    if os.geteuid() != 0:
        pytest.skip("making a file of another user's takes root")
    data = tmp_path / "data"
    data.mkdir(mode=0o700)
    left = data / name
    left.write_bytes(b"")
    left.chmod(0o600)
    os.chown(left, NOBODY, NOBODY)
    result = subprocess.run(
        [*unprivileged(), sys.executable, *COMMANDS["serve"]],
        capture_output=True, text=True, env=_base_env(tmp_path), cwd=tmp_path, timeout=60,
        check=False,
    )  # fmt: skip
    assert result.returncode == EXIT_CONFIG_ERROR, result.stderr
    assert result.stderr.startswith(f"error: cannot use {left}: owned by "), result.stderr
    assert ", mode 0600, and this user (root) cannot read and write it;" in result.stderr
    assert result.stderr.count("\n") == 1, result.stderr


SCRIPTS = Path(__file__).resolve().parents[2] / "scripts"
ROOT_REFUSALS = {
    "serve": ["-m", "ollama_web", "serve", "--port", "9"],
    "users": ["-m", "ollama_web", "users", "list"],
    "backup": ["-m", "ollama_web", "backup"],
    "migrate": ["-m", "ollama_web", "migrate"],
    "backup-script": [str(SCRIPTS / "backup_db.py"), "--list"],
}


@pytest.mark.parametrize("arguments", list(ROOT_REFUSALS.values()), ids=list(ROOT_REFUSALS))
def test_root_is_refused_on_a_data_dir_another_user_owns(
    tmp_path: Path, arguments: list[str]
) -> None:
    """`sudo ollama-web backup|migrate|restore|serve` on the service's DATA_DIR left root's
    files there (the database, its -wal, lock files, backups root-only in BACKUP_DIR): the
    service then failed to start, one file at a time, or did not see those backups."""
    if os.geteuid() != 0:
        pytest.skip("the refusal is for root")
    for directory in _directories(tmp_path).values():
        directory.mkdir(mode=0o700)
        os.chown(directory, NOBODY, NOBODY)
    env = {"PATH": os.environ["PATH"], **{k: str(v) for k, v in _directories(tmp_path).items()}}
    if "PYTHONPATH" in os.environ:  # the package under test, when it is not the installed one
        env["PYTHONPATH"] = os.environ["PYTHONPATH"]
    result = subprocess.run(
        [sys.executable, *arguments],
        capture_output=True, text=True, env=env, cwd=tmp_path, timeout=60, check=False,
        stdin=subprocess.DEVNULL,
    )  # fmt: skip
    assert result.returncode == EXIT_CONFIG_ERROR, result.stderr
    data = tmp_path / "data"
    owner = result.stderr.split(" belongs to ")[1].split(",")[0]
    assert result.stderr.startswith(f"DATA_DIR {data} belongs to {owner}, and this runs as root")
    # The settings given in the environment are passed on by name: sudo drops them, and
    # the pasted line ran on ./data of wherever it was pasted, with none of them. The
    # command runs with this interpreter: `__main__.py` is no command, and a script's
    # `env python3` finds, under sudo, the system's Python without the package.
    suggested = result.stderr.rstrip().split("from this directory: ")[1]
    given = "--preserve-env=BACKUP_DIR,DATA_DIR,LOG_DIR"
    assert shlex.split(suggested) == ["sudo", "-u", owner, given, sys.executable, *arguments]
    for directory in _directories(tmp_path).values():
        assert list(directory.iterdir()) == [], directory  # nothing made there


def test_root_is_refused_on_a_data_dir_not_made_yet_in_another_users_directory(
    tmp_path: Path,
) -> None:
    """The service's first start had not run yet (its directory made for it, DATA_DIR not
    in it yet), or ./data in a user's checkout: `sudo ollama-web migrate` made DATA_DIR and
    the database there, root's, and the service then refused to start (exit 78)."""
    if os.geteuid() != 0:
        pytest.skip("the refusal is for root")
    home = tmp_path / "srv"
    home.mkdir(mode=0o700)
    os.chown(home, NOBODY, NOBODY)
    data = home / "state" / "data"
    env = {"PATH": os.environ["PATH"], "DATA_DIR": str(data), "LOG_DIR": str(home / "logs")}
    result = subprocess.run(
        [sys.executable, "-m", "ollama_web", "migrate"],
        capture_output=True, text=True, env=env, cwd=tmp_path, timeout=60, check=False,
        stdin=subprocess.DEVNULL,
    )  # fmt: skip
    assert result.returncode == EXIT_CONFIG_ERROR, result.stderr
    owner = result.stderr.split(" belongs to ")[1].split(",")[0]
    assert result.stderr.startswith(
        f"DATA_DIR {data} does not exist yet and {home}, where it would be made, belongs to "
        f"{owner}, and this runs as root"
    ), result.stderr
    assert f"sudo -u {owner} --preserve-env=DATA_DIR,LOG_DIR " in result.stderr
    assert list(home.iterdir()) == []  # nothing made there
    root_owned = tmp_path / "root-owned"  # root's own directory: root may make it there
    env["DATA_DIR"], env["LOG_DIR"] = str(root_owned / "data"), str(root_owned / "logs")
    result = subprocess.run(
        [sys.executable, "-m", "ollama_web", "migrate", "--status"],
        capture_output=True, text=True, env=env, cwd=tmp_path, timeout=60, check=False,
        stdin=subprocess.DEVNULL,
    )  # fmt: skip
    assert "belongs to" not in result.stderr, result.stderr


def test_a_log_file_that_fails_after_the_start_is_said_once_not_per_record(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Its filesystem full or remounted read-only once the server runs: one line, then
    silence until a record is written again (was a 10-line traceback per record)."""
    path = tmp_path / "app.log"
    path.mkdir()  # every open fails, as root too
    handler = SharedRotatingFileHandler(path, 1024 * 1024, 2)
    logger = logging.getLogger("tests.core.test_directories")
    logger.addHandler(handler)
    logger.propagate = False
    try:
        for number in range(50):
            logger.warning("record %d", number)
        failing = capsys.readouterr().err.splitlines()
        path.rmdir()
        logger.warning("written")
    finally:
        logger.removeHandler(handler)
        handler.close()
    assert len(failing) == 1, failing
    assert failing[0].startswith(f"ollama-web: cannot write the log file {path}")
    assert capsys.readouterr().err == f"ollama-web: writing the log file {path} again\n"
    assert path.read_text() == "written\n"
