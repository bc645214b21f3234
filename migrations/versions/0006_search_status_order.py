"""search: desktops in page order within a power state

Revision ID: 0006_search_status_order
Revises: 0005_desktops_fillfactor
Create Date: 2026-11-22 07:40:00

`ix_desktops_power_state_name_id` is declared on the model (manager/models/search_indexes.py): `Vms: status = up`
pages walk it in name order, and the search's probe of up to FEW_MATCHES + 1 matches reads their keys from it
alone (an index-only scan) instead of decoding every row of the table. A plain b-tree on both backends.
"""
from __future__ import annotations

from alembic import op

revision = '0006_search_status_order'
down_revision = '0005_desktops_fillfactor'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index("ix_desktops_power_state_name_id", "desktops", ["power_state", "name", "id"])


def downgrade() -> None:
    op.drop_index("ix_desktops_power_state_name_id", table_name="desktops")
