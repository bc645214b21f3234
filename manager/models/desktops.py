"""Desktops (QEMU guests) and desktop pools."""
from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy import JSON, Boolean, ForeignKey, Index, Integer, String, Text
from sqlalchemy.orm import Mapped, mapped_column, relationship

from core.enums import DisconnectAction, OsType, PoolType, PowerState, ProtocolPolicy, ReclaimPolicy, TaskState
from manager.models.base import Base, CreatedMixin, IdMixin, UTCDateTime, enum_type, utcnow


class Pool(IdMixin, CreatedMixin, Base):
    """A set of desktops made from one template: automatic (floating), manual (persistent) or time-based."""

    __tablename__ = "pools"

    name: Mapped[str] = mapped_column(String(255), unique=True)
    description: Mapped[str] = mapped_column(Text, default="")
    comment: Mapped[str] = mapped_column(Text, default="")
    pool_type: Mapped[PoolType] = mapped_column(enum_type(PoolType), default=PoolType.AUTOMATIC, index=True)
    cluster_id: Mapped[str | None] = mapped_column(ForeignKey("clusters.id", ondelete="RESTRICT"), nullable=True)
    template_id: Mapped[str] = mapped_column(ForeignKey("templates.id", ondelete="RESTRICT"), index=True)
    # None follows the template's latest version (rolling updates); set pins a version.
    template_version_id: Mapped[str | None] = mapped_column(
        ForeignKey("template_versions.id", ondelete="RESTRICT"), nullable=True)
    size: Mapped[int] = mapped_column(Integer, default=0)
    prestarted: Mapped[int] = mapped_column(Integer, default=0)
    max_desktops_per_user: Mapped[int] = mapped_column(Integer, default=1)
    name_pattern: Mapped[str] = mapped_column(String(255), default="")  # e.g. eng-###
    cpus: Mapped[int] = mapped_column(Integer, default=1)
    memory_mib: Mapped[int] = mapped_column(Integer, default=256)
    protocol_policy: Mapped[ProtocolPolicy] = mapped_column(enum_type(ProtocolPolicy), default=ProtocolPolicy.AUTO)
    lease_seconds: Mapped[int | None] = mapped_column(Integer, nullable=True)  # time-based: length of a lease
    # time-based: the longest a lease may run from when it was taken, extensions included (None: not extendable)
    max_lease_seconds: Mapped[int | None] = mapped_column(Integer, nullable=True)
    window_start: Mapped[dt.datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    window_end: Mapped[dt.datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    # time-based: recurring opening hours (core.schedule: [{"days": ["mon", ...], "start": "08:00", "end": "18:00"}]),
    # local to time_zone; empty: open whenever the absolute window above allows. schedule_open is what the pool
    # maintenance loop last saw (it opens and closes the pool, one event each), None before its first pass.
    schedule: Mapped[list[dict[str, Any]]] = mapped_column(JSON, default=list, server_default="[]")
    time_zone: Mapped[str] = mapped_column(String(64), default="UTC", server_default="UTC")
    schedule_open: Mapped[bool | None] = mapped_column(Boolean, nullable=True)
    reclaim_policy: Mapped[ReclaimPolicy] = mapped_column(enum_type(ReclaimPolicy), default=ReclaimPolicy.REIMAGE)
    # What happens to a desktop whose user's console client left and stayed away disconnect_after_minutes
    # (broker.lifecycle.act_on_disconnected, run by the pool maintenance loop).
    disconnect_action: Mapped[DisconnectAction] = mapped_column(
        enum_type(DisconnectAction), default=DisconnectAction.NONE, server_default=DisconnectAction.NONE.value)
    disconnect_after_minutes: Mapped[int] = mapped_column(Integer, default=0, server_default="0")

    desktops: Mapped[list["Desktop"]] = relationship(back_populates="pool")


class Desktop(IdMixin, CreatedMixin, Base):
    """A virtual desktop. The database holds intent (where, whose, what); libvirt holds the power state."""

    __tablename__ = "desktops"

    name: Mapped[str] = mapped_column(String(255), unique=True)
    description: Mapped[str] = mapped_column(Text, default="")
    comment: Mapped[str] = mapped_column(Text, default="")
    template_version_id: Mapped[str | None] = mapped_column(
        ForeignKey("template_versions.id", ondelete="RESTRICT"), nullable=True, index=True)
    volume_id: Mapped[str | None] = mapped_column(
        ForeignKey("volumes.id", ondelete="SET NULL", use_alter=True), nullable=True)  # the active top layer
    cpus: Mapped[int] = mapped_column(Integer, default=1)
    memory_mib: Mapped[int] = mapped_column(Integer, default=256)
    disk_size_gib: Mapped[int] = mapped_column(Integer, default=0)
    os_type: Mapped[OsType] = mapped_column(enum_type(OsType), default=OsType.OTHER_LINUX)
    host_id: Mapped[str | None] = mapped_column(ForeignKey("hosts.id", ondelete="SET NULL"), nullable=True, index=True)
    pool_id: Mapped[str | None] = mapped_column(ForeignKey("pools.id", ondelete="RESTRICT"), nullable=True, index=True)
    power_state: Mapped[PowerState] = mapped_column(enum_type(PowerState), default=PowerState.DOWN, index=True)
    task_state: Mapped[TaskState | None] = mapped_column(enum_type(TaskState), nullable=True)
    cpu_usage: Mapped[int] = mapped_column(Integer, default=0)
    mem_usage: Mapped[int] = mapped_column(Integer, default=0)
    ip: Mapped[str] = mapped_column(String(255), default="")
    guest_hostname: Mapped[str] = mapped_column(String(255), default="")
    started_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    console_protocols: Mapped[str] = mapped_column(String(64), default="spice")  # comma list: spice,rdp,vnc
    monitors: Mapped[int] = mapped_column(Integer, default=1)
    ha_enabled: Mapped[bool] = mapped_column(Boolean, default=False)
    ha_priority: Mapped[int] = mapped_column(Integer, default=0)
    installed_apps: Mapped[str] = mapped_column(Text, default="")  # comma-separated, from the guest agent
    logged_in_user: Mapped[str] = mapped_column(String(255), default="")
    # Set when a user holds this pool desktop (automatic: for a session; manual: for good; time-based: a lease).
    assigned_user_id: Mapped[str | None] = mapped_column(
        ForeignKey("users.id", ondelete="SET NULL"), nullable=True, index=True)
    assigned_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    lease_until: Mapped[dt.datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    # The template version to move to at the next logoff or reset (rolling update).
    pending_template_version_id: Mapped[str | None] = mapped_column(
        ForeignKey("template_versions.id", ondelete="SET NULL"), nullable=True)
    updated_at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=utcnow, onupdate=utcnow)

    pool: Mapped[Pool | None] = relationship(back_populates="desktops")


Index("ix_desktops_pool_free", Desktop.pool_id, Desktop.assigned_user_id)

# The broker's pick of a free desktop (broker/assignment.py): running ones first, the first by id from a random
# point, straight from the index instead of a sort of every free desktop of the pool. Partial: only free desktops.
Index("ix_desktops_free_pick", Desktop.pool_id, Desktop.power_state, Desktop.id,
      postgresql_where=Desktop.assigned_user_id.is_(None), sqlite_where=Desktop.assigned_user_id.is_(None))

# The dashboard's desktops by task (manager.dashboard.desktop_states): at any moment few desktops have a task, so the
# index of those few is tiny and its count spares a scan of the whole table (about 50 ms at 100,000 desktops).
Index("ix_desktops_task_state", Desktop.task_state, postgresql_where=Desktop.task_state.is_not(None),
      sqlite_where=Desktop.task_state.is_not(None))
