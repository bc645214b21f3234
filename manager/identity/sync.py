"""Directory sync: make the users, groups and direct memberships in the database match Active Directory.

Two steps, so a dry run shows exactly what a real run would do:

- `plan_sync` reads the directory (everything, or only what changed since the uSNChanged high-water mark) and
  compares it with the database by objectGUID, the key that survives renames and moves. It writes nothing.
- `apply_plan` writes the plan: users and groups added or changed, removed ones marked deleted, direct
  user->group and group->group memberships replaced (the nested closure is computed on read by
  manager.identity.membership, cycle-safe), access revoked from users who were disabled or removed, the
  AD group -> role/entitlement mapping re-applied, and the high-water mark stored.

A full sync detects deletions by comparing GUID sets; an incremental one by the tombstones (Show Deleted
control, visible to administrators only) and by a light GUID-only listing of what is still in scope (which also
catches objects moved out of the search base or filter). Incremental falls back to full when there is no previous run, when the DC's database is another
one (invocationId) or was restored (its highest USN went backwards), and when the last full sync is older
than `full_sync_interval`.
"""
from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from core.enums import PrincipalSource, Severity
from event_manager.service import emit
from manager.identity.access import revoke_access
from manager.identity.directory import (DeletedObject, Directory, DirectoryGroup, DirectoryUser,
                                        normalize_dn)
from manager.identity.permissions import apply_directory_permissions
from manager.identity.superusers import count_superusers
from manager.identity.settings import DirectorySettings
from manager.models import DirectorySyncState, Group, GroupGroupMembership, User, UserGroupMembership, utcnow

log = logging.getLogger(__name__)

FULL_SYNC_INTERVAL = dt.timedelta(hours=24)
USER_FIELDS = ("username", "upn", "display_name", "first_name", "last_name", "email", "department", "dn")
GROUP_FIELDS = ("name", "description", "dn")
Progress = Callable[[int, int], None]


@dataclass
class Snapshot:
    """What was read from the directory in one run."""

    mode: str  # full | incremental
    reason: str  # why this mode
    users: list[DirectoryUser]
    groups: list[DirectoryGroup]
    deleted: list[DeletedObject]
    highest_usn: int
    invocation_id: str
    # incremental runs: every objectGUID still in scope (None on full runs, where `users`/`groups` are all)
    present_users: set[str] | None = None
    present_groups: set[str] | None = None


@dataclass
class SyncPlan:
    """The difference between the directory and the database; `summary()` is what --dry-run prints."""

    snapshot: Snapshot
    users_added: list[DirectoryUser] = field(default_factory=list)
    users_changed: list[tuple[DirectoryUser, list[str]]] = field(default_factory=list)
    users_disabled: list[DirectoryUser] = field(default_factory=list)
    users_removed: list[tuple[str, str]] = field(default_factory=list)  # (user id, name)
    groups_added: list[DirectoryGroup] = field(default_factory=list)
    groups_changed: list[tuple[DirectoryGroup, list[str]]] = field(default_factory=list)
    groups_removed: list[tuple[str, str]] = field(default_factory=list)
    # desired direct members of each group read in this run: group guid -> (user guids, child group guids)
    members: dict[str, tuple[set[str], set[str]]] = field(default_factory=dict)
    memberships_added: list[tuple[str, str]] = field(default_factory=list)  # (member name, group name)
    memberships_removed: list[tuple[str, str]] = field(default_factory=list)

    def summary(self, limit: int = 50) -> dict[str, Any]:
        def names(items: list[str]) -> dict[str, Any]:
            return {"count": len(items), "names": sorted(items)[:limit]}

        return {
            "mode": self.snapshot.mode,
            "reason": self.snapshot.reason,
            "highest_usn": self.snapshot.highest_usn,
            "read": {"users": len(self.snapshot.users), "groups": len(self.snapshot.groups),
                     "deleted": len(self.snapshot.deleted)},
            "users": {"added": names([u.username for u in self.users_added]),
                      "changed": {"count": len(self.users_changed),
                                  "names": sorted(f"{u.username} ({', '.join(f)})"
                                                  for u, f in self.users_changed)[:limit]},
                      "disabled": names([u.username for u in self.users_disabled]),
                      "removed": names([n for _, n in self.users_removed])},
            "groups": {"added": names([g.name for g in self.groups_added]),
                       "changed": {"count": len(self.groups_changed),
                                   "names": sorted(f"{g.name} ({', '.join(f)})"
                                                   for g, f in self.groups_changed)[:limit]},
                       "removed": names([n for _, n in self.groups_removed])},
            "memberships": {"added": names([f"{m} -> {g}" for m, g in self.memberships_added]),
                            "removed": names([f"{m} -> {g}" for m, g in self.memberships_removed])},
        }


