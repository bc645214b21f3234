"""What a user can reach, and why; and taking it all away at once.

`explain_access` answers "which pools and desktops can this user use, and through which path" (a direct
entitlement, a group chain such as user011 -> eng-backend -> eng-all -> vdi-users, an assignment), and for one
pool "why (not)". Who counts as entitled (the user or any group in the nested closure), and which assignments
and held pool desktops give a user a desktop, come from broker.entitlement, the rules the broker checks.

`revoke_access` is what happens when the directory disables or removes an account: its sessions and tokens
go at once, its open desktop sessions are ended, and each step is an event.
"""
from __future__ import annotations

import datetime as dt
from collections import deque
from typing import Any

from sqlalchemy import delete, func, or_, select
from sqlalchemy.orm import Session

from broker import entitlement
from broker import service as broker_service
from broker.assignment import closed_reason
from core.enums import PoolType, SessionState
from core.errors import NotFound
from event_manager.service import emit
from manager import console_proxy
from manager.auth import revoke_tokens
from manager.identity.membership import group_ids_for_user, member_user_ids_of_group
from manager.jobs import enqueue
from manager.models import (Assignment, Desktop, DesktopSession, Entitlement, Group, GroupGroupMembership,
                            Pool, User, UserGroupMembership, utcnow)


# ---- revocation ---------------------------------------------------------------------------------------------
def revoke_access(session: Session, user: User, *, reason: str, actor: str = "system") -> dict[str, int]:
    """Take everything away from `user` at once: every API and session token is deleted, their open desktop
    sessions end (one event each), the pool desktops they hold are released and reset or removed by their pool's
    policy (broker.service.revoke_pool_desktops), and their open browser consoles are told to close (each manager
    process closes its own within a second or two). A native client's console is cut by the released desktop's
    reset or removal, or on a desktop kept by a desktops.cut_consoles job (its tickets stop working too). One
    event for the account. Idempotent.
    Returns {"tokens": n, "sessions": m, "desktops": d, "consoles": c}."""
    now = utcnow()
    tokens = revoke_tokens(session, user.id)
    open_sessions = list(session.scalars(select(DesktopSession).where(
        DesktopSession.user_id == user.id, DesktopSession.state != SessionState.ENDED)))
    for desktop_session in open_sessions:
        desktop_session.state, desktop_session.ended_at = SessionState.ENDED, now
        emit(session, "session.ended", f"session of {user.username} on desktop {desktop_session.desktop_id} ended: "
             f"account {reason}", actor=actor, user_id=user.id, desktop_id=desktop_session.desktop_id,
             pool_id=desktop_session.pool_id)
    session.flush()
    released = broker_service.revoke_pool_desktops(session, user.id, why=f"account {reason}", actor=actor)
    # a desktop kept (dedicated, or its pool keeps it) would keep serving the native client already connected
    for desktop_id in sorted({s.desktop_id for s in open_sessions} - {r.desktop_id for r in released}):
        enqueue(session, "desktops.cut_consoles", params={"desktop_id": desktop_id}, created_by=actor,
                target_kind="desktop", target_id=desktop_id, description=f"disconnect {user.username}'s consoles")
    consoles = console_proxy.request_close_of_user(session, user.id)
    emit(session, "user.access_revoked", f"{user.username}@{user.domain} {reason}: {tokens} token(s) revoked, "
         f"{len(open_sessions)} session(s) ended, {len(released)} pool desktop(s) taken back, {consoles} browser "
         "console(s) closed", actor=actor, user_id=user.id)
    return {"tokens": tokens, "sessions": len(open_sessions), "desktops": len(released), "consoles": consoles}


def revoke_pool_entitlement(session: Session, pool_id: str, *, actor: str) -> int:
    """After an entitlement to the pool went: every user who holds a desktop of it and is no longer entitled to
    it (through any other entitlement, direct or by group) loses it as revoke_access takes it, with its sessions
    and browser consoles there. Returns how many desktops were taken back."""
    holders = set(session.scalars(select(Desktop.assigned_user_id).where(
        Desktop.pool_id == pool_id, Desktop.assigned_user_id.is_not(None))))
    return sum(_take_back_unentitled(session, user_id, {pool_id}, actor=actor) for user_id in sorted(holders))


