"""A small schema of our own (not the manager's) and a registry over it, for compiler tests."""
from __future__ import annotations

import uuid
from datetime import datetime

from sqlalchemy import (
    Boolean, Column, DateTime, ForeignKey, Numeric, String, Table, Uuid, func, select,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

from search_dsl.registry import (
    DATE_OPS, NUMERIC_OPS, Field, Kind, ObjectDef, Registry, Relation, TagTree, XRef,
)


class Base(DeclarativeBase):
    pass


vm_tags = Table("vm_tags", Base.metadata, Column("vm_id", ForeignKey("vms.id"), primary_key=True),
                Column("tag_id", ForeignKey("tags.id"), primary_key=True))
permissions = Table("permissions", Base.metadata, Column("user_id", ForeignKey("users.id"), primary_key=True),
                    Column("vm_id", ForeignKey("vms.id"), primary_key=True))


class Host(Base):
    __tablename__ = "hosts"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(50))
    address: Mapped[str | None] = mapped_column(String(50))
    status: Mapped[str] = mapped_column(String(20))
    cpu_usage: Mapped[int | None]
    load = mapped_column(Numeric(6, 2), nullable=True)


class Template(Base):
    __tablename__ = "templates"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(50))
    version_name: Mapped[str | None] = mapped_column(String(50))
    version_number: Mapped[int]


class Vm(Base):
    __tablename__ = "vms"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(50))
    description: Mapped[str | None] = mapped_column(String(100))
    status: Mapped[str] = mapped_column(String(20))
    cpu_usage: Mapped[int | None]
    host_id: Mapped[int | None] = mapped_column(ForeignKey("hosts.id"))
    template_id: Mapped[int | None] = mapped_column(ForeignKey("templates.id"))
    uptime_seconds: Mapped[int | None]
    apps: Mapped[str | None] = mapped_column(String(200))
    quota: Mapped[str | None] = mapped_column(String(50))
    os: Mapped[int | None]
    datacenters: Mapped[str | None] = mapped_column(String(100))
    guid: Mapped[uuid.UUID] = mapped_column(Uuid, default=uuid.uuid4)
    has_illegal_images: Mapped[bool] = mapped_column(Boolean, default=False)
    created: Mapped[datetime | None] = mapped_column(DateTime)


class Tag(Base):
    __tablename__ = "tags"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(50))
    parent_id: Mapped[int | None] = mapped_column(ForeignKey("tags.id"))


class User(Base):
    __tablename__ = "users"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(50))
    username: Mapped[str] = mapped_column(String(50))
    domain: Mapped[str] = mapped_column(String(50))


class Event(Base):
    __tablename__ = "events"
    id: Mapped[int] = mapped_column(primary_key=True)
    message: Mapped[str] = mapped_column(String(100))
    severity: Mapped[int]
    time: Mapped[datetime] = mapped_column(DateTime)
    vm_id: Mapped[int | None] = mapped_column(ForeignKey("vms.id"))
    host_id: Mapped[int | None] = mapped_column(ForeignKey("hosts.id"))
    deleted: Mapped[bool] = mapped_column(Boolean, default=False)


STATUS = {"up": "up", "down": "down", "paused": "paused", "maintenance": "maintenance"}
WEB1_GUID = uuid.UUID("11111111-2222-3333-4444-555555555555")

VM_DEF = ObjectDef(
    "Vm", Vm, aliases=("Desktop",),
    fields=(
        Field("name"), Field("description"), Field("status", Kind.ENUM, values=STATUS),
        Field("cpu_usage", Kind.INT), Field("uptime", Kind.TIMESPAN, "uptime_seconds"),
        Field("apps", Kind.SUBSTRING, free_text=False), Field("quota", Kind.NULLABLE_STRING),
        Field("os", Kind.ENUM, values={"other": 0, "windows_xp": 1, "rhel_7x64": 24},
              case_sensitive_values=True, free_text=False),
        Field("datacenter", Kind.LIST, "datacenters"), Field("id", Kind.UUID, "guid"),
        Field("has_illegal_images", Kind.BIT), Field("creationdate", Kind.DATE, "created"),
        Field("tag", Kind.TAG, "name", via="tags", tags=TagTree(Tag)),
    ),
    relations=(Relation("tags", Tag, lambda vm, tag: tag.id.in_(
        select(vm_tags.c.tag_id).where(vm_tags.c.vm_id == vm.id))),),
    xrefs=(
        XRef("Host", "Host", lambda vm, host: host.id == vm.host_id),
        XRef("Template", "Template", lambda vm, tmpl: tmpl.id == vm.template_id),
        XRef("User", "User", lambda vm, user: user.id.in_(
            select(permissions.c.user_id).where(permissions.c.vm_id == vm.id))),
        XRef("Event", "Event", lambda vm, event: event.vm_id == vm.id),
    ),
    default_sort=(("name", "asc"),),
)
HOST_DEF = ObjectDef(
    "Host", Host,
    fields=(Field("name"), Field("address"), Field("status", Kind.ENUM, values=STATUS),
            Field("cpu_usage", Kind.INT), Field("load", Kind.DECIMAL)),
    xrefs=(XRef("Vm", "Vm", lambda host, vm: vm.host_id == host.id),
           XRef("Event", "Event", lambda host, event: event.host_id == host.id)),
    default_sort=(("name", "asc"),),
)
TEMPLATE_DEF = ObjectDef(
    "Template", Template,
    fields=(Field("name", sort_keys=("name", lambda t: func.nullif(t.version_name, "base version"),
                                       "version_number")),
            Field("version_name")),
    xrefs=(XRef("Vm", "Vm", lambda tmpl, vm: vm.template_id == tmpl.id),),
    default_sort=(("name", "asc"),),
)
USER_DEF = ObjectDef(
    "User", User,
    fields=(Field("name"), Field("usrname", column="username", domain_column="domain"),
            Field("directory", column="domain")),
    xrefs=(XRef("Vm", "Vm", lambda user, vm: vm.id.in_(
        select(permissions.c.vm_id).where(permissions.c.user_id == user.id))),),
    default_sort=(("name", "asc"),),
)
EVENT_DEF = ObjectDef(
    "Event", Event,
    fields=(Field("message"), Field("severity", Kind.ENUM, operators=NUMERIC_OPS,
                                    values={"normal": 0, "warning": 1, "error": 2, "alert": 10}),
            Field("time", Kind.DATE, operators=DATE_OPS, symbolic_dates=True)),
    xrefs=(XRef("Vm", "Vm", lambda event, vm: vm.id == event.vm_id),
           XRef("Host", "Host", lambda event, host: host.id == event.host_id)),
    default_sort=(("id", "desc"),),
    base_filter=lambda event: event.deleted.is_(False),
)
REGISTRY = Registry([VM_DEF, HOST_DEF, TEMPLATE_DEF, USER_DEF, EVENT_DEF])


