"""The broker's public API: a user's connect and an administrator's console, one implementation for the API
routes and the web pages.

The broker does not reach nodes itself: the manager hands it a `DesktopNodes` (start a desktop and wait until it
runs; issue a console for it), which manager.provisioning.consoles provides as NODES.

`connect` is the login storm's hot path (bench/login_storm.py): three round trips to Postgres for a pool desktop
that is already running (the take with the user's lock held by the caller, the session's INSERT and the events
pipelined with the commit). Keep it that way: no extra statement, no extra commit.
"""
from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol as Interface

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from broker import assignment, entitlement, lifecycle, sessions
from broker.assignment import Assigned, assignment_guard, take_from_pool
from broker.console import ConsoleDescriptor
from broker.errors import BadConnectRequest
from broker.protocol import choose_protocol, parse_protocols, with_browser_display
from core.enums import (HostStatus, PoolType, PowerState, Protocol, ProtocolPolicy, ReclaimPolicy, SessionState,
                        Severity, TaskState)
from core.errors import Conflict, NotFound
from event_manager.service import emit
from manager.db import commit_and_give_up_slot, commit_in_route, get_or_404, is_postgres
from manager.jobs import enqueue
from manager.models import Desktop, DesktopSession, Host, Pool, User, utcnow


class Caller(Interface):
    """Who connects or opens a console (manager.auth.Principal is one)."""

    user_id: str
    username: str

    @property
    def name(self) -> str: ...  # user@domain, as events name the actor


class DesktopNodes(Interface):
    """What the broker needs done on the nodes."""

    def ensure_running(self, desktop_id: str, *, actor: str) -> None:
        """Return once the desktop runs (start it, or wait for whoever is starting it)."""

    def issue_console(self, session: Session, desktop: Any, protocol: Protocol, *, username: str,
                      fullscreen: bool = False) -> ConsoleDescriptor:
        """A fresh console ticket for the desktop (a Desktop or a DESKTOP_BRIEF row)."""


@dataclass(frozen=True)
class ConnectTarget:
    """Exactly one of pool_id, pool_name or desktop_id. `new_desktop`: one more desktop of the pool."""

    pool_id: str | None = None
    pool_name: str | None = None
    desktop_id: str | None = None
    new_desktop: bool = False


@dataclass(frozen=True)
class ClientInfo:
    protocols: Sequence[Protocol] = (Protocol.SPICE,)  # what the client can display
    prefer: Protocol | None = None
    address: str = ""  # where the client connects from
    fullscreen: bool = False
    browser: bool = False  # the browser console: shows a SPICE desktop's VNC display (protocol.with_browser_display)


@dataclass(frozen=True)
class ConsoleResult:
    """A connect's or an administrator's console: render `console` with broker.console.render_file."""

    session_id: str  # "" for an administrator's console (no user session)
    desktop_id: str
    desktop_name: str
    pool_id: str | None
    assignment: str  # new | existing | dedicated | direct | admin
    lease_until: dt.datetime | None
    protocol: Protocol
    protocol_reason: str
    console: ConsoleDescriptor


def reachable_desktop(session: Session, user_id: str, desktop_id: str) -> Desktop:
    """The desktop, if the user may connect to it; NotFound otherwise (someone else's desktop does not exist for
    them)."""
    desktop = session.get(Desktop, desktop_id)
    if desktop is None or not entitlement.can_reach_desktop(session, user_id, desktop):
        raise NotFound(kind="desktop", id=desktop_id)
    return desktop


