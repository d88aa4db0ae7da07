"""PostgreSQL: backups with `pg_dump --format=custom`, restores with `pg_restore`.

The connection comes from DATABASE_URL and is handed to the tools through libpq's
environment variables (PGHOST, PGPASSWORD, ...), never on the command line where other
users could read it. When pg_dump is not installed, backups are external (status says so).
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
from pathlib import Path

from sqlalchemy.engine import make_url

TOOLS = ("pg_dump", "pg_restore", "psql")
TOOL_TIMEOUT_SECONDS = 3600.0
_QUERY_ENV = {
    "sslmode": "PGSSLMODE",
    "ssl": "PGSSLMODE",  # the async URL carries DATABASE_URL's sslmode as asyncpg's ssl
    "sslrootcert": "PGSSLROOTCERT",
    "sslcert": "PGSSLCERT",
    "sslkey": "PGSSLKEY",
    "sslcrl": "PGSSLCRL",
    "ssl_min_protocol_version": "PGSSLMINPROTOCOLVERSION",
    "connect_timeout": "PGCONNECT_TIMEOUT",
    "target_session_attrs": "PGTARGETSESSIONATTRS",
    "host": "PGHOST",
    "port": "PGPORT",
    "application_name": "PGAPPNAME",
}


class PostgresBackupError(Exception):
    pass


class ToolUnavailableError(PostgresBackupError):
    """A client tool is not installed, or cannot be started: that says nothing about the
    archive or the database it was to read."""

    def __init__(self, tool: str, reason: str, message: str) -> None:
        super().__init__(message)
        self.tool = tool
        self.reason = reason


def missing_tools() -> list[str]:
    return [tool for tool in TOOLS if shutil.which(tool) is None]


def not_installed(tools: list[str]) -> str:
    """`psql is not installed`, `pg_dump and psql are not installed`, `a, b and c are ...`."""
    named = " and ".join(filter(None, [", ".join(tools[:-1]), tools[-1]]))
    return f"{named} {'is' if len(tools) == 1 else 'are'} not installed"


def tools_available() -> bool:
    return not missing_tools()


def libpq_environment(database_url: str) -> dict[str, str]:
    url = make_url(database_url)
    env = {key: value for key, value in os.environ.items() if not key.startswith("PG")}
    fields = {
        "PGHOST": url.host,
        "PGPORT": str(url.port) if url.port else None,
        "PGUSER": url.username,
        "PGPASSWORD": url.password if isinstance(url.password, str) else None,
        "PGDATABASE": url.database,
    }
    env.update({key: value for key, value in fields.items() if value})
    for option, variable in _QUERY_ENV.items():
        value = url.query.get(option)
        if isinstance(value, str) and value:
            env[variable] = value
    return env


def _tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        raise ToolUnavailableError(name, "not installed", f"{name} is not installed")
    return path


def _run(arguments: list[str], database_url: str | None) -> subprocess.CompletedProcess[str]:
    """Run a PostgreSQL client tool (fixed argument lists; the URL goes in the environment)."""
    environment = libpq_environment(database_url) if database_url else None
    try:
        return subprocess.run(  # noqa: S603 - fixed tool and arguments, no shell
            [_tool(arguments[0]), *arguments[1:]],
            env=environment,
            capture_output=True,
            text=True,
            timeout=TOOL_TIMEOUT_SECONDS,
            check=False,
        )
    except OSError as exc:  # its mode, say
        reason = exc.strerror or type(exc).__name__
        raise ToolUnavailableError(
            arguments[0], reason, f"{arguments[0]} failed to run: {exc}"
        ) from exc
    except subprocess.TimeoutExpired as exc:
        raise PostgresBackupError(f"{arguments[0]} failed to run: {exc}") from exc


def _fail(process: subprocess.CompletedProcess[str], what: str) -> PostgresBackupError:
    message = (process.stderr or process.stdout or "").strip().splitlines()
    return PostgresBackupError(f"{what} failed: {message[-1] if message else process.returncode}")


def has_users(database_url: str) -> bool:
    process = _run(
        ["psql", "-X", "-A", "-t", "-c", "SELECT EXISTS (SELECT 1 FROM users)"], database_url
    )
    if process.returncode == 0:
        return process.stdout.strip() == "t"
    if 'relation "users" does not exist' in process.stderr:
        return False
    raise _fail(process, "checking for users")


def dump(database_url: str, destination: Path) -> None:
    process = _run(
        ["pg_dump", "--format=custom", "--no-owner", "--no-acl", "--file", str(destination)],
        database_url,
    )
    if process.returncode != 0:
        raise _fail(process, "pg_dump")


_MAGIC = b"PGDMP"
_INTS_OF_CREATION_TIME = 7  # sec, min, hour, mday, mon, year, isdst
_HASH_CHUNK = 1024 * 1024


def content_digest(archive: Path) -> str | None:
    """sha256 of a custom-format archive without its creation time, the one part that
    differs between two dumps of an unchanged database (`BackupInfo.content_sha256`);
    None for a header this does not know.

    The header (pg_dump's pg_backup_archiver.c, `WriteHead`): "PGDMP", the archive version
    (3 bytes), the integer size, the offset size, the format (a byte each), the
    compression (from version 1.15 a byte, before an integer), then the creation time as
    7 integers, each a sign byte and `integer size` bytes."""
    with archive.open("rb") as file:
        head = file.read(11)
        if len(head) < 11 or not head.startswith(_MAGIC) or (head[5], head[6]) < (1, 7):
            return None
        int_bytes = 1 + head[8]
        compression = 1 if (head[5], head[6]) >= (1, 15) else int_bytes
        kept = file.read(compression)
        skipped = file.read(_INTS_OF_CREATION_TIME * int_bytes)
        if len(skipped) < _INTS_OF_CREATION_TIME * int_bytes:
            return None
        digest = hashlib.sha256(head + kept)
        while chunk := file.read(_HASH_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


NO_USERS_TABLE = "the archive does not hold an ollama-web database (no users table)"
# A table in `pg_restore --list`: "216; 1259 41718 TABLE public users owner".
_TOC_TABLE = re.compile(r"^\d+; \d+ \d+ TABLE public (\S+)(?: |$)", re.MULTILINE)


def archive_tables(archive: Path) -> set[str]:
    """The tables (schema public) of the archive's table of contents; PostgresBackupError
    when pg_restore cannot read it."""
    process = _run(["pg_restore", "--list", str(archive)], None)
    if process.returncode != 0:
        raise PostgresBackupError((process.stderr.strip() or "unreadable archive")[:500])
    return set(_TOC_TABLE.findall(process.stdout))


def archive_problems(archive: Path) -> list[str]:
    """[] when pg_restore can read the archive's table of contents, which lists users."""
    try:
        tables = archive_tables(archive)
    except PostgresBackupError as exc:
        return [str(exc)]
    return [] if "users" in tables else [NO_USERS_TABLE]


def archive_revisions(archive: Path) -> list[str] | None:
    """The rows of the archive's alembic_version (its schema revision); None without the
    table. pg_restore prints them as the data of a COPY, ended by a line `\\.`."""
    process = _run(
        ["pg_restore", "--data-only", "--table=alembic_version", "--file=-", str(archive)], None
    )
    if process.returncode != 0:
        raise _fail(process, "pg_restore")
    rows: list[str] | None = None
    for line in process.stdout.splitlines():
        if rows is None:
            if line.startswith("COPY ") and ".alembic_version " in line:
                rows = []
        elif line == "\\.":
            break
        else:
            rows.append(line)
    return rows


def restore(database_url: str, archive: Path) -> None:
    """Replace the database's objects with the archive's, all in one transaction."""
    process = _run(
        [
            "pg_restore",
            "--clean",
            "--if-exists",
            "--no-owner",
            "--no-acl",
            "--single-transaction",
            "--exit-on-error",
            "--dbname",
            make_url(database_url).database or "",
            str(archive),
        ],
        database_url,
    )
    if process.returncode != 0:
        raise _fail(process, "pg_restore")
