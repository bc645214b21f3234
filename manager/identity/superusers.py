"""There is always an enabled SuperUser: a change that would leave none is refused with a 409.

Every change that can take the SuperUser role away from the last account holding it (deleting a role assignment,
deleting or disabling a user, deleting a group that grants the role) calls `keep_a_superuser` after it has flushed.
The check is concurrency-safe: it first takes one transaction-scoped lock (a Postgres advisory lock; SQLite has a
single writer, and the change already holds it), then counts in one statement. Two admins removing each other at
once are serialised by the lock, and the second's count (read committed: a new snapshot per statement) sees the
first's committed change, so one of them gets the 409.
"""
from __future__ import annotations

from sqlalchemy import exists, func, or_, select, text
from sqlalchemy.orm import Session

from core.enums import Role
from core.errors import Conflict
from manager.db import is_postgres
from manager.models import GroupGroupMembership, RoleAssignment, User, UserGroupMembership

# pg_advisory_xact_lock key: any constant shared by every caller ("vdisuper" in ASCII)
_LOCK_KEY = 0x7664697375706572


def superuser_ids_select():
    """SELECT of the ids of the enabled accounts holding SuperUser, directly or through any group (nested)."""
    granting = select(RoleAssignment.group_id.label("group_id")).where(
        RoleAssignment.role == Role.SUPER_USER, RoleAssignment.group_id.is_not(None))
    closure = granting.cte("superuser_groups", recursive=True)
    closure = closure.union(select(GroupGroupMembership.child_id).join(
        closure, GroupGroupMembership.parent_id == closure.c.group_id))
    direct = exists().where(RoleAssignment.user_id == User.id, RoleAssignment.role == Role.SUPER_USER)
    via_group = exists().where(UserGroupMembership.user_id == User.id,
                               UserGroupMembership.group_id.in_(select(closure.c.group_id)))
    return select(User.id).where(User.enabled.is_(True), User.deleted_in_directory.is_(False),
                                 or_(direct, via_group))


def count_superusers(session: Session) -> int:
    return session.scalar(select(func.count()).select_from(superuser_ids_select().subquery())) or 0


def lock_superusers(session: Session) -> None:
    """Serialise the changes that can remove a SuperUser until this transaction ends."""
    if is_postgres(session):
        session.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _LOCK_KEY})


def keep_a_superuser(session: Session, change: str) -> None:
    """Call after flushing a change that may take the SuperUser role from someone: raise Conflict (409, the caller's
    transaction is rolled back) when no enabled SuperUser would remain."""
    session.flush()
    lock_superusers(session)
    if count_superusers(session) == 0:
        raise Conflict(f"{change} would leave no enabled SuperUser; give another account the SuperUser role first")
