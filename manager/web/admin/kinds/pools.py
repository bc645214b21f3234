"""The pool page: its settings, its template, its desktops (the search `Vms: pool = <pool>`) and who is entitled
to it."""
from __future__ import annotations

from typing import Any

from sqlalchemy.orm import Session

from core.enums import DisconnectAction
from manager.auth import Principal
from manager.models import Pool
from manager.web.admin.actions import DISCONNECT_LABELS, opening_hours
from manager.web.admin.objects import (Fact, ObjectKind, entitlements_shown, group_label, href, resource_loader,
                                       search_href, search_preview, user_label, version_label)
from manager.web.related import related_object

ENTITLEMENTS_SHOWN = 100


def disconnect_policy(p: Pool) -> str:
    """The pool's disconnect policy in words, as the forms ask for it."""
    if p.disconnect_action == DisconnectAction.NONE:
        return "nothing (the desktop waits for its user)"
    delay = f"after {p.disconnect_after_minutes} min" if p.disconnect_after_minutes else "at once"
    return f"{DISCONNECT_LABELS[p.disconnect_action].lower()} {delay}"


def facts(session: Session, p: Pool, who: Principal) -> list[Fact]:
    template = related_object(session, "templates", p.template_id, who)
    version = related_object(session, "template-versions", p.template_version_id, who)
    cluster = related_object(session, "clusters", p.cluster_id, who)
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
        Fact("Longest lease", f"{p.max_lease_seconds} s" if p.max_lease_seconds else None),
        Fact("When a user disconnects", disconnect_policy(p)),
        Fact("Window starts", p.window_start, "when"), Fact("Window ends", p.window_end, "when"),
        Fact("Opening hours", f"{opening_hours(p)} ({p.time_zone})" if p.schedule else None, "multiline"),
        Fact("Open now", None if not p.schedule or p.schedule_open is None else ("yes" if p.schedule_open else "no")),
        Fact("Description", p.description, "multiline", optional=True),
        Fact("Comment", p.comment, "multiline", optional=True),
        Fact("Created", p.created_at, "when"), Fact("ID", p.id, "code"),
    ]


def related(session: Session, p: Pool, who: Principal) -> dict[str, Any]:
    out: dict[str, Any] = {"desktops": search_preview(session, "Vms: pool =", p.name)
                           if who.can("desktops:read") else None}
    if who.can("entitlements:read"):
        found = entitlements_shown(session, who, ENTITLEMENTS_SHOWN, pool_id=p.id)
        items = [{"label": user_label(e["user"]) if e["user"] else group_label(e["group"]),
                  "what": "user" if e["user"] else "group",
                  "href": href("users", e["user"].id) if e["user"] else href("groups", e["group"].id),
                  "source": e["entitlement"].source, "since": e["entitlement"].created_at}
                 for e in found["items"] if e["user"] or e["group"]]
        # groups first, then users, each by name
        out["entitlements"] = {"items": sorted(items, key=lambda i: (i["what"], i["label"])), "total": found["total"]}
    return out


KIND = ObjectKind("pools", "pool", "pools:read", resource_loader("pools"), lambda p: p.name, facts, related,
                  event_filter=lambda p: {"pool_id": p.id}, plural="Pools", list_href=search_href("Pools:"))
