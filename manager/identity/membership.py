"""Group membership, nested groups included. Cycle-safe: the recursive query uses UNION, which stops when no new
group appears, so AD's allowed cycles (loop-a <-> loop-b) terminate."""
from __future__ import annotations

from sqlalchemy import Select, literal, select
from sqlalchemy.orm import Session

from manager.models import GroupGroupMembership, UserGroupMembership


def user_groups_select(user_id) -> Select:
    """SELECT of every group id the user belongs to (nested included), to embed in a larger query."""
    direct = select(UserGroupMembership.group_id.label("group_id")).where(UserGroupMembership.user_id == user_id)
    closure = direct.cte("user_groups", recursive=True)
    parents = select(GroupGroupMembership.parent_id).join(
        closure, GroupGroupMembership.child_id == closure.c.group_id)
    closure = closure.union(parents)
    return select(closure.c.group_id)


def group_ids_for_user(session: Session, user_id: str) -> set[str]:
    """Every group the user belongs to, directly or through nested groups."""
    return set(session.scalars(user_groups_select(user_id)))


def member_user_ids_of_group(session: Session, group_id: str) -> set[str]:
    """Every user in the group, directly or through nested groups."""
    start = select(literal(group_id).label("group_id"))
    closure = start.cte("sub_groups", recursive=True)
    children = select(GroupGroupMembership.child_id).join(
        closure, GroupGroupMembership.parent_id == closure.c.group_id)
    closure = closure.union(children)
    stmt = select(UserGroupMembership.user_id).where(UserGroupMembership.group_id.in_(select(closure.c.group_id)))
    return set(session.scalars(stmt))


__all__ = ["group_ids_for_user", "member_user_ids_of_group", "user_groups_select"]