def connect(session: Session, who: Caller, target: ConnectTarget, client: ClientInfo, *, nodes: DesktopNodes,
            user_locked: bool = False, now: dt.datetime | None = None) -> ConsoleResult:
    """Connect `who` to a pool (a desktop is assigned) or to one of their desktops: start it if needed, issue a
    short-lived console ticket, record the session. Commits the caller's session (several times: no lock or
    transaction is held while a desktop boots or a node is called); the result is final.

    `user_locked`: the caller's transaction already holds the user's row lock (the API's connect takes it as it
    authenticates); otherwise the pool's take locks it. Raises NotFound (also for a pool the user is not entitled
    to), PoolClosed, PoolFull, TooManyDesktops, NoCommonProtocol, BadConnectRequest, DesktopStartTimeout and node
    errors."""
    now = now or utcnow()
    client_protocols = list(client.protocols)

    def protocol_for(desktop: Any, policy: ProtocolPolicy):
        offered = parse_protocols(desktop.console_protocols)
        return choose_protocol(os_type=desktop.os_type,
                               desktop_protocols=with_browser_display(offered) if client.browser else offered,
                               client_protocols=client_protocols, policy=policy, preferred=client.prefer,
                               desktop_name=desktop.name)

    if target.desktop_id:
        if target.new_desktop:
            raise BadConnectRequest(reason="new_desktop applies to pools; give pool_id or pool")
        desktop = reachable_desktop(session, who.user_id, target.desktop_id)
        pool = session.get(Pool, desktop.pool_id) if desktop.pool_id else None
        assigned = Assigned(desktop, "direct", desktop.lease_until)
        choice = protocol_for(desktop, pool.protocol_policy if pool is not None else ProtocolPolicy.AUTO)
    elif target.pool_id or target.pool_name:
        with assignment_guard(session):
            pool, assigned = take_from_pool(session, who.user_id, "id" if target.pool_id else "name",
                                            target.pool_id or target.pool_name, new_desktop=target.new_desktop,
                                            now=now, user_locked=user_locked)
            desktop = assigned.desktop
            # Refuse before committing: a user whose client cannot display this desktop keeps no assignment.
            choice = protocol_for(desktop, pool.protocol_policy)
            if assigned.newly_assigned:
                lease = f" until {assigned.lease_until.isoformat()}" if assigned.lease_until else ""
                emit(session, "broker.assigned", f"desktop {desktop.name} of pool {pool.name} assigned to "
                     f"{who.name}{lease}", actor=who.name, user_id=who.user_id, desktop_id=desktop.id,
                     pool_id=pool.id)
            # Release the row locks before any node call (and, on SQLite, before leaving the guard). Without a
            # node call ahead (RDP to a running desktop) the final commit does it, one round trip less.
            needs_node = desktop.power_state != PowerState.UP or desktop.task_state is not None \
                or choice.protocol != Protocol.RDP
            if needs_node or not is_postgres(session):
                session.commit()
    else:
        raise BadConnectRequest(reason="give exactly one of pool_id, pool (a name) or desktop_id")

    if desktop.power_state != PowerState.UP or desktop.task_state is not None:
        commit_and_give_up_slot(session)  # no connection or lock is held while the desktop boots
        nodes.ensure_running(desktop.id, actor=who.name)
        desktop = session.get(Desktop, desktop.id, populate_existing=True)  # where it runs now
    desc = nodes.issue_console(session, desktop, choice.protocol, username=who.username,
                               fullscreen=client.fullscreen)
    # A new desktop's session is a plain INSERT: with the events, it needs no answer and goes with the commit.
    with commit_in_route(session, pipelined=assigned.newly_assigned):
        session_id = sessions.open_session(session, user_id=who.user_id, desktop_id=desktop.id,
                                           pool_id=desktop.pool_id, protocol=choice.protocol.value,
                                           client_address=client.address, ticket_expires_at=desc.expires_at,
                                           now=now, fresh=assigned.newly_assigned)
        emit(session, "broker.connected", f"{who.name} connected to desktop {desktop.name} over "
             f"{choice.protocol.value} from {client.address or 'an unknown address'} ({assigned.how} desktop; "
             f"{choice.reason})", actor=who.name, user_id=who.user_id, desktop_id=desktop.id,
             pool_id=desktop.pool_id, correlation_id=session_id)
        ticket_event(session, desktop, who, desc, session_id)
    return ConsoleResult(session_id, desktop.id, desktop.name, desktop.pool_id, assigned.how, assigned.lease_until,
                         choice.protocol, choice.reason, desc)


