"""dashboard: a partial index of the desktops that have a task under way

Revision ID: 0009_dashboard_task_index
Revises: 0008_search_value_prefix
Create Date: 2026-12-06 13:40:00

Declared on the model (manager/models/desktops.py). The dashboard counts desktops by power state (read from
ix_desktops_power_state) and by task; without an index on task_state the second count scanned the whole table
(about 50 ms of the dashboard's budget at 100,000 desktops) to find the few desktops that have a task. Partial: only
desktops with a task, so the index stays a handful of entries. Changing task_state now touches an index, so those
updates (two per action) are no longer HOT; the heartbeat's frequent figure updates do not touch it and stay HOT.
"""
from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0009_dashboard_task_index'
down_revision = '0008_search_value_prefix'
branch_labels = None
depends_on = None

BUSY = sa.text("task_state IS NOT NULL")


def upgrade() -> None:
    op.create_index("ix_desktops_task_state", "desktops", ["task_state"], postgresql_where=BUSY, sqlite_where=BUSY)


def downgrade() -> None:
    op.drop_index("ix_desktops_task_state", table_name="desktops")
