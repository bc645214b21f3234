"""alerts: conditions the manager's own checks found (host down, desktop failed to start, storage or pool nearly
full, directory sync failing, job failed), open, acknowledged or resolved

Revision ID: 0019_alerts
Revises: 0018_host_failover
Create Date: 2026-12-06 17:20:00

Issue 17 item 2. One unresolved alert per (kind, object): a partial unique index.
"""
from __future__ import annotations

import sqlalchemy as sa
from alembic import op


revision = '0019_alerts'
down_revision = '0018_host_failover'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "alerts",
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("kind", sa.String(length=64), nullable=False),
        sa.Column("object_kind", sa.String(length=32), nullable=False),
        sa.Column("object_id", sa.String(length=255), nullable=False),
        sa.Column("object_name", sa.String(length=255), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("severity", sa.String(length=32), nullable=False),
        sa.Column("message", sa.Text(), nullable=False),
        sa.Column("opened_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("acknowledged_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("acknowledged_by", sa.String(length=255), nullable=False),
        sa.Column("resolved_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("resolved_by", sa.String(length=255), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_alerts")),
    )
    op.create_index(op.f("ix_alerts_kind"), "alerts", ["kind"])
    op.create_index(op.f("ix_alerts_state"), "alerts", ["state"])
    op.create_index(op.f("ix_alerts_opened_at"), "alerts", ["opened_at"])
    op.create_index("uq_alerts_unresolved", "alerts", ["kind", "object_id"], unique=True,
                    postgresql_where=sa.text("state != 'resolved'"), sqlite_where=sa.text("state != 'resolved'"))


def downgrade() -> None:
    op.drop_index("uq_alerts_unresolved", table_name="alerts")
    op.drop_index(op.f("ix_alerts_opened_at"), table_name="alerts")
    op.drop_index(op.f("ix_alerts_state"), table_name="alerts")
    op.drop_index(op.f("ix_alerts_kind"), table_name="alerts")
    op.drop_table("alerts")
