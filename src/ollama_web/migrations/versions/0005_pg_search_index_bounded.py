"""PostgreSQL full-text index: the first 100 000 characters of each message

A `tsvector` holds at most 1 MiB. `to_tsvector('simple', content)` of a message with about a
megabyte of distinct words fails, and with it the INSERT or UPDATE of that message (a long
answer, or an import): the GIN expression index is computed on every write. The index (and
the search, spelled the same way) now takes `left(content, 100000)`, whose tsvector stays
far below the limit (each word costs its length plus at most ~8 bytes). Text past the first
100 000 characters of a message is not found by search on PostgreSQL.

SQLite is unchanged (FTS5 has no such limit).

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-30 15:00:00
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

PG_INDEX = "messages_fts_content_gin"


def upgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    op.execute(f"DROP INDEX IF EXISTS {PG_INDEX}")
    op.execute(
        f"CREATE INDEX {PG_INDEX} ON messages "
        "USING gin (to_tsvector('simple', left(content, 100000)))"
    )


def downgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    op.execute(f"DROP INDEX IF EXISTS {PG_INDEX}")
    op.execute(f"CREATE INDEX {PG_INDEX} ON messages USING gin (to_tsvector('simple', content))")
