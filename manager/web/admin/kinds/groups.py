"""The group page: the group's facts, its members (users and groups), the groups it is in, and the roles and
entitlements it grants its members."""
from __future__ import annotations

from typing import Any

from sqlalchemy.orm import Session

from manager.api.identity import group_members_page, parents_page, subgroups_page
from manager.auth import Principal
from manager.models import Group
from manager.web.admin.objects import (Fact, ObjectKind, entitlements_shown, group_label,
                                       href, resource_loader, search_href, user_label)
from manager.web.related import WHOLE, first_page, related_page

MEMBERS_SHOWN = 200


def facts(session: Session, g: Group, who: Principal) -> list[Fact]:
    return [
        Fact("Name", g.name), Fact("Domain", g.domain), Fact("Source", g.source, "state"),
        Fact("Removed from the directory", g.deleted_in_directory, "bool"),
        Fact("Distinguished name", g.dn, "code", optional=True),
        Fact("Last synced", g.synced_at, "when"), Fact("Description", g.description, "multiline", optional=True),
        Fact("Created", g.created_at, "when"), Fact("ID", g.id, "code"),
    ]


def _links(groups: list[Any]) -> list[dict[str, str]]:
    return [{"label": group_label(g), "href": href("groups", g.id)} for g in groups]


def related(session: Session, g: Group, who: Principal) -> dict[str, Any]:
    """What GET /groups/{id}/members (?nested=true), /subgroups, /parents, /role-assignments?group_id= and
    /entitlements?group_id= answer."""
    members = group_members_page(session, g.id, first_page(MEMBERS_SHOWN), who)
    roles = related_page(session, "role-assignments", first_page(WHOLE), who, group_id=g.id)
    out: dict[str, Any] = {
        "members": {
            "items": [{"label": user_label(u), "href": href("users", u.id), "name": u.display_name}
                      for u in members["items"]],
            "total": members["total"],
            "nested_total": group_members_page(session, g.id, first_page(1), who, nested=True)["total"],
        },
        "subgroups": _links(subgroups_page(session, g.id, first_page(WHOLE), who)["items"]),
        "parents": _links(parents_page(session, g.id, first_page(WHOLE), who)["items"]),
        "roles": sorted({r.role.value for r in roles["items"]}),
    }
    if who.can("entitlements:read"):
        found = entitlements_shown(session, who, WHOLE, group_id=g.id)
        links = [{"label": f"pool {e['pool'].name}" if e["pool"] else f"desktop {e['desktop'].name}",
                  "href": href("pools", e["pool"].id) if e["pool"] else href("desktops", e["desktop"].id),
                  "note": "" if e["entitlement"].source == "manual" else f"from the {e['entitlement'].source}",
                  "pool": e["pool"] is not None}
                 for e in found["items"] if e["pool"] or e["desktop"]]
        # pools first, then desktops, each by name
        out["entitlements"] = sorted(links, key=lambda link: (not link["pool"], link["label"]))
    return out


# Events record no group: a group's page has no Events tab (its members' pages do).
KIND = ObjectKind("groups", "group", "users:read", resource_loader("groups"), group_label, facts, related,
                  plural="Groups", list_href=search_href("Groups:"))
