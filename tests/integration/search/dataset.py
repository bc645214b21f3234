"""A small, hand-made inventory whose search results are known: the golden tests' fixture.

Who holds what (Vms: Users.): web1 is assigned to john.smith and svc has an Assignment on it; web2 has an
Assignment for mary; db1 a direct Entitlement for mary; testdesktop is assigned to mary and entitled to
admin@internal; vm1 is assigned to user1.
"""
from __future__ import annotations

import datetime as dt

from sqlalchemy.orm import Session

from core.enums import HostStatus, OsType, PoolType, PowerState, Severity, TaskState
from manager.models import (Assignment, Cluster, Desktop, Entitlement, Event, Group, Host, Pool, StorageDomain, Tag,
                            TagAssignment, Template, TemplateVersion, User, Volume)

GIB = 1024 ** 3


def local_today_at(seconds: int) -> dt.datetime:
    """A moment of today's local calendar day (what `time = today` means), in UTC."""
    midnight = dt.datetime.combine(dt.date.today(), dt.time.min).astimezone()
    return (midnight + dt.timedelta(seconds=seconds)).astimezone(dt.timezone.utc)


def utc(*args: int) -> dt.datetime:
    return dt.datetime(*args, tzinfo=dt.timezone.utc)


def populate(session: Session) -> dict[str, str]:
    """Insert the inventory; returns name -> id of the desktops (for id queries)."""
    now = dt.datetime.now(dt.timezone.utc)
    default = Cluster(name="Default", cpu_type="Intel Skylake", description="the first cluster")
    eu = Cluster(name="eu-west", cpu_type="AMD EPYC", description="nameprefix test lab", comment="rack 7")
    session.add_all([default, eu])
    session.flush()
    host1 = Host(name="host1", cluster_id=default.id, address="10.0.0.1", status=HostStatus.UP, cpus=16,
                 memory_mib=65536, free_memory_mib=30000, cpu_usage=85, mem_usage=40, cpu_model="Intel Xeon Gold",
                 libvirt_version="9.0.0", active_desktops=2, agent_token="secret-token-host1", ha_score=3400,
                 comment="main host")
    vsa = Host(name="vs-a", cluster_id=default.id, address="10.0.0.2", status=HostStatus.UP, cpus=8,
               memory_mib=32768, cpu_usage=95, mem_usage=70, cpu_model="Intel Xeon Silver", libvirt_version="9.0.0",
               active_desktops=1, ksm_running=True)
    gonzo = Host(name="gonzo.example.com", cluster_id=eu.id, address="192.168.7.3", status=HostStatus.MAINTENANCE,
                 cpus=32, memory_mib=131072, cpu_usage=10, mem_usage=5, cpu_model="AMD EPYC 7302",
                 libvirt_version="8.0.0")
    fake1 = Host(name="fake1", cluster_id=eu.id, address="192.168.7.4", status=HostStatus.DOWN, cpus=4,
                 memory_mib=8192, cpu_usage=0, cpu_model="AMD EPYC 7302", libvirt_version="8.0.0")
    sd1 = StorageDomain(name="sd1", path="/srv/sd1", description="nfs share", total_bytes=10 * GIB,
                        free_bytes=7 * GIB, used_bytes=3 * GIB)
    iscsi = StorageDomain(name="iscsi-store", path="/srv/iscsi", description="iscsi lun", total_bytes=500 * GIB,
                          free_bytes=100 * GIB, used_bytes=400 * GIB)
    session.add_all([host1, vsa, gonzo, fake1, sd1, iscsi])
    session.flush()

    blank = Template(name="Blank", os_type=OsType.OTHER, storage_domain_id=sd1.id, description="empty")
    winxp = Template(name="WinXP-office", os_type=OsType.WINDOWS_XP, storage_domain_id=sd1.id, memory_mib=1024,
                     installed_apps="office,firefox", description="legacy desktop")
    rhel = Template(name="rhel9", os_type=OsType.RHEL_9X64, storage_domain_id=iscsi.id, memory_mib=2048, cpus=2,
                    status="locked", created_at=utc(2024, 1, 20))
    session.add_all([blank, winxp, rhel])
    session.flush()
    versions = {}
    for template in (blank, winxp, rhel):
        versions[template.name] = TemplateVersion(template_id=template.id, number=1, name="base version")
        session.add(versions[template.name])
    rhel_v2 = TemplateVersion(template_id=rhel.id, number=2, name="v2")
    session.add(rhel_v2)
    session.flush()

    eng = Pool(name="eng-pool", pool_type=PoolType.AUTOMATIC, cluster_id=default.id, template_id=rhel.id, size=10,
               description="engineering", comment="floating")
    fin = Pool(name="fin-pool", pool_type=PoolType.MANUAL, cluster_id=eu.id, template_id=winxp.id, size=2)
    session.add_all([eng, fin])
    session.flush()

    users = {
        "john.smith": User(username="john.smith", domain="corp", first_name="John", last_name="Smith",
                           department="Engineering", email="john@corp.example"),
        "john smith": User(username="john smith", domain="internal", first_name="Johnny", last_name="Smith"),
        "mary": User(username="mary", domain="internal", first_name="Mary", last_name="Jones", department="Finance"),
        "admin": User(username="admin", domain="internal", first_name="Admin", last_name="Istrator"),
        "svc": User(username="svc", domain="internal", first_name="", last_name="Service"),
        "user1": User(username="user1", domain="internal", first_name="user1", last_name="One"),
    }
    session.add_all(users.values())
    session.add_all([Group(name="engineers", domain="corp", description="all engineers"),
                     Group(name="finance", domain="corp")])
    session.flush()

    def desktop(name: str, **kw) -> Desktop:
        d = Desktop(name=name, **kw)
        session.add(d)
        return d

    web1 = desktop("web1", power_state=PowerState.UP, cpu_usage=95, mem_usage=50, host_id=vsa.id,
                   template_version_id=versions["WinXP-office"].id, os_type=OsType.WINDOWS_XP,
                   installed_apps="Microsoft Office 2019,firefox", ip="10.1.0.5", guest_hostname="web1.corp.example",
                   description="frontend", assigned_user_id=users["john.smith"].id, started_at=now - dt.timedelta(days=2),
                   memory_mib=2048, cpus=2, created_at=utc(2024, 1, 10))
    web2 = desktop("web2", power_state=PowerState.UP, cpu_usage=20, host_id=host1.id, template_version_id=rhel_v2.id,
                   os_type=OsType.RHEL_9X64, installed_apps="firefox", ip="10.1.0.6", pool_id=eng.id,
                   started_at=now - dt.timedelta(hours=1), memory_mib=4096, cpus=4, created_at=utc(2024, 2, 1),
                   console_protocols="spice,rdp")
    db1 = desktop("db1", power_state=PowerState.DOWN, cpu_usage=0, template_version_id=versions["Blank"].id,
                  os_type=OsType.OTHER, description="database", pool_id=eng.id, started_at=now - dt.timedelta(days=9),
                  created_at=utc(2023, 12, 31))
    testdesktop = desktop("testdesktop", power_state=PowerState.PAUSED, cpu_usage=50, host_id=gonzo.id,
                          template_version_id=versions["WinXP-office"].id, os_type=OsType.WINDOWS_XP,
                          installed_apps="office", description="legacy web server", ip="10.1.0.9",
                          assigned_user_id=users["mary"].id, started_at=now - dt.timedelta(hours=3), pool_id=fin.id,
                          created_at=utc(2024, 3, 1))
    vm1 = desktop("vm1", power_state=PowerState.MIGRATING, cpu_usage=91, host_id=host1.id,
                  template_version_id=versions["rhel9"].id, os_type=OsType.RHEL_9X64, logged_in_user="bob",
                  assigned_user_id=users["user1"].id, started_at=now - dt.timedelta(minutes=30),
                  task_state=TaskState.MIGRATING, ha_enabled=True, ha_priority=50)
    desktop("stale1", power_state=PowerState.DOWN, host_id=fake1.id, template_version_id=versions["Blank"].id,
            comment="left on a dead host")
    desktop("my vm", power_state=PowerState.DOWN, description="has a space")
    desktop("50%", power_state=PowerState.SUSPENDED, description="percent")
    session.flush()

    session.add_all([
        Assignment(desktop_id=web1.id, user_id=users["svc"].id),
        Assignment(desktop_id=web2.id, user_id=users["mary"].id, kind="pool"),
        Entitlement(user_id=users["mary"].id, desktop_id=db1.id),
        Entitlement(user_id=users["admin"].id, desktop_id=testdesktop.id),
        Entitlement(user_id=users["john.smith"].id, pool_id=eng.id),
        Entitlement(user_id=users["mary"].id, pool_id=fin.id),
    ])
    session.add_all([
        Volume(path="/srv/sd1/web1/disk.qcow2", storage_domain_id=sd1.id, desktop_id=web1.id, virtual_size=20 * GIB,
               actual_size=3 * GIB),
        Volume(path="/srv/iscsi/web2/disk.qcow2", storage_domain_id=iscsi.id, desktop_id=web2.id,
               virtual_size=10 * GIB, actual_size=GIB, status="locked"),
        Volume(path="/srv/sd1/templates/blank.qcow2", storage_domain_id=sd1.id, role="template",
               virtual_size=8 * GIB, actual_size=GIB),
    ])

    tags = {}
    for name, parent in [("prod", None), ("prod-eu", "prod"), ("prod-eu-west", "prod-eu"), ("dev", None),
                         ("paris-loc", None), ("tag1", None), ("foo", None)]:
        tags[name] = Tag(name=name, parent_id=tags[parent].id if parent else None)
        session.add(tags[name])
        session.flush()
    session.add_all([
        TagAssignment(tag_id=tags["prod"].id, object_kind="desktop", object_id=web1.id),
        TagAssignment(tag_id=tags["dev"].id, object_kind="desktop", object_id=web2.id),
        TagAssignment(tag_id=tags["prod-eu"].id, object_kind="desktop", object_id=db1.id),
        TagAssignment(tag_id=tags["paris-loc"].id, object_kind="desktop", object_id=testdesktop.id),
        TagAssignment(tag_id=tags["tag1"].id, object_kind="host", object_id=host1.id),
        TagAssignment(tag_id=tags["tag1"].id, object_kind="user", object_id=users["user1"].id),
        TagAssignment(tag_id=tags["foo"].id, object_kind="user", object_id=users["mary"].id),
        TagAssignment(tag_id=tags["prod"].id, object_kind="template", object_id=rhel.id),
    ])

    session.add_all([
        Event(code="desktop.started", message="desktop web1 started", severity=Severity.NORMAL,
              time=local_today_at(1), desktop_id=web1.id, host_id=vsa.id, user_id=users["john.smith"].id,
              actor="john.smith@corp"),
        Event(code="disk.error", message="disk error on web2", severity=Severity.ERROR, time=utc(2024, 3, 1, 12),
              desktop_id=web2.id, host_id=host1.id, pool_id=eng.id),
        Event(code="host.overheating", message="host gonzo.example.com overheating", severity=Severity.ALERT,
              time=utc(2024, 1, 10, 8), host_id=gonzo.id),
        Event(code="desktop.paused", message="testdesktop paused", severity=Severity.WARNING,
              time=utc(2024, 2, 1, 9), desktop_id=testdesktop.id, host_id=gonzo.id),
        Event(code="image.illegal", message="db1 image illegal", severity=Severity.ERROR, time=utc(2024, 6, 1, 10),
              desktop_id=db1.id, template_id=blank.id),
        Event(code="desktop.deleted", message="a deleted event", severity=Severity.ERROR, time=utc(2024, 6, 2),
              desktop_id=web1.id, host_id=host1.id, deleted=True),
        Event(code="host.cpu", message="host1 cpu high", severity=Severity.WARNING, time=local_today_at(2),
              host_id=host1.id, correlation_id="corr-42", actor="admin@internal"),
    ])
    session.flush()
    return {d.name: d.id for d in (web1, web2, db1, testdesktop, vm1)}
