"""The pool page: its settings, its template, its desktops (the search `Vms: pool = <pool>`) and who is entitled
to it."""
from __future__ import annotations

from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from manager.auth import Principal
from manager.models import Cluster, Entitlement, Group, Pool, Template, TemplateVersion, User
from manager.web.admin.objects import (Fact, ObjectKind, href, resource_loader, search_href, search_preview,
                                       user_label, version_label)

ENTITLEMENTS_SHOWN = 100


def facts(session: Session, p: Pool) -> list[Fact]:
    template = session.get(Template, p.template_id)
    version = session.get(TemplateVersion, p.template_version_id) if p.template_version_id else None
    cluster = session.get(Cluster, p.cluster_id) if p.cluster_id else None
    return [
        Fact("Type", p.pool_type, "state"),
        Fact("Template", template.name if template else p.template_id, "link", href("templates", p.template_id)),
        Fact("Template version", version_label(version) if version else "the latest", "link" if version else "text",
             href("templates", p.template_id) + f"#version-{version.number}" if version else None),
        Fact("Cluster", cluster.name if cluster else "any"),
        Fact("Size", p.size), Fact("Prestarted", p.prestarted), Fact("Desktops per user", p.max_desktops_per_user),
        Fact("Name pattern", p.name_pattern, "code"), Fact("vCPUs", p.cpus), Fact("Memory", p.memory_mib, "mib"),
        Fact("Protocol policy", p.protocol_policy, "state"), Fact("Reclaim policy", p.reclaim_policy, "state"),
        Fact("Lease", f"{p.lease_seconds} s" if p.lease_seconds else None),
        Fact("Window starts", p.window_start, "when"), Fact("Window ends", p.window_end, "when"),
        Fact("Description", p.description, "multiline", optional=True),
        Fact("Comment", p.comment, "multiline", optional=True),
        Fact("Created", p.created_at, "when"), Fact("ID", p.id, "code"),
    ]


def related(session: Session, p: Pool, who: Principal) -> dict[str, Any]:
    out: dict[str, Any] = {"desktops": search_preview(session, "Vms: pool =", p.name)
                           if who.can("desktops:read") else None}
    if who.can("entitlements:read"):
        rows = session.execute(
            select(Entitlement, User, Group).outerjoin(User, User.id == Entitlement.user_id)
            .outerjoin(Group, Group.id == Entitlement.group_id).where(Entitlement.pool_id == p.id)
            .order_by(Group.name, User.username).limit(ENTITLEMENTS_SHOWN)).all()
        out["entitlements"] = {
            "items": [{"label": user_label(u) if u else f"{g.name}@{g.domain}",
                       "href": href("users", u.id) if u else href("groups", g.id), "what": "user" if u else "group",
                       "source": e.source, "since": e.created_at} for e, u, g in rows],
            "total": session.scalar(select(func.count()).select_from(Entitlement)
                                    .where(Entitlement.pool_id == p.id)) or 0}
    return out


KIND = ObjectKind("pools", "pool", "pools:read", resource_loader("pools"), lambda p: p.name, facts, related,
                  event_filter=lambda p: {"pool_id": p.id}, plural="Pools", list_href=search_href("Pools:"))
