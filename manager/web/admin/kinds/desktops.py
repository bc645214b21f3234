"""The desktop page: its facts, where it runs and what it is made of, who holds it, its console sessions and
snapshots, a live screenshot and the administrator's console button."""
from __future__ import annotations

from typing import Any

from sqlalchemy.orm import Session

from broker import sessions
from broker.protocol import parse_protocols
from image_manager.service import list_snapshots
from manager.api.broker import SessionOut
from manager.api.common import paginate
from manager.api.desktop_actions import attachments_page
from manager.auth import Principal
from manager.models import Desktop
from manager.provisioning.screens import SHOWS_A_SCREEN
from manager.web.admin.objects import (Fact, ObjectKind, href, resource_loader, search_href,
                                       user_label, version_label)
from manager.web.related import WHOLE, first_page, related_object, related_objects

SESSIONS_SHOWN = 10


def _version_facts(session: Session, who: Principal, label: str, version_id: str | None) -> list[Fact]:
    version = related_object(session, "template-versions", version_id, who)
    if version is None:
        return [Fact(label, None)] if label == "Template" else []
    template = related_object(session, "templates", version.template_id, who)
    return [Fact(label, template.name if template else version.template_id, "link",
                 href("templates", version.template_id)),
            Fact(f"{label} version", version_label(version), "link",
                 href("templates", version.template_id) + f"#version-{version.number}")]


def facts(session: Session, d: Desktop, who: Principal) -> list[Fact]:
    host = related_object(session, "hosts", d.host_id, who)
    pool = related_object(session, "pools", d.pool_id, who)
    user = related_object(session, "users", d.assigned_user_id, who)
    return [
        Fact("Status", d.power_state, "state"), Fact("Task", d.task_state, "state"),
        Fact("Host", host.name if host else None, "link", href("hosts", host.id) if host else None),
        Fact("Pool", pool.name if pool else None, "link", href("pools", pool.id) if pool else None),
        *_version_facts(session, who, "Template", d.template_version_id),
        *_version_facts(session, who, "Moving to template", d.pending_template_version_id),
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
    # GET /desktops/{id}/users, each user read as GET /users/{id} reads it for the viewer
    attached = attachments_page(session, d.id, first_page(WHOLE), who)["items"]
    users = related_objects(session, "users", (a.user_id for a in attached), who)
    out: dict[str, Any] = {
        "attached": sorted(({"user": users[a.user_id], "label": user_label(users[a.user_id]), "kind": a.kind,
                             "until": a.until} for a in attached if a.user_id in users),
                           key=lambda row: (row["user"].username, row["user"].domain)),
        "snapshots": list_snapshots(session, d),
        "can_console": who.can("desktops:console"),
        "has_screen": d.power_state in SHOWS_A_SCREEN,
        "protocols": [p.value for p in parse_protocols(d.console_protocols)],
    }
    if who.can("sessions:read"):
        found = paginate(session, sessions.query_sessions(desktop_id=d.id), first_page(SESSIONS_SHOWN), SessionOut,
                         default_order=list(sessions.NEWEST_FIRST))
        users = {user_id: user_label(u) for user_id, u in
                 related_objects(session, "users", (row.user_id for row in found["items"]), who).items()}
        out["sessions"] = {"items": found["items"], "total": found["total"], "users": users}
    return out


KIND = ObjectKind("desktops", "desktop", "desktops:read", resource_loader("desktops"), lambda d: d.name, facts,
                  related, event_filter=lambda d: {"desktop_id": d.id}, plural="Desktops",
                  list_href=search_href("Vms:"))
