"""fulfilment: the steps after the chosen service method, and discount credits (issue 19)

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-01
"""

from __future__ import annotations

import sqlalchemy as sa
import sqlmodel
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "fulfilment",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("case_id", sa.Integer(), nullable=False),
        sa.Column("method", sqlmodel.sql.sqltypes.AutoString(length=32), nullable=False),
        sa.Column("step", sqlmodel.sql.sqltypes.AutoString(length=32), nullable=False),
        sa.Column("rma", sqlmodel.sql.sqltypes.AutoString(length=48), nullable=True),
        sa.Column("data", sa.JSON(), nullable=False),
        sa.Column("reminded", sa.JSON(), nullable=False),
        sa.Column("step_since", sqlmodel.sql.sqltypes.UTCDateTime(), nullable=False),
        sa.Column("created_at", sqlmodel.sql.sqltypes.UTCDateTime(), nullable=False),
        sa.Column("updated_at", sqlmodel.sql.sqltypes.UTCDateTime(), nullable=False),
        sa.ForeignKeyConstraint(["case_id"], ["case.id"]),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("case_id"),
    )
    op.create_index(op.f("ix_fulfilment_step"), "fulfilment", ["step"], unique=False)
    op.create_index(op.f("ix_fulfilment_rma"), "fulfilment", ["rma"], unique=False)
    op.create_table(
        "credit",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("case_id", sa.Integer(), nullable=False),
        sa.Column("customer_id", sa.Integer(), nullable=False),
        sa.Column("company", sqlmodel.sql.sqltypes.AutoString(length=255), nullable=False),
        sa.Column("order_id", sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
        sa.Column("amount", sa.Numeric(14, 2), nullable=False),
        sa.Column("currency", sqlmodel.sql.sqltypes.AutoString(length=3), nullable=True),
        sa.Column("goodwill", sa.Boolean(), nullable=False),
        sa.Column("granted_by", sqlmodel.sql.sqltypes.AutoString(length=255), nullable=False),
        sa.Column("created_at", sqlmodel.sql.sqltypes.UTCDateTime(), nullable=False),
        sa.ForeignKeyConstraint(["case_id"], ["case.id"]),
        sa.ForeignKeyConstraint(["customer_id"], ["customer.id"]),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index(op.f("ix_credit_case_id"), "credit", ["case_id"], unique=False)
    op.create_index(op.f("ix_credit_customer_id"), "credit", ["customer_id"], unique=False)
    op.create_index(op.f("ix_credit_company"), "credit", ["company"], unique=False)
    op.create_index(op.f("ix_credit_order_id"), "credit", ["order_id"], unique=False)


def downgrade() -> None:
    op.drop_index(op.f("ix_credit_order_id"), table_name="credit")
    op.drop_index(op.f("ix_credit_company"), table_name="credit")
    op.drop_index(op.f("ix_credit_customer_id"), table_name="credit")
    op.drop_index(op.f("ix_credit_case_id"), table_name="credit")
    op.drop_table("credit")
    op.drop_index(op.f("ix_fulfilment_rma"), table_name="fulfilment")
    op.drop_index(op.f("ix_fulfilment_step"), table_name="fulfilment")
    op.drop_table("fulfilment")
