"""Load settings for a command, and report a command's everyday failures in one line.

Exit statuses: 78 invalid configuration; 3 the database cannot be reached or used
(refused, wrong password, missing, locked, at a schema revision this version does not
know); 130 interrupted; 141 the reader of the output left (`ollama-web users list | head`).
`migrate --status` keeps 1 for "migrations are pending".
"""

from __future__ import annotations

import os
import pwd
import shlex
import sys
from collections.abc import Callable
from pathlib import Path

import pydantic

from ollama_web.core.config import Settings

EXIT_CONFIG_ERROR = 78  # EX_CONFIG from sysexits.h
EXIT_DATABASE_ERROR = 3
EXIT_INTERRUPTED = 130  # 128 + SIGINT, as shells report it
EXIT_BROKEN_PIPE = 141  # 128 + SIGPIPE: what a command the reader left usually dies of


class ConfigurationError(Exception):
    pass


class DatabaseUnusableError(Exception):
    """The database answers, but this version cannot use it as it is (a schema revision it
    does not know); the message names the database, says why and what to do."""


def describe_settings_error(exc: pydantic.ValidationError) -> str:
    lines = ["Invalid configuration:"]
    for err in exc.errors():
        name = "_".join(str(part) for part in err.get("loc", ()) if isinstance(part, str)).upper()
        message = str(err.get("msg", "invalid value")).removeprefix("Value error, ")
        # A check across settings (SECRET_KEY in production) names its variables itself.
        lines.append(f"  {name}: {message}" if name else f"  {message}")
    lines.append("Fix the environment variable(s) above (or .env) and start again.")
    return "\n".join(lines)


def has_data(database: Path) -> bool:
    """Whether the SQLite file `database` exists and holds anything (SQLite leaves an empty
    file behind a connection that wrote nothing)."""
    try:
        return database.stat().st_size > 0
    except FileNotFoundError:
        return False


def load_settings() -> Settings:
    try:
        return Settings()
    except pydantic.ValidationError as exc:
        raise ConfigurationError(describe_settings_error(exc)) from None


def load_settings_or_exit() -> Settings:
    """The settings of a command (`serve` and every other), or one line and exit 78."""
    try:
        settings = load_settings()
        refuse_root_on_another_users_data(settings)
    except ConfigurationError as exc:
        print(exc, file=sys.stderr)
        raise SystemExit(EXIT_CONFIG_ERROR) from None
    return settings


def refuse_root_on_another_users_data(settings: Settings) -> None:
    """ConfigurationError when root runs a command on a DATA_DIR another user owns (the
    service's, as DEPLOYMENT.md sets it up). What it would create there and in BACKUP_DIR
    (the database, its -wal, lock files, backups) would be root's: the service could then
    not start, or not see those backups. `sudo -u OWNER` is the way, as for `occ` or `pg_ctl`.
    A DATA_DIR not made yet is judged by the directory it would be made in."""
    if os.geteuid() != 0:
        return
    holder = _nearest_existing(settings.data_dir.absolute())
    try:
        owner = holder.stat().st_uid
    except OSError:
        return
    if owner == 0:
        return
    name = user_name(owner)
    # sudo drops the environment: the settings given in it are passed on by name (never by
    # value on a command line: SECRET_KEY would show in `ps` and the shell's history), or
    # the pasted command would run on another DATA_DIR (./data, in the directory it is run in).
    fields = {field.upper() for field in Settings.model_fields}
    given = sorted(variable for variable in os.environ if variable.upper() in fields)
    preserve = [f"--preserve-env={','.join(given)}"] if given else []
    command = shlex.join(["sudo", "-u", name, *preserve, *command_line()])
    whose = (
        f"DATA_DIR {settings.data_dir} belongs to {name}"
        if holder == settings.data_dir.absolute()
        # Not there yet: this command would make it, root's, in a directory of the user's
        # (the service's first start under a parent made for it, ./data in their checkout).
        else f"DATA_DIR {settings.data_dir} does not exist yet and {holder}, where it would be "
        f"made, belongs to {name}"
    )
    raise ConfigurationError(
        f"{whose}, and this runs as root: files it made there would be root's, which the "
        f"server running as {name} cannot open. Run it as {name}, from this directory: "
        f"{command}"
    )


def _nearest_existing(path: Path) -> Path:
    """`path`, or its nearest ancestor that exists."""
    while not path.exists() and path.parent != path:
        path = path.parent
    return path


def command_line() -> list[str]:
    """This command as it can be typed again. The `ollama-web` script runs itself; a module
    (`python -m ollama_web`: argv[0] is its `__main__.py`, no command) or a script
    (`.venv/bin/python scripts/backup_db.py`: under sudo, its `env python3` finds the
    system's Python, without the package) runs with this interpreter, as it was given."""
    program = sys.argv[0]
    if not program.endswith(".py") and os.access(program, os.X_OK):
        return list(sys.argv)
    return [sys.executable, *sys.orig_argv[1:]]


def user_name(uid: int) -> str:
    """The name of user `uid`, or the number when it has none."""
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


def run_database_command(settings: Settings, command: Callable[[], int]) -> int:
    """Run a command that uses the database; a failure to reach or use it is one line on
    stderr and exit status 3, not a traceback (which would show SQL and its parameters)."""
    from sqlalchemy.exc import SQLAlchemyError

    try:
        return command()
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        raise  # the output's reader left: not the database's fault (see `cli.main`)
    except (DatabaseUnusableError, SQLAlchemyError, OSError) as exc:
        print(f"error: {_database_failure(settings, exc)}", file=sys.stderr)
        return EXIT_DATABASE_ERROR


def startup_failure(settings: Settings, exc: BaseException) -> str | None:
    """The one line that says why the server could not start, for a failure of what it
    runs on (its database, a file); None for anything else (a bug keeps its traceback)."""
    from sqlalchemy.exc import SQLAlchemyError

    if isinstance(exc, DatabaseUnusableError | SQLAlchemyError):
        return _database_failure(settings, exc)
    if isinstance(exc, OSError):
        return f"cannot start: {exc}"
    return None


def _database_failure(settings: Settings, exc: Exception) -> str:
    if isinstance(exc, DatabaseUnusableError):
        return str(exc)
    from ollama_web.core.db import describe_database_error

    name = _database_name(settings)
    unusable = forbidden_file(settings.sqlite_file)
    if unusable is not None:  # SQLite says only "unable to open database file"
        return f"cannot use the database {unusable}"
    return f"cannot use the database {name}: {describe_database_error(exc)}"


def forbidden_file(path: Path | None) -> str | None:
    """`path`, its owner and mode, when it exists and this user cannot read and write it."""
    if path is None or not path.exists() or os.access(path, os.R_OK | os.W_OK):
        return None
    info = path.stat()
    return (
        f"{path}: owned by {user_name(info.st_uid)}, mode {info.st_mode & 0o7777:04o}, and "
        f"this user ({user_name(os.geteuid())}) cannot read and write it"
    )


def _database_name(settings: Settings) -> str:
    embedded = settings.embedded_database_file
    if embedded is not None:
        return str(embedded)
    from sqlalchemy.engine import make_url

    return make_url(str(settings.database_url)).render_as_string(hide_password=True)
