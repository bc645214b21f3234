"""portal: a user's remembered console choice and auto-connect; a time-based pool's longest lease

Revision ID: 0010_portal_preferences
Revises: 0009_dashboard_task_index
Create Date: 2026-12-06 14:30:00

users.console_client (native | browser) and users.auto_connect are the self-service portal's per-user choices,
kept on the account so they follow the user to any browser. pools.max_lease_seconds bounds how far a user may extend
a time-based lease (from when it was taken); null keeps leases unextendable, as they were.
"""
from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0010_portal_preferences'
down_revision = '0009_dashboard_task_index'
branch_labels = None
depends_on = None


# Plain ADD/DROP COLUMN (SQLite has both since 3.35): a batch copy of users would lose its expression indexes.
def upgrade() -> None:
    op.add_column("users", sa.Column("console_client", sa.String(16), nullable=False, server_default="native"))
    op.add_column("users", sa.Column("auto_connect", sa.Boolean(), nullable=False, server_default=sa.false()))
    op.add_column("pools", sa.Column("max_lease_seconds", sa.Integer(), nullable=True))


def downgrade() -> None:
    op.drop_column("pools", "max_lease_seconds")
    op.drop_column("users", "auto_connect")
    op.drop_column("users", "console_client")
