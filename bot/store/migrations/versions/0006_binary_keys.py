"""keyvalue's keys in the "C" collation on PostgreSQL: the keys that start with a prefix are one range of its index

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-02
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # SQLite compares text byte by byte already (BINARY); the primary key's index is rebuilt in the new order.
    if op.get_bind().dialect.name == "postgresql":
        op.alter_column("keyvalue", "key", type_=sa.String(128, collation="C"), existing_nullable=False)


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.alter_column("keyvalue", "key", type_=sa.String(128), existing_nullable=False)
