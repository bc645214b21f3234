"""Who may use which pool or desktop: entitlements given to the user or to any group the user is in
(nested groups included, cycle-safe through manager.identity.membership)."""
from __future__ import annotations

from sqlalchemy import exists, or_, select
from sqlalchemy.orm import Session

from manager.identity.membership import group_ids_for_user
from manager.models import Assignment, Desktop, Entitlement, GroupGroupMembership, UserGroupMembership


def principal_clause(user_id: str, group_ids: set[str]):
    """Entitlement rows that count for the user: given to the user or to any of `group_ids` (their nested
    groups, manager.identity.membership.group_ids_for_user)."""
    return or_(Entitlement.user_id == user_id, Entitlement.group_id.in_(group_ids)) if group_ids \
        else Entitlement.user_id == user_id


def assigned_to(user_id):
    """Assignment rows that let the user reach their desktop (dedicated or shared assignments)."""
    return Assignment.user_id == user_id


def held_by(user_id):
    """Desktop rows the user holds now (pool desktops assigned to them)."""
    return Desktop.assigned_user_id == user_id


def entitled_pool_ids(session: Session, user_id: str, group_ids: set[str] | None = None) -> set[str]:
    """Every pool the user may draw a desktop from."""
    groups = group_ids_for_user(session, user_id) if group_ids is None else group_ids
    stmt = select(Entitlement.pool_id).where(Entitlement.pool_id.is_not(None), principal_clause(user_id, groups))
    return set(session.scalars(stmt))


def _user_groups_cte(user_id):
    """Every group of the user, nested included, as a recursive CTE (UNION stops on cycles), so that a check
    and the group walk run as ONE statement (manager.identity.membership does the same walk as a set)."""
    direct = select(UserGroupMembership.group_id.label("group_id")).where(UserGroupMembership.user_id == user_id)
    closure = direct.cte("entitled_groups", recursive=True)
    return closure.union(select(GroupGroupMembership.parent_id).join(
        closure, GroupGroupMembership.child_id == closure.c.group_id))


def pool_entitlement(user_id, pool_id):
    """A boolean SQL expression: the user, or any of their (nested) groups, is entitled to `pool_id`. Both may be
    values, columns or bound parameters, so a query that loads the pool answers the entitlement in the same round
    trip, and a statement built once can be run for any user."""
    groups = _user_groups_cte(user_id)
    return exists().where(Entitlement.pool_id == pool_id, or_(
        Entitlement.user_id == user_id, Entitlement.group_id.in_(select(groups.c.group_id))))


def reachable_desktop_ids(session: Session, user_id: str) -> set[str]:
    """Desktops this user may open a console on: dedicated/shared assignments, desktop entitlements (user or
    group) and pool desktops currently assigned to them. Never another user's pool desktop."""
    groups = group_ids_for_user(session, user_id)
    ids = set(session.scalars(select(Assignment.desktop_id).where(assigned_to(user_id))))
    ids |= set(session.scalars(select(Entitlement.desktop_id).where(
        Entitlement.desktop_id.is_not(None), principal_clause(user_id, groups))))
    ids |= set(session.scalars(select(Desktop.id).where(held_by(user_id))))
    return ids


def can_reach_desktop(session: Session, user_id: str, desktop: Desktop) -> bool:
    """True when the user may connect to this particular desktop (see reachable_desktop_ids)."""
    if desktop.assigned_user_id == user_id:
        return True
    if desktop.pool_id is not None and desktop.assigned_user_id is not None:
        # A pool desktop held by someone else is theirs alone, whatever entitlements say.
        return False
    if session.scalar(select(exists().where(Assignment.desktop_id == desktop.id, Assignment.user_id == user_id))):
        return True
    groups = group_ids_for_user(session, user_id)
    return bool(session.scalar(select(exists().where(Entitlement.desktop_id == desktop.id,
                                                     principal_clause(user_id, groups)))))
