"""SQLite: deleting a conversation no longer recurses down its message tree

`messages.parent_id` is `ON DELETE CASCADE`, and SQLite runs a cascade as a trigger inside
the delete that caused it: deleting a conversation deleted each message, whose deletion
deleted its children, and so on down each branch, one trigger level per message. Past
SQLITE_MAX_TRIGGER_DEPTH (1000) the statement failed ("too many levels of trigger
recursion"): a conversation with a branch of 1000 messages (500 exchanges) could not be
deleted, nor could its owner's account (which cascades to it).

A trigger now detaches the conversation's messages from their parents before the
conversation row goes (also when a user's deletion cascades to it); the cascade through
`conversation_id` then deletes them all at one level. Every message of the conversation is
deleted either way.

PostgreSQL is unchanged: its cascades run per statement, not per row, and do not nest.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-01 06:00:00
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

SQLITE_UPGRADE = (
    "CREATE TRIGGER conversations_before_delete_detach_messages BEFORE DELETE ON conversations "
    "BEGIN UPDATE messages SET parent_id = NULL "
    "WHERE conversation_id = old.id AND parent_id IS NOT NULL; END"
)
SQLITE_DOWNGRADE = "DROP TRIGGER IF EXISTS conversations_before_delete_detach_messages"


def upgrade() -> None:
    if op.get_bind().dialect.name == "sqlite":
        op.execute(SQLITE_UPGRADE)


def downgrade() -> None:
    if op.get_bind().dialect.name == "sqlite":
        op.execute(SQLITE_DOWNGRADE)
