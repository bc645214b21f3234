"""The user page: the account's facts, their roles, and what they can reach and why (GET /users/{id}/access:
their desktops and pools, each with the path that grants it, and their groups with the chain to each)."""
from __future__ import annotations

from typing import Any

from sqlalchemy.orm import Session

from core.enums import Role
from manager.auth import ROLE_ORDER, Principal, roles_of
from manager.identity.access import explain_access
from manager.models import User
from manager.web.admin.objects import (Fact, ObjectKind, resource_loader, search_href,
                                       user_label)
from manager.web.related import WHOLE, first_page, related_page



def facts(session: Session, u: User, who: Principal) -> list[Fact]:
    return [
        Fact("User name", u.username), Fact("Domain", u.domain), Fact("UPN", u.upn),
        Fact("Display name", u.display_name), Fact("First name", u.first_name), Fact("Last name", u.last_name),
        Fact("E-mail", u.email), Fact("Department", u.department), Fact("Source", u.source, "state"),
        Fact("Enabled", u.enabled, "bool"), Fact("Removed from the directory", u.deleted_in_directory, "bool"),
        Fact("Distinguished name", u.dn, "code", optional=True), Fact("Last synced", u.synced_at, "when"),
        Fact("Created", u.created_at, "when"), Fact("ID", u.id, "code"),
    ]


def related(session: Session, u: User, who: Principal) -> dict[str, Any]:
    held = set(roles_of(session, u.id))
    # the roles given to the user themself: GET /role-assignments?user_id=
    direct = {r.role for r in related_page(session, "role-assignments", first_page(WHOLE), who,
                                                                             user_id=u.id)["items"]}
    return {
        # each role the user holds, and whether it is their own or comes through a group
        "roles": [(role, "directly" if role in direct else "through a group" if role != Role.USER else "everyone")
                  for role in ROLE_ORDER if role in held],
        "access": explain_access(session, u),
    }


KIND = ObjectKind("users", "user", "users:read", resource_loader("users"), user_label, facts, related,
                  event_filter=lambda u: {"user_id": u.id}, plural="Users", list_href=search_href("Users:"))