def populate(session: Session) -> None:
    h1 = Host(id=1, name="host1", address="10.0.0.1", status="up", cpu_usage=90, load=1.5)
    h2 = Host(id=2, name="host2", address="10.0.0.2", status="maintenance", cpu_usage=10, load=0.2)
    h3 = Host(id=3, name="web-host", address=None, status="up", cpu_usage=50, load=None)
    t1 = Template(id=1, name="Blank", version_name="base version", version_number=1)
    t2 = Template(id=2, name="rhel8", version_name="v2", version_number=2)
    t3 = Template(id=3, name="rhel8", version_name="base version", version_number=1)
    t4 = Template(id=4, name="WinXP", version_name="base version", version_number=1)
    prod = Tag(id=1, name="prod")
    session.add_all([h1, h2, h3, t1, t2, t3, t4, prod])
    session.flush()
    session.add_all([Tag(id=2, name="prod-eu", parent_id=1), Tag(id=3, name="dev"),
                     Tag(id=4, name="prod-eu-west", parent_id=2)])
    session.flush()
    session.add_all([
        Vm(id=1, name="web1", description="frontend", status="up", cpu_usage=95, host_id=1, template_id=2,
           uptime_seconds=172800, apps="firefox,libreoffice", quota=None, os=24, datacenters="dc1",
           guid=WEB1_GUID, created=datetime(2024, 1, 10, 12, 0)),
        Vm(id=2, name="web2", description="", status="up", cpu_usage=20, host_id=3, template_id=2,
           uptime_seconds=3600, apps="firefox", quota="q1", os=24, datacenters="dc1,DC2",
           has_illegal_images=True, created=datetime(2024, 2, 1)),
        Vm(id=3, name="db1", description=None, status="down", cpu_usage=0, host_id=None, template_id=1,
           uptime_seconds=0, apps=None, quota=None, os=0, datacenters=None, created=datetime(2023, 12, 31)),
        Vm(id=4, name="50%_off", description="promo", status="paused", cpu_usage=5, host_id=1, template_id=4,
           uptime_seconds=600, apps="", quota="", os=1, datacenters="dc2", created=None),
        Vm(id=5, name="Web_3", description="frontend backup", status="up", cpu_usage=70, host_id=2,
           template_id=2, uptime_seconds=100000, apps="chrome", quota=None, os=None, datacenters=None,
           created=datetime(2024, 3, 1)),
    ])
    session.add_all([User(id=1, name="Mary", username="mary", domain="internal"),
                     User(id=2, name="John", username="john.smith", domain="corp.example"),
                     User(id=3, name="Admin", username="admin", domain="internal")])
    session.flush()
    session.execute(vm_tags.insert(), [{"vm_id": 1, "tag_id": 1}, {"vm_id": 2, "tag_id": 3},
                                       {"vm_id": 3, "tag_id": 2}, {"vm_id": 4, "tag_id": 1},
                                       {"vm_id": 4, "tag_id": 3}])
    session.execute(permissions.insert(), [{"user_id": u, "vm_id": v} for u, v in
                                           [(1, 1), (1, 2), (2, 3), (3, 1), (3, 2), (3, 3), (3, 4)]])
    session.add_all([
        Event(id=1, message="VM web1 started", severity=0, time=datetime(2024, 6, 12, 10), vm_id=1, host_id=1),
        Event(id=2, message="disk error", severity=2, time=datetime(2024, 6, 11, 8), vm_id=2, host_id=3),
        Event(id=3, message="alert!", severity=10, time=datetime(2024, 6, 5), vm_id=None, host_id=2),
        Event(id=4, message="old deleted", severity=2, time=datetime(2024, 6, 12, 9), vm_id=1, host_id=1,
              deleted=True),
    ])
    session.flush()
