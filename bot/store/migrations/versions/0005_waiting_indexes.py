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
INDEXES = (
    ("inboxitem", "ix_inbox_waiting", "status IN ('pending', 'parked')"),
    ("outboxitem", "ix_outbox_waiting", "status IN ('pending', 'held', 'dead')"),
)


def upgrade() -> None:
    for table, name, where in INDEXES:
        with op.batch_alter_table(table, schema=None) as batch_op:
            condition = sa.text(where)
            batch_op.create_index(
                name, ["channel", "chat_id", "id"], sqlite_where=condition, postgresql_where=condition
            )


def downgrade() -> None:
    for table, name, _ in reversed(INDEXES):
        with op.batch_alter_table(table, schema=None) as batch_op:
            batch_op.drop_index(name)
