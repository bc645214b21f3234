"""pools: what happens to a desktop whose user disconnected (log off or reset after N minutes)

Revision ID: 0016_pool_disconnect_policy
Revises: 0015_browser_consoles
Create Date: 2026-12-06 16:40:00

pools.disconnect_action (none | logoff | reset) and pools.disconnect_after_minutes: once a console session has been
disconnected that long (its client left, as the host's graphics events report), the pool maintenance loop logs the
user off or resets the desktop. Existing pools get 'none': nothing changes for them. The new session state
'pending' needs no DDL (enums are stored as plain strings).
"""
from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0016_pool_disconnect_policy'
down_revision = '0015_browser_consoles'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("pools", sa.Column("disconnect_action", sa.String(32), nullable=False, server_default="none"))
    op.add_column("pools", sa.Column("disconnect_after_minutes", sa.Integer(), nullable=False, server_default="0"))


def downgrade() -> None:
    op.drop_column("pools", "disconnect_after_minutes")
    op.drop_column("pools", "disconnect_action")
