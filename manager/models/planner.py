"""Planner runs (issue 20, docs/planner.md): one row per run of a workload at a user count, with its profile and
summary, and one row per operation measured in it (the guest's time, and the client's when it watched the display)."""
from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy import JSON, BigInteger, Boolean, Float, ForeignKey, Integer, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from manager.models.base import Base, CreatedMixin, IdMixin, UTCDateTime


class PlannerRun(IdMixin, CreatedMixin, Base):
    __tablename__ = "planner_runs"

    name: Mapped[str] = mapped_column(String(255), default="")
    created_by: Mapped[str] = mapped_column(String(255), default="")
    mode: Mapped[str] = mapped_column(String(16))  # local, remote, passive
    users: Mapped[int] = mapped_column(Integer)
    finished_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    # The run and workload profiles as used (thresholds, seed, think time...): what the report says it measured.
    profile: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    # Score, flagged desktops, watchdog ends, admin operations' times, host CPU and memory over the run.
    summary: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)


class PlannerSample(Base):
    __tablename__ = "planner_samples"

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True)
    run_id: Mapped[str] = mapped_column(String(36), ForeignKey("planner_runs.id", ondelete="CASCADE"), index=True)
    users: Mapped[int] = mapped_column(Integer)  # the user count of the step it was measured at (a sweep has several)
    desktop: Mapped[str] = mapped_column(String(255))
    iteration: Mapped[int] = mapped_column(Integer)
    seq: Mapped[int] = mapped_column(Integer)  # the watermark's start mark n
    app: Mapped[str] = mapped_column(String(32))
    operation: Mapped[str] = mapped_column(String(32))
    group: Mapped[str] = mapped_column(String(1))
    code: Mapped[int] = mapped_column(Integer)
    started_s: Mapped[float] = mapped_column(Float)  # seconds from the run's start, by the planner's clock
    guest_s: Mapped[float | None] = mapped_column(Float, nullable=True)
    client_s: Mapped[float | None] = mapped_column(Float, nullable=True)
    # the client decoded this operation's end mark (client_s needs its start mark too, which a short operation can
    # replace before the display is next refreshed)
    end_mark_seen: Mapped[bool] = mapped_column(Boolean, default=False)
    ok: Mapped[bool] = mapped_column(Boolean)
    attempts: Mapped[int] = mapped_column(Integer, default=1)
    error: Mapped[str] = mapped_column(Text, default="")
