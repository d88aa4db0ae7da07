"""messages index in the order a conversation is read

`ix_messages_conversation_created` (conversation_id, created_at) gives way to
`ix_messages_conversation_created_id` (conversation_id, created_at, id): the order every
read of a conversation's messages asks for (`created_at, id`), so SQLite no longer sorts
them in a temporary B-tree, and a covering index for the message ids of a conversation
(the common-word search plan, conversations/search.py).

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-30 08:00:00
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_index(
        "ix_messages_conversation_created_id",
        "messages",
        ["conversation_id", "created_at", "id"],
        unique=False,
    )
    op.drop_index("ix_messages_conversation_created", table_name="messages")


def downgrade() -> None:
    op.create_index(
        "ix_messages_conversation_created",
        "messages",
        ["conversation_id", "created_at"],
        unique=False,
    )
    op.drop_index("ix_messages_conversation_created_id", table_name="messages")
