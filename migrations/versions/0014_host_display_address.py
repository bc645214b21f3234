"""hosts: a display address for the guests' SPICE and VNC consoles

Revision ID: 0014_host_display_address
Revises: 0013_node_token_digest
Create Date: 2026-12-06 16:40:00

hosts.display_address is where a host's guests' displays listen and what a .vv file names, so a client on another
machine reaches them; "" keeps using the management address (hosts.address), which is what existing hosts get.
"""
from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0014_host_display_address'
down_revision = '0013_node_token_digest'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("hosts", sa.Column("display_address", sa.String(255), nullable=False, server_default=""))


def downgrade() -> None:
    op.drop_column("hosts", "display_address")
