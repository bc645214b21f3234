"""broker: the free-desktop pick of a login storm is served in index order

Revision ID: 0004_broker_free_pick
Revises: 0003_search_indexes
Create Date: 2026-11-22 07:10:00

`ix_desktops_free_pick` is declared on the model (manager/models/desktops.py): a pool's free desktops by power
state and name, so the pick of the first running one is an index walk. Without it every connect sorted all free
desktops of the pool (about 4 ms for 2,000) while holding row locks. Partial (only free desktops) on both
backends.
"""
from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0004_broker_free_pick'
down_revision = '0003_search_indexes'
branch_labels = None
depends_on = None

def upgrade() -> None:
    op.create_index("ix_desktops_free_pick", "desktops", ["pool_id", "power_state", "name"],
                    postgresql_where=sa.text("assigned_user_id IS NULL"),
                    sqlite_where=sa.text("assigned_user_id IS NULL"))


def downgrade() -> None:
    op.drop_index("ix_desktops_free_pick", table_name="desktops")
