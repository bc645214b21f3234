"""Manager high availability (issue 16 item 6): the leader's lease row and the manager instances seen
(ha_manager/leader.py)."""
from __future__ import annotations

import datetime as dt

from sqlalchemy import BigInteger, Integer, String
from sqlalchemy.orm import Mapped, mapped_column

from manager.models.base import Base, UTCDateTime


class ManagerLeader(Base):
    """One row per leadership (today only "manager"): who holds it, until when, and its epoch.

    The epoch grows by one on every acquisition and never otherwise; it is the fencing token the leader's singleton
    loops present with every write (ha_manager.leader.fenced). Times are the database's clock."""

    __tablename__ = "manager_leader"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    holder: Mapped[str] = mapped_column(String(255))  # the holding instance's id
    holder_address: Mapped[str] = mapped_column(String(255), default="")
    epoch: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"))
    acquired_at: Mapped[dt.datetime] = mapped_column(UTCDateTime())
    renewed_at: Mapped[dt.datetime] = mapped_column(UTCDateTime())
    expires_at: Mapped[dt.datetime] = mapped_column(UTCDateTime())


class ManagerInstance(Base):
    """A `vdi serve` process of this installation, as it last reported itself (every lease renewal interval)."""

    __tablename__ = "manager_instances"

    id: Mapped[str] = mapped_column(String(255), primary_key=True)  # VDI_INSTANCE_ID, default <hostname>:<port>
    address: Mapped[str] = mapped_column(String(255), default="")  # its public URL
    pid: Mapped[int] = mapped_column(Integer, default=0)
    started_at: Mapped[dt.datetime] = mapped_column(UTCDateTime())
    seen_at: Mapped[dt.datetime] = mapped_column(UTCDateTime())
    # the highest leader epoch it has seen (lease row, node agents' heartbeats): a re-created lease row starts above
    # the highest of these, so the epoch never goes backwards (ha_manager/leader.py)
    highest_epoch: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), default=0,
                                               server_default="0")
