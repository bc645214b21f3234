"""manager_leader (the leader's lease and epoch) and manager_instances (the `vdi serve` processes seen)

Revision ID: 0017_manager_leader
Revises: 0016_pool_disconnect_policy
Create Date: 2026-12-06 16:20:00

Several managers on one database elect one leader that alone runs the singleton loops (ha_manager/leader.py,
docs/ha.md). The lease row is taken over only once expired, by the database's clock, and every acquisition adds one
to its epoch, the fencing token the leader's loops present with each write.
"""
from __future__ import annotations

import sqlalchemy as sa
from alembic import op


revision = '0017_manager_leader'
down_revision = '0016_pool_disconnect_policy'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "manager_leader",
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("holder", sa.String(length=255), nullable=False),
        sa.Column("holder_address", sa.String(length=255), nullable=False),
        sa.Column("epoch", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("acquired_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("renewed_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("name", name=op.f("pk_manager_leader")),
    )
    op.create_table(
        "manager_instances",
        sa.Column("id", sa.String(length=255), nullable=False),
        sa.Column("address", sa.String(length=255), nullable=False),
        sa.Column("pid", sa.Integer(), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("seen_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_manager_instances")),
    )


def downgrade() -> None:
    op.drop_table("manager_instances")
    op.drop_table("manager_leader")
