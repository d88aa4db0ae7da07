"""SQLite full-text index: answers are indexed when they end, not at every checkpoint

The trigger `messages_fts_after_update` re-indexed a message's whole text whenever its
content changed, and a streaming answer's content changes at every checkpoint (once a
second): an FTS5 delete and insert of the growing text each time, for every stream. It
now fires when the answer ends (status no longer `pending` or `streaming`: complete,
stopped, error, or `interrupted` by the sweep, which changes only the status). Until then
a search finds the question, not the half-written answer.

PostgreSQL is unchanged (its GIN expression index follows the content).

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-30 12:30:00
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_REINDEX = """
        UPDATE messages_fts SET content = new.content WHERE rowid =
            (SELECT fts_rowid FROM messages_fts_map WHERE message_id = new.id);
    END"""
SQLITE_UPGRADE = (
    "DROP TRIGGER messages_fts_after_update",
    "CREATE TRIGGER messages_fts_after_update AFTER UPDATE OF content, status ON messages "
    "WHEN new.status NOT IN ('pending', 'streaming') BEGIN" + _REINDEX,
)
SQLITE_DOWNGRADE = (
    "DROP TRIGGER messages_fts_after_update",
    "CREATE TRIGGER messages_fts_after_update AFTER UPDATE OF content ON messages BEGIN" + _REINDEX,
)


def upgrade() -> None:
    if op.get_bind().dialect.name == "sqlite":
        for statement in SQLITE_UPGRADE:
            op.execute(statement)


def downgrade() -> None:
    if op.get_bind().dialect.name == "sqlite":
        for statement in SQLITE_DOWNGRADE:
            op.execute(statement)