@dataclass
class SyncResult:
    plan: SyncPlan
    dry_run: bool
    revoked: dict[str, Any] = field(default_factory=dict)
    permissions: dict[str, Any] = field(default_factory=dict)

    def summary(self, limit: int = 50) -> dict[str, Any]:
        out = {"dry_run": self.dry_run, **self.plan.summary(limit)}
        if not self.dry_run:
            out["revoked"] = self.revoked
            out["permissions"] = self.permissions
        return out


# ---- reading ------------------------------------------------------------------------------------------------
def _state(session: Session, name: str, *, lock: bool) -> DirectorySyncState | None:
    stmt = select(DirectorySyncState).where(DirectorySyncState.directory == name)
    if lock:
        stmt = stmt.with_for_update()
    return session.scalar(stmt)


def choose_mode(state: DirectorySyncState | None, highest_usn: int, invocation_id: str, *, full: bool | None,
                now: dt.datetime, full_sync_interval: dt.timedelta = FULL_SYNC_INTERVAL) -> tuple[str, str]:
    """('full' | 'incremental', why). `full=True/False` forces; None decides from the previous run."""
    if full:
        return "full", "requested"
    if state is None or state.highest_usn <= 0:
        return "full", "first sync"
    if state.invocation_id and invocation_id and state.invocation_id != invocation_id:
        return "full", "the domain controller's database changed (invocationId)"
    if highest_usn < state.highest_usn:
        return "full", "the directory's USN went backwards (restored from a backup?)"
    if full is None and (state.last_full_sync_at is None or now - state.last_full_sync_at > full_sync_interval):
        return "full", "periodic full sync"
    return "incremental", f"changes after USN {state.highest_usn}"


def read_directory(directory: Directory, state: DirectorySyncState | None, *, full: bool | None,
                   now: dt.datetime) -> Snapshot:
    """Read users, groups and (incremental) tombstones. The watermark is taken first, so a change made while
    the search runs is read again next time rather than missed."""
    with directory.service_connection() as conn:
        highest, invocation = directory.watermark(conn)
        mode, reason = choose_mode(state, highest, invocation, full=full, now=now)
        since = state.highest_usn if mode == "incremental" and state is not None else None
        users = list(directory.users(conn, since))
        groups = list(directory.groups(conn, since))
        snapshot = Snapshot(mode=mode, reason=reason, users=users, groups=groups, deleted=[], highest_usn=highest,
                            invocation_id=invocation)
        if since is not None:
            snapshot.deleted = directory.deleted_since(conn, since)
            snapshot.present_users = directory.user_guids(conn)
            snapshot.present_groups = directory.group_guids(conn)
    return snapshot


# ---- planning -----------------------------------------------------------------------------------------------
def _user_values(user: DirectoryUser) -> dict[str, Any]:
    return {"username": user.username, "upn": user.upn, "display_name": user.display_name,
            "first_name": user.first_name, "last_name": user.last_name, "email": user.email,
            "department": user.department, "dn": user.dn}


def _group_values(group: DirectoryGroup) -> dict[str, Any]:
    return {"name": group.name, "description": group.description, "dn": group.dn}


