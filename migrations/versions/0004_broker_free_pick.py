"""broker: the free-desktop pick of a login storm is served in index order

Revision ID: 0004_broker_free_pick
Revises: 0003_search_indexes
Create Date: 2026-11-22 07:10:00

`ix_desktops_free_pick` is declared on the model (manager/models/desktops.py, RUNNING_FIRST): a pool's free
desktops, running first, then by name. Without it every connect sorted all free desktops of the pool (about 4 ms
for 2,000) while holding row locks. Partial (only free desktops) on both backends; SQLite has partial and
expression indexes too.
"""
from __future__ import annotations

from alembic import op

revision = '0004_broker_free_pick'
down_revision = '0003_search_indexes'
branch_labels = None
depends_on = None

RUNNING_FIRST = "(CASE WHEN power_state = 'up' THEN 0 ELSE 1 END)"


def upgrade() -> None:
    op.execute(f"CREATE INDEX ix_desktops_free_pick ON desktops (pool_id, {RUNNING_FIRST}, name) "
               "WHERE assigned_user_id IS NULL")


def downgrade() -> None:
    op.drop_index("ix_desktops_free_pick", table_name="desktops")
