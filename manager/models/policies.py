"""The policy engine's state (policy_engine/, docs/policies.md): each cluster's policies, what the engine did to a
host (standby through its power agent, the KSM settings it pushed) and the balloon targets it set on desktops."""
from __future__ import annotations

import datetime as dt

from sqlalchemy import ForeignKey, Integer, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from manager.models.base import Base, UTCDateTime, utcnow


class ClusterPolicy(Base):
    """A cluster's policies as validated JSON (policy_engine.config.ClusterPolicies); no row: every policy off."""

    __tablename__ = "cluster_policies"

    cluster_id: Mapped[str] = mapped_column(ForeignKey("clusters.id", ondelete="CASCADE"), primary_key=True)
    config: Mapped[str] = mapped_column(Text, default="{}")
    updated_at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=utcnow)
    updated_by: Mapped[str] = mapped_column(String(255), default="")


class PolicyHostState(Base):
    """What the engine did to a host. power: "" (nothing), "standby" (emptied, put into maintenance and powered
    off through its power agent), "waking" (powered on, back to up at its first heartbeat). ksm_applied: the KSM
    settings last pushed (JSON), "" when none (or the host was powered off since)."""

    __tablename__ = "policy_host_states"

    host_id: Mapped[str] = mapped_column(ForeignKey("hosts.id", ondelete="CASCADE"), primary_key=True)
    power: Mapped[str] = mapped_column(String(16), default="")
    power_since: Mapped[dt.datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    ksm_applied: Mapped[str] = mapped_column(Text, default="")


class PolicyBalloon(Base):
    """The balloon target the engine set on an idle desktop; removed when it gives the memory back."""

    __tablename__ = "policy_balloons"

    desktop_id: Mapped[str] = mapped_column(ForeignKey("desktops.id", ondelete="CASCADE"), primary_key=True)
    target_mib: Mapped[int] = mapped_column(Integer)
    set_at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=utcnow)