def plan_sync(session: Session, snapshot: Snapshot) -> SyncPlan:
    """Compare a snapshot with the database (directory-sourced rows only). Reads, never writes."""
    plan = SyncPlan(snapshot=snapshot)
    db_users = {u.object_guid: u for u in session.scalars(select(User).where(User.source == PrincipalSource.AD))}
    db_groups = {g.object_guid: g for g in session.scalars(select(Group).where(Group.source == PrincipalSource.AD))}

    seen_users = {u.guid for u in snapshot.users}
    seen_groups = {g.guid for g in snapshot.groups}
    for dir_user in snapshot.users:
        row = db_users.get(dir_user.guid)
        if row is None:
            plan.users_added.append(dir_user)
            continue
        changed = [name for name, value in _user_values(dir_user).items() if getattr(row, name) != value]
        if row.deleted_in_directory:
            changed.append("restored")
        if dir_user.enabled and not row.enabled:
            changed.append("enabled")
        if changed:
            plan.users_changed.append((dir_user, changed))
        if row.enabled and not dir_user.enabled and not row.deleted_in_directory:
            plan.users_disabled.append(dir_user)
    for dir_group in snapshot.groups:
        row = db_groups.get(dir_group.guid)
        if row is None:
            plan.groups_added.append(dir_group)
            continue
        changed = [name for name, value in _group_values(dir_group).items() if getattr(row, name) != value]
        if row.deleted_in_directory:
            changed.append("restored")
        if changed:
            plan.groups_changed.append((dir_group, changed))

    if snapshot.mode == "full":
        gone_users = [u for guid, u in db_users.items() if guid not in seen_users and not u.deleted_in_directory]
        gone_groups = [g for guid, g in db_groups.items() if guid not in seen_groups and not g.deleted_in_directory]
    else:
        # tombstones (when the account may see them), and whatever is no longer in scope (always)
        tomb_users = {d.guid for d in snapshot.deleted if d.kind == "user"} - seen_users
        tomb_groups = {d.guid for d in snapshot.deleted if d.kind == "group"} - seen_groups
        if snapshot.present_users is not None:
            tomb_users |= set(db_users) - snapshot.present_users - seen_users
        if snapshot.present_groups is not None:
            tomb_groups |= set(db_groups) - snapshot.present_groups - seen_groups
        gone_users = [db_users[g] for g in tomb_users if g in db_users and not db_users[g].deleted_in_directory]
        gone_groups = [db_groups[g] for g in tomb_groups if g in db_groups and not db_groups[g].deleted_in_directory]
    plan.users_removed = sorted((u.id, u.username) for u in gone_users)
    plan.groups_removed = sorted((g.id, g.name) for g in gone_groups)

    _plan_memberships(session, plan, db_users, db_groups)
    return plan


def _plan_memberships(session: Session, plan: SyncPlan, db_users: dict[str, User], db_groups: dict[str, Group]) \
        -> None:
    snapshot = plan.snapshot
    removed_users = {uid for uid, _ in plan.users_removed}
    removed_groups = {gid for gid, _ in plan.groups_removed}
    # DN -> guid: what the database knows, overlaid by what was just read (renames and moves change DNs)
    user_by_dn = {normalize_dn(u.dn): guid for guid, u in db_users.items() if u.dn and u.id not in removed_users}
    group_by_dn = {normalize_dn(g.dn): guid for guid, g in db_groups.items() if g.dn and g.id not in removed_groups}
    user_by_dn.update({normalize_dn(u.dn): u.guid for u in snapshot.users})
    group_by_dn.update({normalize_dn(g.dn): g.guid for g in snapshot.groups})
    user_name = {guid: u.username for guid, u in db_users.items()} | {u.guid: u.username for u in snapshot.users}
    group_name = {guid: g.name for guid, g in db_groups.items()} | {g.guid: g.name for g in snapshot.groups}

    user_guid_by_id = {u.id: guid for guid, u in db_users.items()}
    group_guid_by_id = {g.id: guid for guid, g in db_groups.items()}
    current_users: dict[str, set[str]] = {}
    current_groups: dict[str, set[str]] = {}
    group_ids = list(group_guid_by_id)
    for start in range(0, len(group_ids), 1000):
        chunk = group_ids[start:start + 1000]
        for m in session.scalars(select(UserGroupMembership).where(UserGroupMembership.group_id.in_(chunk))):
            if m.user_id in user_guid_by_id:
                current_users.setdefault(group_guid_by_id[m.group_id], set()).add(user_guid_by_id[m.user_id])
        for m in session.scalars(select(GroupGroupMembership).where(GroupGroupMembership.parent_id.in_(chunk))):
            if m.child_id in group_guid_by_id:
                current_groups.setdefault(group_guid_by_id[m.parent_id], set()).add(group_guid_by_id[m.child_id])

    for dir_group in snapshot.groups:
        users: set[str] = set()
        children: set[str] = set()
        for member_dn in dir_group.members:
            key = normalize_dn(member_dn)
            if key in user_by_dn:
                users.add(user_by_dn[key])
            elif key in group_by_dn:
                children.add(group_by_dn[key])
            # anything else (computers, contacts, foreign principals, objects outside the filters) is ignored
        plan.members[dir_group.guid] = (users, children)
        before_users = current_users.get(dir_group.guid, set())
        before_groups = current_groups.get(dir_group.guid, set())
        plan.memberships_added += [(user_name[g], dir_group.name) for g in users - before_users]
        plan.memberships_added += [(group_name[g], dir_group.name) for g in children - before_groups]
        plan.memberships_removed += [(user_name[g], dir_group.name) for g in before_users - users]
        plan.memberships_removed += [(group_name[g], dir_group.name) for g in before_groups - children]


