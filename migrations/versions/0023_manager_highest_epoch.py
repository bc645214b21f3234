"""manager_instances.highest_epoch: the highest leader epoch each manager instance has seen

Revision ID: 0023_manager_highest_epoch
Revises: 0022_pool_schedule
Create Date: 2026-12-06 19:55:00

Every instance records, at each election pass, the highest leader epoch it knows of (from the lease row, and from
the node agents' heartbeats, which carry the highest epoch each agent has heard). When the lease row is lost (deleted
by hand, a partial restore), the leader that re-creates it starts above every epoch recorded here, so the epoch
never goes backwards and node agents do not refuse the new leader as a stale one (ha_manager/leader.py).
"""
from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0023_manager_highest_epoch'
down_revision = '0022_pool_schedule'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("manager_instances", sa.Column("highest_epoch", sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
                                                 nullable=False, server_default="0"))


def downgrade() -> None:
    op.drop_column("manager_instances", "highest_epoch")
