"""Events (the audit log), alerts (conditions someone must see to), jobs (long work users can watch), tags and
bookmarks (saved searches)."""
from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy import JSON, BigInteger, Boolean, Float, ForeignKey, Index, Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from core.enums import JobState, Severity
from manager.models.base import Base, CreatedMixin, IdMixin, UTCDateTime, enum_type, utcnow


class Event(Base):
    """Every change and failure. Integer ids give a total order for streaming ("everything after id N")."""

    __tablename__ = "events"

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True)
    time: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=utcnow, index=True)
    severity: Mapped[Severity] = mapped_column(enum_type(Severity), default=Severity.NORMAL, index=True)
    code: Mapped[str] = mapped_column(String(64), index=True)
    message: Mapped[str] = mapped_column(Text)
    actor: Mapped[str] = mapped_column(String(255), default="")  # who did it: "user@domain", "system", a host name
    user_id: Mapped[str | None] = mapped_column(String(36), nullable=True, index=True)
    desktop_id: Mapped[str | None] = mapped_column(String(36), nullable=True, index=True)
    host_id: Mapped[str | None] = mapped_column(String(36), nullable=True, index=True)
    pool_id: Mapped[str | None] = mapped_column(String(36), nullable=True, index=True)
    template_id: Mapped[str | None] = mapped_column(String(36), nullable=True, index=True)
    job_id: Mapped[str | None] = mapped_column(String(36), nullable=True)
    correlation_id: Mapped[str] = mapped_column(String(64), default="", index=True)
    deleted: Mapped[bool] = mapped_column(Boolean, default=False)


class Alert(IdMixin, Base):
    """A condition the manager's own checks found and someone must see to (event_manager/alerts.py): open, then
    acknowledged by a person, then resolved when the condition goes away (or by hand). At most one alert of a kind is
    unresolved per object (a partial unique index)."""

    __tablename__ = "alerts"

    kind: Mapped[str] = mapped_column(String(64), index=True)  # e.g. host.unavailable, pool.nearly_full
    object_kind: Mapped[str] = mapped_column(String(32))  # host, desktop, pool, storage_domain, job, directory
    object_id: Mapped[str] = mapped_column(String(255))
    object_name: Mapped[str] = mapped_column(String(255), default="")
    state: Mapped[str] = mapped_column(String(16), default="open", index=True)  # open | acknowledged | resolved
    severity: Mapped[Severity] = mapped_column(enum_type(Severity), default=Severity.ALERT)
    message: Mapped[str] = mapped_column(Text, default="")
    opened_at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=utcnow, index=True)
    updated_at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=utcnow)
    acknowledged_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    acknowledged_by: Mapped[str] = mapped_column(String(255), default="")
    resolved_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    resolved_by: Mapped[str] = mapped_column(String(255), default="")  # a person, or "system" when it went away


class Job(IdMixin, CreatedMixin, Base):
    """A unit of long work run by a worker; progress is written as it goes so users can watch it."""

    __tablename__ = "jobs"

    kind: Mapped[str] = mapped_column(String(64), index=True)
    state: Mapped[JobState] = mapped_column(enum_type(JobState), default=JobState.PENDING, index=True)
    description: Mapped[str] = mapped_column(Text, default="")
    progress: Mapped[float] = mapped_column(Float, default=0.0)  # percent, 0-100
    done: Mapped[int] = mapped_column(Integer, default=0)
    total: Mapped[int] = mapped_column(Integer, default=0)
    error: Mapped[str] = mapped_column(Text, default="")
    params: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    result: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    created_by: Mapped[str] = mapped_column(String(255), default="system")
    target_kind: Mapped[str] = mapped_column(String(32), default="")
    target_id: Mapped[str] = mapped_column(String(36), default="", index=True)
    correlation_id: Mapped[str] = mapped_column(String(64), default="")
    cancel_requested: Mapped[bool] = mapped_column(Boolean, default=False)
    started_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    finished_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    heartbeat_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime(), nullable=True)  # its lease's renewal
    owner: Mapped[str] = mapped_column(String(255), default="")  # the runner of a RUNNING job (manager or worker)


class Tag(IdMixin, CreatedMixin, Base):
    """oVirt-style hierarchical tags: searching a tag also finds objects tagged with its descendants."""

    __tablename__ = "tags"

    name: Mapped[str] = mapped_column(String(255), unique=True)
    description: Mapped[str] = mapped_column(Text, default="")
    parent_id: Mapped[str | None] = mapped_column(ForeignKey("tags.id", ondelete="RESTRICT"), nullable=True, index=True)


class TagAssignment(Base):
    __tablename__ = "tag_assignments"

    tag_id: Mapped[str] = mapped_column(ForeignKey("tags.id", ondelete="CASCADE"), primary_key=True)
    object_kind: Mapped[str] = mapped_column(String(32), primary_key=True)  # desktop | host | template | user
    object_id: Mapped[str] = mapped_column(String(36), primary_key=True)


class Bookmark(IdMixin, CreatedMixin, Base):
    """A saved search (the raw query string, as oVirt stores it)."""

    __tablename__ = "bookmarks"
    __table_args__ = (UniqueConstraint("owner_id", "name"),)

    name: Mapped[str] = mapped_column(String(255))
    query: Mapped[str] = mapped_column(Text)
    owner_id: Mapped[str | None] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), nullable=True)


Index("ix_tag_assignments_object", TagAssignment.object_kind, TagAssignment.object_id)
Index("ix_events_time_id", Event.time, Event.id)
Index("uq_alerts_unresolved", Alert.kind, Alert.object_id, unique=True,
      postgresql_where=Alert.state != "resolved", sqlite_where=Alert.state != "resolved")
