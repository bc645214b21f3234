"""search: names folded to lower case in code-point order, for the search bar's value suggestions

Revision ID: 0008_search_value_prefix
Revises: 0007_broker_pick_random_start
Create Date: 2026-12-08 10:00:00

Declared on the models (manager/models/search_indexes.py, `folded`). `Vms: name = desk-04` suggests the first 20
desktop names starting with "desk-04" in any case: a walk of this b-tree from the prefix that stops after 20
entries (well under a millisecond at 100,000 desktops), where the trigram index reads every match of a short
prefix and the name index cannot serve a case-insensitive prefix. Users' names the same (20,000 and more).
"""
from __future__ import annotations

from alembic import op

revision = '0008_search_value_prefix'
down_revision = '0007_broker_pick_random_start'
branch_labels = None
depends_on = None

INDEXES = (("ix_desktops_name_folded", "desktops", "name"), ("ix_users_username_folded", "users", "username"))


def upgrade() -> None:
    postgres = op.get_bind().dialect.name == "postgresql"
    for name, table, column in INDEXES:
        key = f'lower({column}) COLLATE "C"' if postgres else f"lower({column})"
        op.execute(f"CREATE INDEX {name} ON {table} ({key})")


def downgrade() -> None:
    for name, table, _column in INDEXES:
        op.drop_index(name, table_name=table)