# ---- applying -----------------------------------------------------------------------------------------------
def _make_names_free(session: Session, model: type, column: str, domain: str, existing: dict[str, Any],
                     wanted: dict[str, str]) -> None:
    """Before names are written: AD names are unique at any moment, so a row holding a wanted name under
    another GUID is stale (an account deleted and re-created, or renamed in a swap). Renamed rows first move
    to a temporary name, then stale holders are parked as "<name>~<guid prefix>" and keep their identity.
    Flushes only when something had to move (renames are rare; the common path costs no query per row)."""
    moving = [row for guid, row in existing.items() if guid in wanted and getattr(row, column) != wanted[guid]]
    for row in moving:
        setattr(row, column, f"~{row.object_guid}")
    if moving:
        session.flush()
    holders = {getattr(row, column): row for row in session.scalars(select(model).where(model.domain == domain))}
    parked = False
    for guid, name in wanted.items():
        holder = holders.get(name)
        if holder is not None and holder.object_guid != guid:
            setattr(holder, column, f"{name}~{(holder.object_guid or holder.id)[:8]}")
            parked = True
    if parked:
        session.flush()


def apply_plan(session: Session, plan: SyncPlan, settings: DirectorySettings, *, actor: str = "system",
               progress: Progress | None = None) -> tuple[dict[str, Any], dict[str, Any]]:
    """Write `plan` in the caller's transaction. Returns (revocation summary, permission import summary)."""
    snapshot = plan.snapshot
    domain, directory_name = settings.netbios_domain, settings.name
    now = utcnow()
    users = {u.object_guid: u for u in session.scalars(select(User).where(User.source == PrincipalSource.AD))}
    groups = {g.object_guid: g for g in session.scalars(select(Group).where(Group.source == PrincipalSource.AD))}
    total = len(snapshot.users) + len(snapshot.groups) + len(plan.members)
    done = 0

    def tick(n: int = 1) -> None:
        nonlocal done
        done += n
        if progress is not None:
            progress(done, total)

    removed_user_ids = {uid for uid, _ in plan.users_removed}
    for row in users.values():
        if row.id in removed_user_ids:
            row.deleted_in_directory, row.enabled, row.synced_at = True, False, now
    removed_group_ids = {gid for gid, _ in plan.groups_removed}
    for row in groups.values():
        if row.id in removed_group_ids:
            row.deleted_in_directory, row.synced_at = True, now
    if removed_user_ids:
        session.execute(delete(UserGroupMembership).where(UserGroupMembership.user_id.in_(removed_user_ids)))
    if removed_group_ids:
        session.execute(delete(UserGroupMembership).where(UserGroupMembership.group_id.in_(removed_group_ids)))
        session.execute(delete(GroupGroupMembership).where(GroupGroupMembership.parent_id.in_(removed_group_ids)))
        session.execute(delete(GroupGroupMembership).where(GroupGroupMembership.child_id.in_(removed_group_ids)))
    session.flush()

    _make_names_free(session, User, "username", domain, users, {u.guid: u.username for u in snapshot.users})
    _make_names_free(session, Group, "name", domain, groups, {g.guid: g.name for g in snapshot.groups})
    for dir_user in snapshot.users:
        row = users.get(dir_user.guid)
        if row is None:
            row = User(object_guid=dir_user.guid, domain=domain, source=PrincipalSource.AD)
            session.add(row)
            users[dir_user.guid] = row
        for name, value in _user_values(dir_user).items():
            setattr(row, name, value)
        row.enabled, row.deleted_in_directory = dir_user.enabled, False
        row.usn_changed, row.synced_at = dir_user.usn, now
        tick()
    session.flush()
    for dir_group in snapshot.groups:
        row = groups.get(dir_group.guid)
        if row is None:
            row = Group(object_guid=dir_group.guid, domain=domain, source=PrincipalSource.AD)
            session.add(row)
            groups[dir_group.guid] = row
        for name, value in _group_values(dir_group).items():
            setattr(row, name, value)
        row.deleted_in_directory, row.usn_changed, row.synced_at = False, dir_group.usn, now
        tick()
    session.flush()

    touched = [groups[g].id for g in plan.members]
    user_rows: dict[str, set[str]] = {}
    child_rows: dict[str, set[str]] = {}
    for start in range(0, len(touched), 1000):
        chunk = touched[start:start + 1000]
        for user_id, group_id in session.execute(select(UserGroupMembership.user_id, UserGroupMembership.group_id)
                                                 .where(UserGroupMembership.group_id.in_(chunk))):
            user_rows.setdefault(group_id, set()).add(user_id)
        for child_id, parent_id in session.execute(select(GroupGroupMembership.child_id,
                                                          GroupGroupMembership.parent_id)
                                                   .where(GroupGroupMembership.parent_id.in_(chunk))):
            child_rows.setdefault(parent_id, set()).add(child_id)
    for group_guid, (user_guids, child_guids) in plan.members.items():
        group_id = groups[group_guid].id
        want_users = {users[g].id for g in user_guids if g in users}
        want_children = {groups[g].id for g in child_guids if g in groups}
        have_users = user_rows.get(group_id, set())
        have_children = child_rows.get(group_id, set())
        if have_users - want_users:
            session.execute(delete(UserGroupMembership).where(UserGroupMembership.group_id == group_id,
                                                              UserGroupMembership.user_id.in_(have_users - want_users)))
        if have_children - want_children:
            session.execute(delete(GroupGroupMembership).where(
                GroupGroupMembership.parent_id == group_id, GroupGroupMembership.child_id.in_(have_children - want_children)))
        session.add_all(UserGroupMembership(user_id=u, group_id=group_id) for u in want_users - have_users)
        session.add_all(GroupGroupMembership(parent_id=group_id, child_id=c) for c in want_children - have_children)
        tick()
    session.flush()

    revoked: dict[str, Any] = {"users": 0, "tokens": 0, "sessions": 0}
    for dir_user in plan.users_disabled:
        _add(revoked, revoke_access(session, users[dir_user.guid], reason="disabled in the directory", actor=actor))
    for user_id, _name in plan.users_removed:
        _add(revoked, revoke_access(session, session.get(User, user_id), reason="removed from the directory",
                                    actor=actor))

    permissions = apply_directory_permissions(session, domain=domain, actor=actor, settings=settings)
    if count_superusers(session) == 0:
        # The directory is the authority on its accounts and groups, so the sync is not refused; it says loudly
        # what it did (the API refuses the same removal with a 409).
        emit(session, "identity.no_superuser", "after the directory sync no enabled account holds the SuperUser "
             "role; map a directory group to SuperUser (VDI_AD_ROLE_MAP) or run `vdi restore-admin` on the manager "
             "host", severity=Severity.ALERT, actor=actor)

    state = _state(session, directory_name, lock=False)
    if state is None:
        state = DirectorySyncState(directory=directory_name)
        session.add(state)
    state.highest_usn, state.invocation_id = snapshot.highest_usn, snapshot.invocation_id
    state.last_sync_at, state.last_error = now, ""
    state.runs = (state.runs or 0) + 1
    if snapshot.mode == "full":
        state.last_full_sync_at = now
    session.flush()
    return revoked, permissions


