"""High availability of desktops over host failures: each host's liveness and fence state, its fence agents,
and the desktops waiting to be restarted elsewhere (ha_manager reads and writes these; docs/ha.md)."""
from __future__ import annotations

import datetime as dt

from sqlalchemy import ForeignKey, Integer, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from manager.models.base import Base, CreatedMixin, IdMixin, UTCDateTime, utcnow


class HostHaState(Base):
    """What the HA monitor concluded about one host (one row per host it has seen).

    liveness: up -> connecting (heartbeats late) -> non_responsive (late past the limit and the agent's own
    probe failed). fence_state: "" (nothing to do), fencing, fenced (power-off confirmed by a fence agent),
    failed (no agent, or none could power it off: its desktops are NOT restarted), skipped (a guard held
    fencing back; fence_detail says which)."""

    __tablename__ = "host_ha_states"

    host_id: Mapped[str] = mapped_column(ForeignKey("hosts.id", ondelete="CASCADE"), primary_key=True)
    liveness: Mapped[str] = mapped_column(String(32), default="up")
    liveness_since: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=utcnow)
    fence_state: Mapped[str] = mapped_column(String(32), default="")
    fence_detail: Mapped[str] = mapped_column(Text, default="")
    fence_changed_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime(), nullable=True)


class FenceAgent(IdMixin, CreatedMixin, Base):
    """One way to power a host off out of band (its BMC): tried in `position` order until one confirms.

    kind: ipmi (IPMI 2.0 over LAN, UDP 623) or redfish (HTTPS, /redfish/v1). The password is sealed under the
    node key like node tokens (manager.node_secrets), never returned by the API."""

    __tablename__ = "fence_agents"

    host_id: Mapped[str] = mapped_column(ForeignKey("hosts.id", ondelete="CASCADE"), index=True)
    position: Mapped[int] = mapped_column(Integer, default=0)
    kind: Mapped[str] = mapped_column(String(32))
    address: Mapped[str] = mapped_column(String(255))
    port: Mapped[int] = mapped_column(Integer, default=0)  # 0: the kind's default (623, 443)
    username: Mapped[str] = mapped_column(String(255), default="")
    password_sealed: Mapped[str] = mapped_column(String(1024), default="")
    options: Mapped[str] = mapped_column(Text, default="{}")  # JSON: e.g. {"verify_tls": false, "system": "..."}


class HaRestart(Base):
    """A desktop of a fenced host waiting to be started on another host (removed once it runs there)."""

    __tablename__ = "ha_restarts"

    desktop_id: Mapped[str] = mapped_column(ForeignKey("desktops.id", ondelete="CASCADE"), primary_key=True)
    from_host_id: Mapped[str | None] = mapped_column(ForeignKey("hosts.id", ondelete="SET NULL"), nullable=True)
    since: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=utcnow)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_try_at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=utcnow)
    last_error: Mapped[str] = mapped_column(Text, default="")
    waiting_reported: Mapped[int] = mapped_column(Integer, default=0)  # 1 once the admin was told nothing fits
