"""pools: recurring opening hours for time-based pools (days of the week and hours, in a time zone)

Revision ID: 0022_pool_schedule
Revises: 0021_event_notify
Create Date: 2026-12-06 19:45:00

pools.schedule (JSON list of {"days": [...], "start": "HH:MM", "end": "HH:MM"}, see core.schedule), pools.time_zone
(IANA name, 'UTC' for existing pools) and pools.schedule_open (what the pool maintenance loop last saw; NULL until its
first pass). Existing pools get an empty schedule: nothing changes for them.
"""
from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0022_pool_schedule'
down_revision = '0021_event_notify'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("pools", sa.Column("schedule", sa.JSON(), nullable=False, server_default="[]"))
    op.add_column("pools", sa.Column("time_zone", sa.String(64), nullable=False, server_default="UTC"))
    op.add_column("pools", sa.Column("schedule_open", sa.Boolean(), nullable=True))


def downgrade() -> None:
    op.drop_column("pools", "schedule_open")
    op.drop_column("pools", "time_zone")
    op.drop_column("pools", "schedule")