def _add(total: dict[str, Any], part: dict[str, int]) -> None:
    total["users"] += 1
    total["tokens"] += part["tokens"]
    total["sessions"] += part["sessions"]


# ---- the one entry point --------------------------------------------------------------------------------------
def sync_directory(session: Session, directory: Directory, *, full: bool | None = None, dry_run: bool = False,
                   actor: str = "system", progress: Progress | None = None) -> SyncResult:
    """Sync users, groups and memberships from `directory` into the caller's transaction.

    full: True forces a full sync, False an incremental one when possible, None (the scheduled job) lets the
    previous run decide (full every 24 h). dry_run: compute and return the diff, write nothing.
    Raises Unavailable when the directory cannot be read; the database is then left untouched.
    """
    settings = directory.settings
    now = utcnow()
    state = _state(session, settings.name, lock=not dry_run)
    snapshot = read_directory(directory, state, full=full, now=now)
    plan = plan_sync(session, snapshot)
    result = SyncResult(plan=plan, dry_run=dry_run)
    if dry_run:
        return result
    result.revoked, result.permissions = apply_plan(session, plan, settings, actor=actor, progress=progress)
    s = plan.summary(limit=0)
    emit(session, "directory.synced",
         f"{snapshot.mode} sync of {settings.name}: users +{s['users']['added']['count']} "
         f"~{s['users']['changed']['count']} disabled {s['users']['disabled']['count']} "
         f"removed {s['users']['removed']['count']}; groups +{s['groups']['added']['count']} "
         f"~{s['groups']['changed']['count']} -{s['groups']['removed']['count']}; memberships "
         f"+{s['memberships']['added']['count']} -{s['memberships']['removed']['count']}", actor=actor)
    log.info("directory %s: %s sync done (USN %d)", settings.name, snapshot.mode, snapshot.highest_usn)
    return result


def record_sync_error(session: Session, directory_name: str, message: str) -> None:
    """Remember why the last run failed (shown by GET /directory/status)."""
    state = _state(session, directory_name, lock=False)
    if state is None:
        state = DirectorySyncState(directory=directory_name)
        session.add(state)
    state.last_error = message[:4000]
    session.flush()