def ticket_event(session: Session, desktop: Any, who: Caller, desc: ConsoleDescriptor, session_id: str) -> None:
    """The event of a console ticket issued to a user. The password never goes into an event or a log line: only
    who, which desktop and until when."""
    until = desc.expires_at.isoformat() if desc.expires_at else "n/a (RDP uses the guest's own login)"
    emit(session, "console.ticket", f"{desc.protocol.value} console ticket for desktop {desktop.name} issued to "
         f"{who.name}, valid until {until}", actor=who.name, user_id=who.user_id, desktop_id=desktop.id,
         pool_id=desktop.pool_id, correlation_id=session_id)


def admin_console(session: Session, who: Caller, desktop_id: str, protocol: Protocol = Protocol.SPICE, *,
                  nodes: DesktopNodes, browser: bool = False) -> ConsoleResult:
    """An administrator's console on any running desktop, recorded as a `console.admin_access` event (a WARNING
    naming the user when someone holds the desktop). The caller checks the permission (desktops:console) and
    commits. Raises NotFound, Conflict when the desktop is not running, NoCommonProtocol, node errors."""
    desktop = get_or_404(session, Desktop, desktop_id, "desktop")
    if desktop.power_state != PowerState.UP:
        raise Conflict(f"desktop {desktop.name} is {desktop.power_state.value}; start it to open its console")
    offered = parse_protocols(desktop.console_protocols)
    choice = choose_protocol(os_type=desktop.os_type,
                             desktop_protocols=with_browser_display(offered) if browser else offered,
                             client_protocols=[protocol], preferred=protocol, desktop_name=desktop.name)
    desc = nodes.issue_console(session, desktop, choice.protocol, username=who.username)
    holder = session.get(User, desktop.assigned_user_id) if desktop.assigned_user_id else None
    emit(session, "console.admin_access", f"{who.name} opened the {choice.protocol.value} console of desktop "
         f"{desktop.name}" + (f" (in use by {holder.username}@{holder.domain})" if holder else ""),
         severity=Severity.WARNING if holder else Severity.NORMAL, actor=who.name, user_id=desktop.assigned_user_id,
         desktop_id=desktop.id, pool_id=desktop.pool_id)
    return ConsoleResult("", desktop.id, desktop.name, desktop.pool_id, "admin", desktop.lease_until,
                         choice.protocol, "administrator console", desc)


def logoff(session: Session, row: DesktopSession, *, actor: str) -> DesktopSession:
    """End a console session (the user's own logoff, or an administrator's): the pool's rules decide whether the
    desktop stays the user's or goes back to the pool, reset to its template by a job. Conflict when the session
    has already ended. Returns the session as it is now."""
    if row.state == SessionState.ENDED:
        raise Conflict(f"session {row.id} has already ended")
    desktop = get_or_404(session, Desktop, row.desktop_id, "desktop")
    if lifecycle.logoff(session, desktop, row.user_id, actor=actor) == lifecycle.AfterLogoff.RESET:
        enqueue(session, "desktops.reset", params={"desktop_id": desktop.id}, created_by=actor,
                target_kind="desktop", target_id=desktop.id, description=f"reset desktop {desktop.name} after logoff")
    session.refresh(row)
    return row


def enqueue_reclaims(session: Session, reclaimed: Sequence[lifecycle.Reclaimed], *, why: str) -> None:
    """The jobs that carry out reclaimed desktops' policies (reset or removal), sent at the commit."""
    for item in reclaimed:
        kind = "desktops.reset" if item.policy == ReclaimPolicy.REIMAGE else "desktops.deprovision"
        enqueue(session, kind, params={"desktop_id": item.desktop_id}, target_kind="desktop",
                target_id=item.desktop_id, description=f"reclaim desktop {item.desktop_name} ({why})")


