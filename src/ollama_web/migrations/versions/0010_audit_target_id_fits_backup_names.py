"""audit_events.target_id: room for a backup's name, not only for an id

`POST /backup` audits the backup it took under its file name (up to 80 characters, e.g.
`ollama_web_backup_20261201_175809_2.dump`), but the column held 32, an id's length. SQLite
does not enforce a VARCHAR's length, so this went unnoticed there; PostgreSQL refused the
row, and every backup taken through the API on PostgreSQL answered 500 (the backup itself
was written). The column now holds 128 characters.

Downgrading cuts longer targets to 32 characters, the width the column returns to.

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-01 18:10:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0010"
down_revision: str | None = "0009"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # On SQLite a copy of the table (no trigger or view refers to it); on PostgreSQL an
    # ALTER COLUMN, which widening a VARCHAR does without rewriting the rows.
    with op.batch_alter_table("audit_events") as batch:
        batch.alter_column(
            "target_id", existing_type=sa.String(length=32), type_=sa.String(length=128)
        )


def downgrade() -> None:
    op.execute(
        "UPDATE audit_events SET target_id = substr(target_id, 1, 32) WHERE length(target_id) > 32"
    )
    with op.batch_alter_table("audit_events") as batch:
        batch.alter_column(
            "target_id", existing_type=sa.String(length=128), type_=sa.String(length=32)
        )
