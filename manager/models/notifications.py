"""Notifications: subscriptions (who wants which events, through which channel) and the outbox of deliveries
(event_manager.notifications writes and sends them; docs/events.md)."""
from __future__ import annotations

import datetime as dt

from sqlalchemy import BigInteger, Boolean, ForeignKey, Index, Integer, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from core.enums import Severity
from manager.models.base import Base, CreatedMixin, IdMixin, UTCDateTime, enum_type, utcnow


class NotificationSubscription(IdMixin, CreatedMixin, Base):
    """Events chosen by a code pattern (a glob: `host.*`), a minimum severity and optionally one scope (a pool, a
    host or a tag), delivered through one channel URL (Apprise's: mailto://, mailtos://, ...; json:// and jsons://
    are our own signed webhooks).

    owner_id is the user whose own subscription it is; NULL makes it a channel an administrator set up. The URL
    is sealed under the node key (manager.node_secrets) and shown back only as url_redacted (no password, token
    or query); `secret_sealed` is the webhook's HMAC key, returned once when the subscription is created."""

    __tablename__ = "notification_subscriptions"

    owner_id: Mapped[str | None] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), nullable=True,
                                                 index=True)
    name: Mapped[str] = mapped_column(String(255))
    code_pattern: Mapped[str] = mapped_column(String(128), default="*")
    min_severity: Mapped[Severity] = mapped_column(enum_type(Severity), default=Severity.WARNING)
    scope_kind: Mapped[str] = mapped_column(String(16), default="")  # "", pool, host, tag
    scope_id: Mapped[str] = mapped_column(String(36), default="")
    url_sealed: Mapped[str] = mapped_column(Text)
    url_redacted: Mapped[str] = mapped_column(String(1024))
    secret_sealed: Mapped[str] = mapped_column(Text, default="")
    enabled: Mapped[bool] = mapped_column(Boolean, default=True)


class NotificationOutbox(Base):
    """One event to deliver to one subscription, written in the event's own transaction.

    state: pending -> sending (claimed by a dispatcher until lease_until) -> sent | failed (gave up), or back to
    pending with next_attempt_at later after a failed send. Rows of one subscription and code claimed together
    are one merged message, whose idempotency key is `batch_key` (kept across retries and recoveries)."""

    __tablename__ = "notification_outbox"
    __table_args__ = (Index("ix_notification_outbox_due", "state", "next_attempt_at"),)

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True)
    idem_key: Mapped[str] = mapped_column(String(36), unique=True)
    subscription_id: Mapped[str] = mapped_column(ForeignKey("notification_subscriptions.id", ondelete="CASCADE"),
                                                 index=True)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=utcnow)
    event_time: Mapped[dt.datetime] = mapped_column(UTCDateTime())
    code: Mapped[str] = mapped_column(String(64))
    severity: Mapped[Severity] = mapped_column(enum_type(Severity))
    message: Mapped[str] = mapped_column(Text)
    subject: Mapped[str] = mapped_column(Text, default="")  # the event's object ids, JSON
    state: Mapped[str] = mapped_column(String(16), default="pending")
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=utcnow)
    lease_until: Mapped[dt.datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    batch_key: Mapped[str] = mapped_column(String(36), default="", index=True)
    sent_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    last_error: Mapped[str] = mapped_column(Text, default="")