def revoke_pool_desktops(session: Session, user_id: str, *, why: str, actor: str,
                         pool_id: str | None = None) -> list[lifecycle.Reclaimed]:
    """Take back the pool desktops a user may no longer hold (lifecycle.release_user_desktops) and enqueue
    their resets or removals."""
    reclaimed = lifecycle.release_user_desktops(session, user_id, why=why, actor=actor, pool_id=pool_id)
    enqueue_reclaims(session, reclaimed, why="access revoked")
    return reclaimed


# ---- the user's own view: one implementation for GET /me/desktops, /me/pools and the portal ---------------------
# What a user may do to a desktop themselves (the portal shows only these; the API checks them again):
# - reboot: any running desktop they can reach.
# - reset to a clean desktop: a pool desktop they hold in an automatic or time-based pool. Those desktops are
#   disposable by design (an automatic pool resets them at every logoff, a time-based one when the lease ends); a
#   manual pool's or a dedicated desktop keeps the user's work, so only an administrator resets it.
# - extend: a time-based lease, while it runs, up to the pool's limit (lifecycle.lease_limit).
# - log off: a live session of theirs.
SELF_RESETTABLE = (PoolType.AUTOMATIC, PoolType.TIME_BASED)


@dataclass(frozen=True)
class MyDesktop:
    id: str
    name: str
    pool_id: str | None
    pool_name: str | None
    pool_type: PoolType | None
    how: str  # pool (held from a pool) | dedicated | entitled
    power_state: PowerState
    task_state: TaskState | None
    os_type: str
    console_protocols: str
    lease_until: dt.datetime | None
    lease_limit: dt.datetime | None
    session_id: str | None  # the user's live session on it
    session_state: SessionState | None
    maintenance: bool  # its host is in maintenance
    new_image_at_logoff: bool  # a template version waits for the next logoff or reset
    in_use: bool  # a console client of the user's is connected
    can_reboot: bool
    can_reset: bool
    can_extend: bool


@dataclass(frozen=True)
class MyPool:
    id: str
    name: str
    description: str
    pool_type: str
    free: int
    size: int
    holding: int  # desktops of this pool the user holds
    max_desktops_per_user: int
    lease_seconds: int | None
    max_lease_seconds: int | None

    @property
    def can_take(self) -> bool:
        """The user may take (another) desktop: one is free and they are under the pool's per-user limit."""
        return self.free > 0 and self.holding < self.max_desktops_per_user


def my_desktops(session: Session, user_id: str, now: dt.datetime | None = None) -> list[MyDesktop]:
    """The desktops the user can connect to right now, with what they may do to each."""
    now = now or utcnow()
    ids = entitlement.reachable_desktop_ids(session, user_id)
    if not ids:
        return []
    live = {desktop_id: (sid, state) for sid, desktop_id, state in session.execute(
        select(DesktopSession.id, DesktopSession.desktop_id, DesktopSession.state).where(
            DesktopSession.user_id == user_id, DesktopSession.state.in_(sessions.LIVE))
        .order_by(DesktopSession.created_at))}
    rows = session.execute(select(Desktop, Pool, Host.status).outerjoin(Pool, Pool.id == Desktop.pool_id)
                           .outerjoin(Host, Host.id == Desktop.host_id)
                           .where(Desktop.id.in_(ids)).order_by(Desktop.name)).all()
    out = []
    for d, pool, host_status in rows:
        held = d.assigned_user_id == user_id
        how = "pool" if held else "dedicated" if d.pool_id is None else "entitled"
        sid, state = live.get(d.id, (None, None))
        limit = lifecycle.lease_limit(pool, d, now) if pool is not None and held else None
        out.append(MyDesktop(
            id=d.id, name=d.name, pool_id=d.pool_id, pool_name=pool.name if pool else None,
            pool_type=pool.pool_type if pool else None, how=how, power_state=d.power_state, task_state=d.task_state,
            os_type=d.os_type.value, console_protocols=d.console_protocols, lease_until=d.lease_until,
            lease_limit=limit, session_id=sid, session_state=state,
            maintenance=host_status == HostStatus.MAINTENANCE,
            new_image_at_logoff=d.pending_template_version_id is not None,
            in_use=state == SessionState.CONNECTED,
            can_reboot=d.power_state == PowerState.UP and d.task_state is None,
            can_reset=held and pool is not None and pool.pool_type in SELF_RESETTABLE and d.task_state is None,
            can_extend=limit is not None and d.lease_until is not None and now < d.lease_until < limit))
    return out


