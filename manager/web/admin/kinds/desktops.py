"""The desktop page: its facts, where it runs and what it is made of, who holds it, its console sessions and
snapshots, a live screenshot and the administrator's console button."""
from __future__ import annotations

from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from broker import sessions
from broker.protocol import parse_protocols
from image_manager.service import list_snapshots
from manager.api.broker import SessionOut
from manager.api.common import PageParams, paginate
from manager.auth import Principal
from manager.models import Assignment, Desktop, Host, Pool, Template, TemplateVersion, User
from manager.provisioning.screens import SHOWS_A_SCREEN
from manager.web.admin.objects import (Fact, ObjectKind, href, resource_loader, search_href, user_label,
                                       version_label)

SESSIONS_SHOWN = 10


def _version_facts(session: Session, label: str, version_id: str | None) -> list[Fact]:
    version = session.get(TemplateVersion, version_id) if version_id else None
    if version is None:
        return [Fact(label, None)] if label == "Template" else []
    template = session.get(Template, version.template_id)
    return [Fact(label, template.name if template else version.template_id, "link",
                 href("templates", version.template_id)),
            Fact(f"{label} version", version_label(version), "link",
                 href("templates", version.template_id) + f"#version-{version.number}")]


def facts(session: Session, d: Desktop) -> list[Fact]:
    host = session.get(Host, d.host_id) if d.host_id else None
    pool = session.get(Pool, d.pool_id) if d.pool_id else None
    user = session.get(User, d.assigned_user_id) if d.assigned_user_id else None
    return [
        Fact("Status", d.power_state, "state"), Fact("Task", d.task_state, "state"),
        Fact("Host", host.name if host else None, "link", href("hosts", host.id) if host else None),
        Fact("Pool", pool.name if pool else None, "link", href("pools", pool.id) if pool else None),
        *_version_facts(session, "Template", d.template_version_id),
        *_version_facts(session, "Moving to template", d.pending_template_version_id),
        Fact("Assigned user", user_label(user) if user else None, "link", href("users", user.id) if user else None),
        Fact("Assigned at", d.assigned_at, "when"), Fact("Lease until", d.lease_until, "when"),
        Fact("Logged-in user", d.logged_in_user), Fact("IP address", d.ip), Fact("Guest host name", d.guest_hostname),
        Fact("Operating system", d.os_type, "state"), Fact("vCPUs", d.cpus), Fact("Memory", d.memory_mib, "mib"),
        Fact("Disk size", f"{d.disk_size_gib} GiB" if d.disk_size_gib else None), Fact("Monitors", d.monitors),
        Fact("Console protocols", d.console_protocols.replace(",", ", ")),
        Fact("CPU use", d.cpu_usage, "percent"), Fact("Memory use", d.mem_usage, "percent"),
        Fact("Started", d.started_at, "when"),
        Fact("High availability", f"on, priority {d.ha_priority}" if d.ha_enabled else "off"),
        Fact("Installed applications", d.installed_apps.replace(",", ", "), optional=True),
        Fact("Description", d.description, "multiline", optional=True),
        Fact("Comment", d.comment, "multiline", optional=True),
        Fact("Created", d.created_at, "when"), Fact("Updated", d.updated_at, "when"), Fact("ID", d.id, "code"),
    ]


def related(session: Session, d: Desktop, who: Principal) -> dict[str, Any]:
    attached = session.execute(select(Assignment, User).join(User, User.id == Assignment.user_id)
                               .where(Assignment.desktop_id == d.id).order_by(User.username, User.domain)).all()
    out: dict[str, Any] = {
        "attached": [{"user": user, "label": user_label(user), "kind": a.kind, "until": a.until}
                     for a, user in attached],
        "snapshots": list_snapshots(session, d),
        "can_console": who.can("desktops:console"),
        "has_screen": d.power_state in SHOWS_A_SCREEN,
        "protocols": [p.value for p in parse_protocols(d.console_protocols)],
    }
    if who.can("sessions:read"):
        found = paginate(session, sessions.query_sessions(desktop_id=d.id),
                         PageParams(page=1, per_page=SESSIONS_SHOWN, sort=None, order="asc"), SessionOut,
                         default_order=list(sessions.NEWEST_FIRST))
        users = {u.id: user_label(u) for u in session.scalars(
            select(User).where(User.id.in_({row.user_id for row in found["items"]})))}
        out["sessions"] = {"items": found["items"], "total": found["total"], "users": users}
    return out


KIND = ObjectKind("desktops", "desktop", "desktops:read", resource_loader("desktops"), lambda d: d.name, facts,
                  related, event_filter=lambda d: {"desktop_id": d.id}, plural="Desktops",
                  list_href=search_href("Vms:"))
