"""What a backup must hold to be an ollama-web database at the schema revision it records.

A users table and a known revision in alembic_version prove little: another program's file
(or a crafted one) has them too, and a server started on it fails at every query. So the
backup must hold every table our migrations create up to its revision, and on SQLite every
column of them. What they create is learnt by running them on an in-memory SQLite database,
once per revision and process: an older revision is checked as exactly as the newest, and
no list here has to be kept in step with the migrations.

PostgreSQL: the same tables but SQLite's search tables (`messages_fts*`: PostgreSQL searches
with an index) must be TABLE entries of the archive's table of contents; their columns are
not checked, which would take restoring the archive somewhere.

More is tolerated: a table or column added by hand, SQLite's own tables, a batch migration's
leftover `_alembic_tmp_` table stop no query of ours, and refusing a real backup for them
would do more harm than restoring it.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Collection
from functools import cache
from pathlib import Path

from ollama_web.backups import sqlite
from ollama_web.migrations.runner import upgrade_connection

SQLITE_ONLY_PREFIX = "messages_fts"  # migration 0002's FTS5 table, its shadow tables, its map
SHOWN = 5
# Alembic's `op` and `context` are module-level proxies: one migration run at a time (two
# verify requests may come together).
_MIGRATING = threading.Lock()


def expected_sqlite_schema(revision: str) -> dict[str, frozenset[str]]:
    """The tables and columns our migrations create on SQLite up to `revision` (known)."""
    with _MIGRATING:
        return _migrated_schema(revision)


@cache
def _migrated_schema(revision: str) -> dict[str, frozenset[str]]:
    from sqlalchemy import create_engine

    engine = create_engine("sqlite://")
    try:
        with engine.begin() as connection:
            upgrade_connection(connection, revision)
            driver = connection.connection.dbapi_connection
            assert isinstance(driver, sqlite3.Connection)
            return sqlite.schema(driver)
    finally:
        engine.dispose()


def sqlite_problems(database: Path, revision: str) -> list[str]:
    """[] when the SQLite copy `database` holds every table and column of `revision`."""
    expected = expected_sqlite_schema(revision)
    found = sqlite.stored_schema(database, expected)
    missing = [name for name in expected if name not in found]
    if missing:
        return [_not_ours(revision, "tables", missing)]
    columns = [f"{name}.{column}" for name in expected for column in expected[name] - found[name]]
    return [_not_ours(revision, "columns", sorted(columns))] if columns else []


def postgres_problems(tables: Collection[str], revision: str) -> list[str]:
    """[] when an archive's `tables` include every table of `revision` on PostgreSQL."""
    expected = expected_sqlite_schema(revision)
    missing = [
        name for name in expected if name not in tables and not name.startswith(SQLITE_ONLY_PREFIX)
    ]
    return [_not_ours(revision, "tables", missing)] if missing else []


def _not_ours(revision: str, kind: str, missing: list[str]) -> str:
    shown = ", ".join(missing[:SHOWN])
    if len(missing) > SHOWN:
        shown += f" and {len(missing) - SHOWN} more"
    return (
        f"the backup is not an ollama-web database at revision {revision}: missing {kind} {shown}"
    )
