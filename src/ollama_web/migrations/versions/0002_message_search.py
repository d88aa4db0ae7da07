"""full-text search on message text

SQLite: an FTS5 table `messages_fts` (content + the conversation id) kept in step with
`messages` by triggers. FTS5 rows are addressed by an integer rowid, and `messages` has a
text primary key whose implicit rowid VACUUM may renumber, so a small map table
`messages_fts_map` (INTEGER PRIMARY KEY, stable) links each message id to its FTS row.
Tables named `messages_fts*` are left out of autogenerate (migrations/filters.py).

PostgreSQL: the GIN expression index `messages_fts_content_gin` on
`to_tsvector('simple', content)`. Objects named `messages_fts*` are managed here by hand and
left out of autogenerate (migrations/filters.py).

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-28 04:00:00
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

PG_INDEX = "messages_fts_content_gin"

SQLITE_UPGRADE = (
    "CREATE VIRTUAL TABLE messages_fts USING fts5("
    "content, conversation_id UNINDEXED, tokenize = 'unicode61 remove_diacritics 2')",
    "CREATE TABLE messages_fts_map ("
    "fts_rowid INTEGER PRIMARY KEY, message_id VARCHAR(32) NOT NULL UNIQUE)",
    """CREATE TRIGGER messages_fts_after_insert AFTER INSERT ON messages BEGIN
        INSERT INTO messages_fts_map (message_id) VALUES (new.id);
        INSERT INTO messages_fts (rowid, content, conversation_id)
            VALUES (last_insert_rowid(), new.content, new.conversation_id);
    END""",
    """CREATE TRIGGER messages_fts_after_delete AFTER DELETE ON messages BEGIN
        DELETE FROM messages_fts WHERE rowid =
            (SELECT fts_rowid FROM messages_fts_map WHERE message_id = old.id);
        DELETE FROM messages_fts_map WHERE message_id = old.id;
    END""",
    """CREATE TRIGGER messages_fts_after_update AFTER UPDATE OF content ON messages BEGIN
        UPDATE messages_fts SET content = new.content WHERE rowid =
            (SELECT fts_rowid FROM messages_fts_map WHERE message_id = new.id);
    END""",
    "INSERT INTO messages_fts_map (message_id) SELECT id FROM messages ORDER BY created_at, id",
    "INSERT INTO messages_fts (rowid, content, conversation_id) "
    "SELECT map.fts_rowid, m.content, m.conversation_id "
    "FROM messages_fts_map AS map JOIN messages AS m ON m.id = map.message_id",
)

SQLITE_DOWNGRADE = (
    "DROP TRIGGER IF EXISTS messages_fts_after_update",
    "DROP TRIGGER IF EXISTS messages_fts_after_delete",
    "DROP TRIGGER IF EXISTS messages_fts_after_insert",
    "DROP TABLE IF EXISTS messages_fts_map",
    "DROP TABLE IF EXISTS messages_fts",
)


def upgrade() -> None:
    if op.get_bind().dialect.name == "sqlite":
        for statement in SQLITE_UPGRADE:
            op.execute(statement)
        return
    op.execute(f"CREATE INDEX {PG_INDEX} ON messages USING gin (to_tsvector('simple', content))")


def downgrade() -> None:
    if op.get_bind().dialect.name == "sqlite":
        for statement in SQLITE_DOWNGRADE:
            op.execute(statement)
        return
    op.execute(f"DROP INDEX IF EXISTS {PG_INDEX}")
