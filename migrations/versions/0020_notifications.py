"""notification_subscriptions (who is told of which events, through which channel URL) and notification_outbox
(each event to deliver to each subscription, written in the event's transaction)

Revision ID: 0020_notifications
Revises: 0019_alerts
Create Date: 2026-12-06 17:10:00

Issue 17 item 3: notifications delivered reliably (event_manager/notifications.py). Channel URLs and webhook
secrets are sealed under the node key like node tokens.
"""
from __future__ import annotations

import sqlalchemy as sa
from alembic import op


revision = '0020_notifications'
down_revision = '0019_alerts'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "notification_subscriptions",
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("owner_id", sa.String(length=36), nullable=True),
        sa.Column("name", sa.String(length=255), nullable=False),
        sa.Column("code_pattern", sa.String(length=128), nullable=False),
        sa.Column("min_severity", sa.String(length=32), nullable=False),
        sa.Column("scope_kind", sa.String(length=16), nullable=False),
        sa.Column("scope_id", sa.String(length=36), nullable=False),
        sa.Column("url_sealed", sa.Text(), nullable=False),
        sa.Column("url_redacted", sa.String(length=1024), nullable=False),
        sa.Column("secret_sealed", sa.Text(), nullable=False),
        sa.Column("enabled", sa.Boolean(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False),
        sa.ForeignKeyConstraint(["owner_id"], ["users.id"], name=op.f("fk_notification_subscriptions_owner_id_users"),
                                ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_notification_subscriptions")),
    )
    op.create_index(op.f("ix_notification_subscriptions_owner_id"), "notification_subscriptions", ["owner_id"])
    op.create_table(
        "notification_outbox",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), autoincrement=True, nullable=False),
        sa.Column("idem_key", sa.String(length=36), nullable=False),
        sa.Column("subscription_id", sa.String(length=36), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("event_time", sa.DateTime(timezone=True), nullable=False),
        sa.Column("code", sa.String(length=64), nullable=False),
        sa.Column("severity", sa.String(length=32), nullable=False),
        sa.Column("message", sa.Text(), nullable=False),
        sa.Column("subject", sa.Text(), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("next_attempt_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("lease_until", sa.DateTime(timezone=True), nullable=True),
        sa.Column("batch_key", sa.String(length=36), nullable=False),
        sa.Column("sent_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("last_error", sa.Text(), nullable=False),
        sa.ForeignKeyConstraint(["subscription_id"], ["notification_subscriptions.id"],
                                name=op.f("fk_notification_outbox_subscription_id_notification_subscriptions"),
                                ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_notification_outbox")),
        sa.UniqueConstraint("idem_key", name=op.f("uq_notification_outbox_idem_key")),
    )
    op.create_index("ix_notification_outbox_due", "notification_outbox", ["state", "next_attempt_at"])
    op.create_index(op.f("ix_notification_outbox_subscription_id"), "notification_outbox", ["subscription_id"])
    op.create_index(op.f("ix_notification_outbox_batch_key"), "notification_outbox", ["batch_key"])


def downgrade() -> None:
    op.drop_table("notification_outbox")
    op.drop_table("notification_subscriptions")
