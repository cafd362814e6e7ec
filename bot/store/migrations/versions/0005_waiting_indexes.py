"""partial indexes of the waiting inbox and outbox rows: finding each chat's head no longer scans every row

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-02
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

# As bot/store/models.py says them (a migration keeps its own copy: the models may change later).
INBOX_WAITING = sa.text("status IN ('pending', 'parked')")
OUTBOX_WAITING = sa.text("status IN ('pending', 'held', 'dead')")


def upgrade() -> None:
    with op.batch_alter_table("inboxitem", schema=None) as batch_op:
        batch_op.create_index(
            "ix_inbox_waiting",
            ["channel", "chat_id", "id"],
            unique=False,
            sqlite_where=INBOX_WAITING,
            postgresql_where=INBOX_WAITING,
        )
    with op.batch_alter_table("outboxitem", schema=None) as batch_op:
        batch_op.create_index(
            "ix_outbox_waiting",
            ["channel", "chat_id", "id"],
            unique=False,
            sqlite_where=OUTBOX_WAITING,
            postgresql_where=OUTBOX_WAITING,
        )


def downgrade() -> None:
    with op.batch_alter_table("outboxitem", schema=None) as batch_op:
        batch_op.drop_index("ix_outbox_waiting")
    with op.batch_alter_table("inboxitem", schema=None) as batch_op:
        batch_op.drop_index("ix_inbox_waiting")
