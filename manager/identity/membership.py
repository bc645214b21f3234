"""Group membership, nested groups included. Cycle-safe: the recursive query uses UNION, which stops when no new
group appears, so AD's allowed cycles (loop-a <-> loop-b) terminate."""
from __future__ import annotations

from sqlalchemy import Select, literal, select
from sqlalchemy.orm import Session

from manager.models import Group, GroupGroupMembership, User, UserGroupMembership


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


def _group_and_subgroups(group_id) -> Select:
    """SELECT of the group's id and every group nested in it, at any depth."""
    start = select(literal(group_id).label("group_id"))
    closure = start.cte("sub_groups", recursive=True)
    children = select(GroupGroupMembership.child_id).join(
        closure, GroupGroupMembership.parent_id == closure.c.group_id)
    closure = closure.union(children)
    return select(closure.c.group_id)


def member_user_ids_of_group(session: Session, group_id: str) -> set[str]:
    """Every user in the group, directly or through nested groups."""
    stmt = select(UserGroupMembership.user_id).where(UserGroupMembership.group_id.in_(_group_and_subgroups(group_id)))
    return set(session.scalars(stmt))


def group_members(group_id: str, *, nested: bool = False) -> Select:
    """SELECT of the users in the group: its direct members, or with `nested` also the members of the groups
    nested in it (GET /groups/{id}/members and the group's page)."""
    groups = _group_and_subgroups(group_id) if nested else select(literal(group_id))
    return select(User).where(User.id.in_(
        select(UserGroupMembership.user_id).where(UserGroupMembership.group_id.in_(groups))))


def member_groups(group_id: str) -> Select:
    """SELECT of the groups that are direct members of the group (GET /groups/{id}/subgroups)."""
    return select(Group).where(Group.id.in_(
        select(GroupGroupMembership.child_id).where(GroupGroupMembership.parent_id == group_id)))


def parent_groups(group_id: str) -> Select:
    """SELECT of the groups the group is a direct member of (GET /groups/{id}/parents)."""
    return select(Group).where(Group.id.in_(
        select(GroupGroupMembership.parent_id).where(GroupGroupMembership.child_id == group_id)))


__all__ = ["group_ids_for_user", "group_members", "member_groups", "member_user_ids_of_group", "parent_groups",
           "user_groups_select"]
