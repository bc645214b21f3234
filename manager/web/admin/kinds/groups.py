"""The group page: the group's facts, its members (users and groups), the groups it is in, and the roles and
entitlements it grants its members."""
from __future__ import annotations

from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from manager.auth import Principal
from manager.identity.membership import member_user_ids_of_group
from manager.models import (Desktop, Entitlement, Group, GroupGroupMembership, Pool, RoleAssignment, User,
                            UserGroupMembership)
from manager.web.admin.objects import Fact, ObjectKind, href, resource_loader, search_href, user_label

MEMBERS_SHOWN = 200


def group_label(group: Group) -> str:
    return f"{group.name}@{group.domain}"


def facts(session: Session, g: Group) -> list[Fact]:
    return [
        Fact("Name", g.name), Fact("Domain", g.domain), Fact("Source", g.source, "state"),
        Fact("Removed from the directory", g.deleted_in_directory, "bool"),
        Fact("Distinguished name", g.dn, "code", optional=True),
        Fact("Last synced", g.synced_at, "when"), Fact("Description", g.description, "multiline", optional=True),
        Fact("Created", g.created_at, "when"), Fact("ID", g.id, "code"),
    ]


def _links(groups: list[Group]) -> list[dict[str, str]]:
    return [{"label": group_label(g), "href": href("groups", g.id)} for g in groups]


def related(session: Session, g: Group, who: Principal) -> dict[str, Any]:
    users = session.scalars(select(User).join(UserGroupMembership, UserGroupMembership.user_id == User.id)
                            .where(UserGroupMembership.group_id == g.id).order_by(User.username, User.domain)
                            .limit(MEMBERS_SHOWN))
    out: dict[str, Any] = {
        "members": {
            "items": [{"label": user_label(u), "href": href("users", u.id), "name": u.display_name} for u in users],
            "total": session.scalar(select(func.count()).select_from(UserGroupMembership)
                                    .where(UserGroupMembership.group_id == g.id)) or 0,
            "nested_total": len(member_user_ids_of_group(session, g.id)),
        },
        "subgroups": _links(list(session.scalars(
            select(Group).join(GroupGroupMembership, GroupGroupMembership.child_id == Group.id)
            .where(GroupGroupMembership.parent_id == g.id).order_by(Group.name)))),
        "parents": _links(list(session.scalars(
            select(Group).join(GroupGroupMembership, GroupGroupMembership.parent_id == Group.id)
            .where(GroupGroupMembership.child_id == g.id).order_by(Group.name)))),
        "roles": sorted({r.value for r in session.scalars(select(RoleAssignment.role)
                                                          .where(RoleAssignment.group_id == g.id))}),
    }
    if who.can("entitlements:read"):
        rows = session.execute(select(Entitlement, Pool, Desktop).outerjoin(Pool, Pool.id == Entitlement.pool_id)
                               .outerjoin(Desktop, Desktop.id == Entitlement.desktop_id)
                               .where(Entitlement.group_id == g.id).order_by(Pool.name, Desktop.name)).all()
        out["entitlements"] = [{"label": f"pool {p.name}" if p else f"desktop {d.name}",
                                "href": href("pools", p.id) if p else href("desktops", d.id),
                                "note": "" if e.source == "manual" else f"from the {e.source}"}
                               for e, p, d in rows]
    return out


# Events record no group: a group's page has no Events tab (its members' pages do).
KIND = ObjectKind("groups", "group", "users:read", resource_loader("groups"), group_label, facts, related,
                  plural="Groups", list_href=search_href("Groups:"))
