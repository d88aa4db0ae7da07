"""PostgreSQL search ignores accents, as SQLite's does: "cafe" finds "café"; and its index
leaves answers alone until they end, as SQLite's does

SQLite's FTS5 table folds diacritics (`remove_diacritics 2`, migration 0002); PostgreSQL's
index used the `simple` configuration, which keeps them, so the same search found different
messages on the two databases. The index and the search now use a text search
configuration of their own, `ollama_web_search`: `simple` with PostgreSQL's `unaccent`
dictionary in front.

The GIN expression index is also partial now: `WHERE status NOT IN ('pending',
'streaming')`. A streaming answer's content changes at every checkpoint (once a second),
and each update computed the whole growing text's tsvector again (~3 ms for 20 000
characters with `unaccent`). SQLite's index has waited for an answer's end since migration
0004; the search (which states the same condition) now finds the same messages on both.

Titles are searched by substring: `ollama_web_fold(text)` (`lower(unaccent(text))`, or
`lower(text)` without the extension) folds both sides, as SQLite does with a Python
function of the same name (`core.db.fold_text`).

`unaccent` ships with PostgreSQL (contrib) and is a trusted extension (PostgreSQL 13+): the
database's owner may create it. Where it cannot be created (not installed, no privilege),
the configuration is a plain copy of `simple`, the search stays accent-sensitive there, and
the migration says so in a warning; the index and the queries are the same either way.

SQLite is unchanged.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-01 12:00:00
"""

import logging
from collections.abc import Sequence

from alembic import op
from sqlalchemy import text
from sqlalchemy.engine import Connection
from sqlalchemy.exc import DBAPIError

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

logger = logging.getLogger("ollama_web.migrations")

PG_INDEX = "messages_fts_content_gin"
CONFIG = "ollama_web_search"
FOLD = "ollama_web_fold"
# Every token type `simple` maps that holds letters.
WORD_TOKENS = "asciiword, asciihword, hword_asciipart, word, hword, hword_part, numword, numhword"


def create_search_config(connection: Connection, extension: str = "unaccent") -> bool:
    """Create `ollama_web_search`; True when it folds accents (`extension` could be used)."""
    try:
        with connection.begin_nested():  # a refusal must not abort the migration
            connection.execute(text(f'CREATE EXTENSION IF NOT EXISTS "{extension}"'))
    except DBAPIError as exc:
        reason = str(exc.orig).strip().splitlines()[0] if exc.orig else str(exc)
        logger.warning(
            "PostgreSQL extension %s unavailable (%s): search stays accent-sensitive",
            extension,
            reason,
        )
        folding = False
    else:
        folding = True
    connection.execute(text(f"CREATE TEXT SEARCH CONFIGURATION {CONFIG} (COPY = simple)"))
    if folding:
        connection.execute(
            text(
                f"ALTER TEXT SEARCH CONFIGURATION {CONFIG} "
                f"ALTER MAPPING FOR {WORD_TOKENS} WITH {extension}, simple"
            )
        )
    # Titles are searched by substring through this function, on both sides.
    folded = "lower(unaccent($1))" if folding else "lower($1)"
    connection.execute(
        text(
            f"CREATE FUNCTION {FOLD}(text) RETURNS text LANGUAGE sql STABLE PARALLEL SAFE "
            f"AS 'SELECT {folded}'"
        )
    )
    return folding


def _index(config: str, where: str = "") -> None:
    op.execute(f"DROP INDEX IF EXISTS {PG_INDEX}")
    op.execute(
        f"CREATE INDEX {PG_INDEX} ON messages "
        f"USING gin (to_tsvector('{config}', left(content, 100000))){where}"
    )


def upgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    create_search_config(op.get_bind())
    _index(CONFIG, " WHERE status NOT IN ('pending', 'streaming')")


def downgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    _index("simple")
    op.execute(f"DROP TEXT SEARCH CONFIGURATION IF EXISTS {CONFIG}")
    op.execute(f"DROP FUNCTION IF EXISTS {FOLD}(text)")