def revoke_group(session: Session, group_id: str, *, actor: str) -> int:
    """Before a group is deleted: its entitlements and memberships go now (what the foreign keys would cascade at
    the delete), then every member (through nested groups too) who holds a pool desktop no longer reachable by
    another path loses it as revoke_pool_entitlement takes it. Returns how many desktops were taken back."""
    members = member_user_ids_of_group(session, group_id)
    session.execute(delete(Entitlement).where(Entitlement.group_id == group_id))
    session.execute(delete(GroupGroupMembership).where(or_(GroupGroupMembership.parent_id == group_id,
                                                           GroupGroupMembership.child_id == group_id)))
    session.execute(delete(UserGroupMembership).where(UserGroupMembership.group_id == group_id))
    session.flush()
    taken = 0
    for user_id in sorted(members):
        held = set(session.scalars(select(Desktop.pool_id).where(Desktop.assigned_user_id == user_id,
                                                                 Desktop.pool_id.is_not(None))))
        taken += _take_back_unentitled(session, user_id, held, actor=actor)
    return taken


def _take_back_unentitled(session: Session, user_id: str, pool_ids: set[str], *, actor: str) -> int:
    """Of `pool_ids`, the pools whose desktops the user holds but may no longer use: release them (their pool's
    reclaim policy) and close the user's browser consoles on them. Returns how many desktops were taken back."""
    lost = pool_ids - entitlement.entitled_pool_ids(session, user_id)
    taken = 0
    for pool_id in sorted(lost):
        released = broker_service.revoke_pool_desktops(session, user_id, why="no longer entitled to the pool",
                                                       actor=actor, pool_id=pool_id)
        console_proxy.request_close_of_user(session, user_id, desktop_ids=[r.desktop_id for r in released])
        taken += len(released)
    return taken


# ---- explanation --------------------------------------------------------------------------------------------
def group_chains(session: Session, user: User) -> dict[str, list[str]]:
    """For every group the user is in (nested included): the shortest chain of names from the user to it,
    e.g. ["user011", "eng-backend", "eng-all", "vdi-users"]. Breadth-first with a visited set: cycles end."""
    closure = group_ids_for_user(session, user.id)
    if not closure:
        return {}
    names = dict(session.execute(select(Group.id, Group.name).where(Group.id.in_(closure))).all())
    parents: dict[str, list[str]] = {}
    for child, parent in session.execute(select(GroupGroupMembership.child_id, GroupGroupMembership.parent_id)
                                         .where(GroupGroupMembership.child_id.in_(closure))):
        parents.setdefault(child, []).append(parent)
    direct = sorted(session.scalars(select(UserGroupMembership.group_id)
                                    .where(UserGroupMembership.user_id == user.id)), key=lambda g: names.get(g, g))
    chains: dict[str, list[str]] = {}
    queue: deque[str] = deque()
    for group_id in direct:
        chains[group_id] = [user.username, names.get(group_id, group_id)]
        queue.append(group_id)
    while queue:
        current = queue.popleft()
        for parent in sorted(parents.get(current, []), key=lambda g: names.get(g, g)):
            if parent not in chains:
                chains[parent] = chains[current] + [names.get(parent, parent)]
                queue.append(parent)
    return chains


def _account_blocks(user: User) -> list[str]:
    reasons = []
    if user.deleted_in_directory:
        reasons.append("the account was removed from the directory")
    elif not user.enabled:
        reasons.append("the account is disabled" + (" in the directory" if user.source == "ad" else ""))
    return reasons


def _pool_blocks(pool: Pool, now: dt.datetime) -> list[str]:
    reasons = []
    if pool.size <= 0:
        reasons.append(f"pool {pool.name} has no desktops (size 0)")
    if pool.pool_type == PoolType.TIME_BASED:
        closed = closed_reason(pool, now)
        if closed is not None:
            reasons.append(f"pool {pool.name} {closed}")
    return reasons


