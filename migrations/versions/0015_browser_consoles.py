"""browser_consoles: the browser console's single-use tickets and the connections they opened (issue 21 item 2)

Revision ID: 0015_browser_consoles
Revises: 0014_host_display_address
Create Date: 2026-12-06 16:30:00

A ticket is spent by one atomic UPDATE (opened_at set where it was null and the ticket has not expired), so a replay
is refused by whichever manager process sees it. close_requested_at is how an administrator's disconnect reaches the
process holding the connection (each process polls its own live consoles).
"""
from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0015_browser_consoles'
down_revision = '0014_host_display_address'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "browser_consoles",
        sa.Column("id", sa.String(36), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False),
        sa.Column("token_hash", sa.String(64), nullable=False),
        sa.Column("user_id", sa.String(36), nullable=False),
        sa.Column("desktop_id", sa.String(36), nullable=False),
        sa.Column("session_id", sa.String(36), nullable=True),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("opened_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("closed_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("close_requested_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(["user_id"], ["users.id"], name=op.f("fk_browser_consoles_user_id_users"),
                                ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["desktop_id"], ["desktops.id"], name=op.f("fk_browser_consoles_desktop_id_desktops"),
                                ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["session_id"], ["desktop_sessions.id"],
                                name=op.f("fk_browser_consoles_session_id_desktop_sessions"), ondelete="SET NULL"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_browser_consoles")),
        sa.UniqueConstraint("token_hash", name=op.f("uq_browser_consoles_token_hash")),
    )
    op.create_index(op.f("ix_browser_consoles_user_id"), "browser_consoles", ["user_id"])
    op.create_index(op.f("ix_browser_consoles_desktop_id"), "browser_consoles", ["desktop_id"])


def downgrade() -> None:
    op.drop_index(op.f("ix_browser_consoles_desktop_id"), table_name="browser_consoles")
    op.drop_index(op.f("ix_browser_consoles_user_id"), table_name="browser_consoles")
    op.drop_table("browser_consoles")
