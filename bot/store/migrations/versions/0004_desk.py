"""desk: the customer message the local desk has seen up to on each case, and the list's order by activity

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("case", schema=None) as batch_op:
        batch_op.add_column(sa.Column("desk_seen_id", sa.Integer(), nullable=True))
        batch_op.create_index("ix_case_updated_at", ["updated_at"], unique=False)
    # Cases from before: what is already there counts as seen, so the first look is not a wall of badges.
    op.execute(
        'UPDATE "case" SET desk_seen_id = (SELECT MAX(message.id) FROM message WHERE message.case_id = "case".id)'
    )


def downgrade() -> None:
    with op.batch_alter_table("case", schema=None) as batch_op:
        batch_op.drop_index("ix_case_updated_at")
        batch_op.drop_column("desk_seen_id")
