"""Demo data a newcomer can click through. Idempotent: what exists is kept, what is missing is added."""
from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from core.enums import OsType, PoolType, Role
from event_manager.service import emit
from manager import db
from manager.auth import hash_password
from manager.bootstrap import ensure_admin
from manager.config import get_settings
from manager.models import (Cluster, Desktop, Entitlement, Group, Host, Pool, RoleAssignment, StorageDomain,
                            Template, TemplateVersion, User, UserGroupMembership)

DEMO_PASSWORD = "demo-password"
DEMO_USERS = [("alice", "Alice", "Andersen", "Engineering"), ("bob", "Bob", "Berg", "Engineering"),
              ("carol", "Carol", "Castro", "Finance"), ("dave", "Dave", "Dumont", "Support")]
DEMO_APPS = "LibreOffice 7.4,Firefox ESR 115,Thunderbird 115,GIMP 2.10,Office Viewer 1.2"


def _get_or_add(session: Session, model: type, where: dict, **values):
    obj = session.scalar(select(model).filter_by(**where))
    if obj is None:
        obj = model(**where, **values)
        session.add(obj)
        session.flush()
    return obj


def seed_demo(real_guests: str = "auto") -> list[str]:
    """Create the demo objects and return lines telling the operator what to open."""
    settings = get_settings()
    db.configure(settings.effective_database_url)
    storage_dir = settings.effective_storage_dir
    storage_dir.mkdir(parents=True, exist_ok=True)
    with db.session_scope() as session:
        admin, generated = ensure_admin(session, settings.admin_password or None,
                                        password_file=settings.data_dir / "admin-password")
        cluster = _get_or_add(session, Cluster, {"name": "Default"}, description="demo cluster")
        storage = _get_or_add(session, StorageDomain, {"name": "shared"}, path=str(storage_dir),
                              description="the directory every host mounts")
        hosts = [_get_or_add(session, Host, {"name": name}, cluster_id=cluster.id, address="127.0.0.1",
                             libvirt_uri=settings.libvirt_uri, comment="demo host")
                 for name in ("vs-a", "vs-b")]
        template = session.scalar(select(Template).where(Template.name == "debian-desktop"))
        first_run = template is None
        if first_run:
            template = Template(name="debian-desktop", description="tiny Debian kernel + busybox desktop",
                                os_type=OsType.DEBIAN_12, cpus=1, memory_mib=192, storage_domain_id=storage.id,
                                installed_apps=DEMO_APPS)
            session.add(template)
            session.flush()
            version = TemplateVersion(template_id=template.id, number=1, name="base version")
            session.add(version)
            session.flush()
            template.latest_version_id = version.id
        version_id = template.latest_version_id
        users = {}
        for username, first, last, dept in DEMO_USERS:
            users[username] = _get_or_add(
                session, User, {"username": username, "domain": "local"}, upn=f"{username}@local",
                display_name=f"{first} {last}", first_name=first, last_name=last, department=dept,
                email=f"{username}@example.com", password_hash=hash_password(DEMO_PASSWORD))
        engineering = _get_or_add(session, Group, {"name": "engineering", "domain": "local"},
                                  description="demo group")
        helpdesk = _get_or_add(session, Group, {"name": "helpdesk", "domain": "local"}, description="demo group")
        for username, group in (("alice", engineering), ("bob", engineering), ("dave", helpdesk)):
            _get_or_add(session, UserGroupMembership, {"user_id": users[username].id, "group_id": group.id})
        _get_or_add(session, RoleAssignment, {"group_id": helpdesk.id, "role": Role.HELP_DESK})
        pool = _get_or_add(session, Pool, {"name": "eng"}, pool_type=PoolType.AUTOMATIC, cluster_id=cluster.id,
                           template_id=template.id, size=3, prestarted=0, name_pattern="eng-###", cpus=1,
                           memory_mib=192, description="engineering floating desktops")
        _get_or_add(session, Entitlement, {"group_id": engineering.id, "pool_id": pool.id})
        for i in range(1, pool.size + 1):
            _get_or_add(session, Desktop, {"name": f"eng-{i:03d}"}, pool_id=pool.id, template_version_id=version_id,
                        cpus=1, memory_mib=192, os_type=OsType.DEBIAN_12, installed_apps=DEMO_APPS,
                        host_id=hosts[i % 2].id)
        carol_desk = _get_or_add(session, Desktop, {"name": "carol-finance"}, template_version_id=version_id,
                                 cpus=1, memory_mib=192, os_type=OsType.DEBIAN_12, installed_apps=DEMO_APPS,
                                 host_id=hosts[0].id, description="carol's dedicated desktop")
        _get_or_add(session, Entitlement, {"user_id": users["carol"].id, "desktop_id": carol_desk.id})
        if first_run:
            emit(session, "demo.seeded", "demo data created", actor="vdi demo")
    base = settings.effective_public_url
    lines = [f"Demo ready. Open {base}/docs (API) — log in with POST /api/v1/auth/login.",
             "  admin@local password: " + (generated if generated else
                                             f"see {settings.data_dir / 'admin-password'} (or VDI_ADMIN_PASSWORD)"),
             f"  demo users alice, bob, carol, dave (password {DEMO_PASSWORD!r})"]
    return lines
