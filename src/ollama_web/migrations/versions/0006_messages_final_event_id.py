"""messages.final_event_id: the SSE id of an answer's final event

A client re-attaching to an answer that finished and left the server's memory is answered
from the database. Without the final event's id, the replay numbered it after the client's
Last-Event-ID, so a client that had seen it got it again under a new id. The id is now
stored with the answer's final write (NULL for answers that ended before this revision, or
that a crash left to the sweep).

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-30 15:10:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("messages", sa.Column("final_event_id", sa.Integer(), nullable=True))


def downgrade() -> None:
    # A native DROP COLUMN (SQLite 3.35+): a batch copy of the table would drop the
    # full-text triggers of migration 0002.
    op.drop_column("messages", "final_event_id")
