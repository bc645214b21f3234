"""Clusters, hosts and storage domains."""
from __future__ import annotations

import datetime as dt
import ipaddress

from sqlalchemy import BigInteger, Boolean, ForeignKey, Index, Integer, String, Text
from sqlalchemy.orm import Mapped, mapped_column, relationship

from core.enums import HostStatus
from manager.models.base import Base, CreatedMixin, IdMixin, UTCDateTime, enum_type


class Cluster(IdMixin, CreatedMixin, Base):
    __tablename__ = "clusters"

    name: Mapped[str] = mapped_column(String(255), unique=True)
    description: Mapped[str] = mapped_column(Text, default="")
    cpu_type: Mapped[str] = mapped_column(String(255), default="")
    comment: Mapped[str] = mapped_column(Text, default="")

    hosts: Mapped[list["Host"]] = relationship(back_populates="cluster")


class Host(IdMixin, CreatedMixin, Base):
    """A hypervisor host, reached only through its node agent (NodeClient)."""

    __tablename__ = "hosts"

    name: Mapped[str] = mapped_column(String(255), unique=True)
    cluster_id: Mapped[str] = mapped_column(ForeignKey("clusters.id", ondelete="RESTRICT"), index=True)
    address: Mapped[str] = mapped_column(String(255), default="")
    # Where the guests' SPICE and VNC displays listen and what a .vv names ("" = the management address).
    display_address: Mapped[str] = mapped_column(String(255), default="", server_default="")
    agent_url: Mapped[str] = mapped_column(String(1024), default="")
    # The per-node bearer secret (both directions) is not in the database: only its SHA-256 (to verify the node)
    # and its sealed form (to call the node, opened with the node key file); see manager.node_secrets.
    agent_token_sha256: Mapped[str] = mapped_column(String(64), default="")
    agent_token_sealed: Mapped[str] = mapped_column(String(512), default="")
    libvirt_uri: Mapped[str] = mapped_column(String(1024), default="")
    status: Mapped[HostStatus] = mapped_column(enum_type(HostStatus), default=HostStatus.DOWN, index=True)
    cpus: Mapped[int] = mapped_column(Integer, default=0)
    memory_mib: Mapped[int] = mapped_column(Integer, default=0)
    free_memory_mib: Mapped[int] = mapped_column(Integer, default=0)
    cpu_usage: Mapped[int] = mapped_column(Integer, default=0)
    mem_usage: Mapped[int] = mapped_column(Integer, default=0)
    cpu_model: Mapped[str] = mapped_column(String(255), default="")
    domain_types: Mapped[str] = mapped_column(String(64), default="")  # "kvm,qemu" as reported
    libvirt_version: Mapped[str] = mapped_column(String(64), default="")
    ksm_running: Mapped[bool] = mapped_column(Boolean, default=False)
    ksm_pages_shared: Mapped[int] = mapped_column(BigInteger, default=0)
    ksm_pages_sharing: Mapped[int] = mapped_column(BigInteger, default=0)
    # memory KSM saves on the host (pages_sharing x page size), as its node agent reports it
    ksm_saved_mib: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    active_desktops: Mapped[int] = mapped_column(Integer, default=0)
    last_heartbeat_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    heartbeat_seq: Mapped[int] = mapped_column(BigInteger, default=0)
    agent_started_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    ha_score: Mapped[int] = mapped_column(Integer, default=0)
    comment: Mapped[str] = mapped_column(Text, default="")

    cluster: Mapped[Cluster] = relationship(back_populates="hosts")

    @property
    def agent_token(self) -> str:
        """The node's token, opened from its sealed form (never returned by the API, never logged)."""
        from manager.node_secrets import unseal

        return unseal(self.agent_token_sealed, self.agent_token_sha256, self.name)

    @agent_token.setter
    def agent_token(self, token: str) -> None:
        from manager.node_secrets import digest, seal

        self.agent_token_sha256, self.agent_token_sealed = (digest(token), seal(token)) if token else ("", "")

    def agent_token_matches(self, presented: str) -> bool:
        from manager.node_secrets import verify

        return verify(presented, self.agent_token_sha256)

    @property
    def console_address(self) -> str:
        """The address a console client is given: the display address, else the management address."""
        return self.display_address or self.address

    @property
    def display_listen(self) -> str:
        """The IP the guests' displays listen on: the console address when it is an IP literal, every address
        (0.0.0.0) when it is a host name, loopback only when the host has no address at all."""
        address = self.console_address
        if not address:
            return "127.0.0.1"
        try:
            return str(ipaddress.ip_address(address))
        except ValueError:
            return "0.0.0.0"


class StorageDomain(IdMixin, CreatedMixin, Base):
    """A directory reachable from every host (NFS in production); templates and disks live under it."""

    __tablename__ = "storage_domains"

    name: Mapped[str] = mapped_column(String(255), unique=True)
    path: Mapped[str] = mapped_column(String(1024), unique=True)
    description: Mapped[str] = mapped_column(Text, default="")
    comment: Mapped[str] = mapped_column(Text, default="")
    total_bytes: Mapped[int] = mapped_column(BigInteger, default=0)
    free_bytes: Mapped[int] = mapped_column(BigInteger, default=0)
    used_bytes: Mapped[int] = mapped_column(BigInteger, default=0)


Index("ix_hosts_last_heartbeat_at", Host.last_heartbeat_at)