def my_pools(session: Session, user_id: str) -> list[MyPool]:
    """The pools the user is entitled to, with how many desktops are free and how many they hold."""
    pool_ids = entitlement.entitled_pool_ids(session, user_id)
    if not pool_ids:
        return []
    counts = {pid: (total, free, mine) for pid, total, free, mine in session.execute(
        select(Desktop.pool_id, func.count(Desktop.id),
               func.count(Desktop.id).filter(Desktop.assigned_user_id.is_(None)),
               func.count(Desktop.id).filter(Desktop.assigned_user_id == user_id))
        .where(Desktop.pool_id.in_(pool_ids)).group_by(Desktop.pool_id))}
    out = []
    for p in session.scalars(select(Pool).where(Pool.id.in_(pool_ids)).order_by(Pool.name)):
        total, free, mine = counts.get(p.id, (0, 0, 0))
        out.append(MyPool(id=p.id, name=p.name, description=p.description, pool_type=p.pool_type.value, free=free,
                          size=total, holding=mine, max_desktops_per_user=p.max_desktops_per_user,
                          lease_seconds=p.lease_seconds, max_lease_seconds=p.max_lease_seconds))
    return out


def my_desktop(session: Session, user_id: str, desktop_id: str) -> MyDesktop:
    """One desktop of my_desktops; NotFound when the user cannot reach it."""
    reachable_desktop(session, user_id, desktop_id)
    for d in my_desktops(session, user_id):
        if d.id == desktop_id:
            return d
    raise NotFound(kind="desktop", id=desktop_id)


def extend_lease(session: Session, who: Caller, desktop_id: str) -> dt.datetime:
    """Extend the caller's lease on their time-based desktop within the pool's limit (lifecycle.extend_lease)."""
    desktop = reachable_desktop(session, who.user_id, desktop_id)
    return lifecycle.extend_lease(session, desktop, who.user_id, actor=who.name)


def reset_own_desktop(session: Session, who: Caller, desktop_id: str):
    """The user gives a disposable desktop back to be reset to its template (see SELF_RESETTABLE), as an automatic
    pool does at logoff: their sessions end, the desktop is released and reset by a job, and their next Connect
    gets a clean desktop of the pool. Returns the job. NotFound, or Conflict naming why not."""
    desktop = reachable_desktop(session, who.user_id, desktop_id)
    pool = session.get(Pool, desktop.pool_id) if desktop.pool_id else None
    if pool is None or desktop.assigned_user_id != who.user_id or pool.pool_type not in SELF_RESETTABLE:
        raise Conflict(f"desktop {desktop.name} keeps your work: ask an administrator to reset it")
    sessions.end_sessions_of_desktop(session, desktop.id)
    if not assignment.release(session, desktop.id, user_id=who.user_id, next_task=TaskState.REIMAGING):
        raise Conflict(f"desktop {desktop.name} is busy with another action; try again when it is done")
    emit(session, "broker.reset_by_user", f"{who.name} gave desktop {desktop.name} back to pool {pool.name} to be "
         "reset to its template", actor=who.name, user_id=who.user_id, desktop_id=desktop.id, pool_id=pool.id)
    return enqueue(session, "desktops.reset", params={"desktop_id": desktop.id}, created_by=who.name,
                   target_kind="desktop", target_id=desktop.id, description=f"reset desktop {desktop.name} "
                   f"for {who.name}")
