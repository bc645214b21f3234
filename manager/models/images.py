"""Templates, template versions, volumes (qcow2 files) and snapshots."""
from __future__ import annotations

from sqlalchemy import BigInteger, ForeignKey, Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column, relationship

from core.enums import OsType
from manager.models.base import Base, CreatedMixin, IdMixin, enum_type


class Template(IdMixin, CreatedMixin, Base):
    """An immutable desktop image with its versions; desktops are thin overlays on a version."""

    __tablename__ = "templates"

    name: Mapped[str] = mapped_column(String(255), unique=True)
    description: Mapped[str] = mapped_column(Text, default="")
    comment: Mapped[str] = mapped_column(Text, default="")
    os_type: Mapped[OsType] = mapped_column(enum_type(OsType), default=OsType.OTHER_LINUX)
    cpus: Mapped[int] = mapped_column(Integer, default=1)
    memory_mib: Mapped[int] = mapped_column(Integer, default=256)
    storage_domain_id: Mapped[str | None] = mapped_column(
        ForeignKey("storage_domains.id", ondelete="RESTRICT"), nullable=True, index=True)
    status: Mapped[str] = mapped_column(String(32), default="ok")  # ok | locked | illegal
    # Direct kernel boot (the demo image); empty means boot from the disk.
    boot_kernel: Mapped[str] = mapped_column(String(1024), default="")
    boot_initrd: Mapped[str] = mapped_column(String(1024), default="")
    boot_cmdline: Mapped[str] = mapped_column(String(1024), default="")
    installed_apps: Mapped[str] = mapped_column(Text, default="")  # comma-separated, as the guest agent reports
    latest_version_id: Mapped[str | None] = mapped_column(
        ForeignKey("template_versions.id", ondelete="SET NULL", use_alter=True), nullable=True)

    versions: Mapped[list["TemplateVersion"]] = relationship(
        back_populates="template", foreign_keys="TemplateVersion.template_id", order_by="TemplateVersion.number",
        cascade="all, delete-orphan", passive_deletes=True)


class TemplateVersion(IdMixin, CreatedMixin, Base):
    __tablename__ = "template_versions"
    __table_args__ = (UniqueConstraint("template_id", "number"),)

    template_id: Mapped[str] = mapped_column(ForeignKey("templates.id", ondelete="CASCADE"), index=True)
    number: Mapped[int] = mapped_column(Integer)
    name: Mapped[str] = mapped_column(String(255), default="")
    volume_id: Mapped[str | None] = mapped_column(
        ForeignKey("volumes.id", ondelete="RESTRICT", use_alter=True), nullable=True)
    created_from_desktop_id: Mapped[str | None] = mapped_column(String(36), nullable=True)

    template: Mapped[Template] = relationship(back_populates="versions", foreign_keys=[template_id])


class Volume(IdMixin, CreatedMixin, Base):
    """One qcow2 (or raw) file on a storage domain; `parent_id` is its backing file's volume."""

    __tablename__ = "volumes"

    storage_domain_id: Mapped[str | None] = mapped_column(
        ForeignKey("storage_domains.id", ondelete="RESTRICT"), nullable=True, index=True)
    path: Mapped[str] = mapped_column(String(1024), unique=True)
    format: Mapped[str] = mapped_column(String(16), default="qcow2")
    role: Mapped[str] = mapped_column(String(16), default="desktop")  # template | desktop | snapshot | clone
    parent_id: Mapped[str | None] = mapped_column(
        ForeignKey("volumes.id", ondelete="RESTRICT"), nullable=True, index=True)
    desktop_id: Mapped[str | None] = mapped_column(
        ForeignKey("desktops.id", ondelete="SET NULL", use_alter=True), nullable=True, index=True)
    virtual_size: Mapped[int] = mapped_column(BigInteger, default=0)
    actual_size: Mapped[int] = mapped_column(BigInteger, default=0)
    status: Mapped[str] = mapped_column(String(16), default="ok")  # ok | locked | illegal


class Snapshot(IdMixin, CreatedMixin, Base):
    """A point-in-time of a desktop disk: `volume_id` is the frozen file; the desktop writes to a newer overlay."""

    __tablename__ = "snapshots"
    __table_args__ = (UniqueConstraint("desktop_id", "name"),)

    desktop_id: Mapped[str] = mapped_column(ForeignKey("desktops.id", ondelete="CASCADE"), index=True)
    volume_id: Mapped[str] = mapped_column(ForeignKey("volumes.id", ondelete="RESTRICT"))
    name: Mapped[str] = mapped_column(String(255))
    description: Mapped[str] = mapped_column(Text, default="")
    status: Mapped[str] = mapped_column(String(16), default="ok")  # ok | in_preview | locked
