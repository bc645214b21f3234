"""broker: a pool's free desktops in id order, so each pick starts at a random point

Revision ID: 0007_broker_pick_random_start
Revises: 0006_search_status_order
Create Date: 2026-12-05 12:00:00

`ix_desktops_free_pick` becomes (pool_id, power_state, id), still partial (only free desktops). The broker picked
the first free desktop by name: every connect of a storm walked the same front of the index, over the entries of
every desktop claimed before it (their old row versions stay in the index until vacuum), and over the rows other
connects had just locked: about 2.3 ms of Postgres per claim in a 2,000-user storm, growing with the pool. A pick
now starts at a random id (ids are random UUIDs) and wraps around, so concurrent picks land apart and each walks
past about as many taken entries as the pool's taken fraction makes likely.
"""
from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0007_broker_pick_random_start'
down_revision = '0006_search_status_order'
branch_labels = None
depends_on = None

FREE = sa.text("assigned_user_id IS NULL")


def _recreate(columns: list[str]) -> None:
    op.drop_index("ix_desktops_free_pick", table_name="desktops")
    op.create_index("ix_desktops_free_pick", "desktops", columns, postgresql_where=FREE, sqlite_where=FREE)


def upgrade() -> None:
    _recreate(["pool_id", "power_state", "id"])


def downgrade() -> None:
    _recreate(["pool_id", "power_state", "name"])