def find_pool(session: Session, id_or_name: str) -> Pool:
    pool = session.get(Pool, id_or_name) or session.scalar(select(Pool).where(Pool.name == id_or_name))
    if pool is None:
        raise NotFound(kind="pool", id=id_or_name)
    return pool


def explain_access(session: Session, user: User, *, pool: Pool | None = None) -> dict[str, Any]:
    """Which pools and desktops `user` reaches, each with every path that grants it; with `pool`, also
    whether that pool is usable and, if not, every reason (no entitlement, account disabled or removed,
    pool empty or outside its time window)."""
    now = utcnow()
    chains = group_chains(session, user)
    group_ids = set(chains)
    principal = entitlement.principal_clause(user.id, group_ids)
    pools: dict[str, dict[str, Any]] = {}
    desktops: dict[str, dict[str, Any]] = {}

    def path_for(ent: Entitlement) -> dict[str, Any]:
        if ent.user_id is not None:
            return {"via": "direct entitlement", "entitlement_id": ent.id, "source": ent.source}
        chain = chains[ent.group_id]
        return {"via": "group", "group": chain[-1], "chain": chain, "entitlement_id": ent.id, "source": ent.source}

    for ent in session.scalars(select(Entitlement).where(principal).order_by(Entitlement.created_at)):
        if ent.pool_id is not None:
            target = session.get(Pool, ent.pool_id)
            entry = pools.setdefault(ent.pool_id, {"id": ent.pool_id, "name": target.name, "paths": []})
        else:
            target = session.get(Desktop, ent.desktop_id)
            entry = desktops.setdefault(ent.desktop_id, {"id": ent.desktop_id, "name": target.name, "paths": []})
        entry["paths"].append(path_for(ent))
    for assignment in session.scalars(select(Assignment).where(entitlement.assigned_to(user.id))):
        desktop = session.get(Desktop, assignment.desktop_id)
        desktops.setdefault(desktop.id, {"id": desktop.id, "name": desktop.name, "paths": []})["paths"].append(
            {"via": "assignment", "kind": assignment.kind,
             "until": assignment.until.isoformat() if assignment.until else None})
    for desktop in session.scalars(select(Desktop).where(entitlement.held_by(user.id))):
        desktops.setdefault(desktop.id, {"id": desktop.id, "name": desktop.name, "paths": []})["paths"].append(
            {"via": "holds pool desktop", "pool_id": desktop.pool_id})

    blocks = _account_blocks(user)
    out: dict[str, Any] = {
        "user": {"id": user.id, "username": user.username, "domain": user.domain, "source": str(user.source),
                 "enabled": user.enabled, "removed_from_directory": user.deleted_in_directory},
        "active": not blocks,
        "blocked_by": blocks,
        "groups": sorted(({"id": gid, "name": chain[-1], "chain": chain} for gid, chain in chains.items()),
                         key=lambda g: (len(g["chain"]), g["name"])),
        "pools": sorted(pools.values(), key=lambda p: p["name"]),
        "desktops": sorted(desktops.values(), key=lambda d: d["name"]),
    }
    if pool is not None:
        paths = pools.get(pool.id, {}).get("paths", [])
        reasons = list(blocks)
        if not paths:
            group_names = sorted(chain[-1] for chain in chains.values())
            reasons.append(f"no entitlement: neither {user.username} nor any of their {len(group_names)} group(s)"
                           + (f" ({', '.join(group_names[:20])}{', ...' if len(group_names) > 20 else ''})"
                              if group_names else "") + f" is entitled to pool {pool.name}")
        reasons += _pool_blocks(pool, now)
        in_use = session.scalar(select(func.count()).select_from(Desktop).where(
            Desktop.pool_id == pool.id, entitlement.held_by(user.id))) or 0
        out["pool"] = {"id": pool.id, "name": pool.name, "allowed": not reasons, "paths": paths,
                       "reasons": reasons, "desktops_held": in_use}
    return out
