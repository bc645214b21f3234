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

from sqlalchemy.orm import Session

from broker import entitlement, lifecycle, sessions
from broker.assignment import Assigned, assignment_guard, take_from_pool
from broker.console import ConsoleDescriptor
from broker.errors import BadConnectRequest
from broker.protocol import choose_protocol, parse_protocols
from core.enums import PowerState, Protocol, ProtocolPolicy, SessionState, Severity
from core.errors import Conflict, NotFound
from event_manager.service import emit
from manager.db import commit_and_give_up_slot, commit_in_route, get_or_404, is_postgres
from manager.jobs import enqueue
from manager.models import Desktop, DesktopSession, Pool, User, utcnow


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
    authenticates); otherwise the pool's take locks it. Raises NotFound, NotEntitled, PoolClosed, PoolFull,
    TooManyDesktops, NoCommonProtocol, BadConnectRequest, DesktopStartTimeout and node errors."""
    now = now or utcnow()
    client_protocols = list(client.protocols)

    def protocol_for(desktop: Any, policy: ProtocolPolicy):
        return choose_protocol(os_type=desktop.os_type, desktop_protocols=parse_protocols(desktop.console_protocols),
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
                  nodes: DesktopNodes) -> ConsoleResult:
    """An administrator's console on any running desktop, recorded as a `console.admin_access` event (a WARNING
    naming the user when someone holds the desktop). The caller checks the permission (desktops:console) and
    commits. Raises NotFound, Conflict when the desktop is not running, NoCommonProtocol, node errors."""
    desktop = get_or_404(session, Desktop, desktop_id, "desktop")
    if desktop.power_state != PowerState.UP:
        raise Conflict(f"desktop {desktop.name} is {desktop.power_state.value}; start it to open its console")
    choice = choose_protocol(os_type=desktop.os_type, desktop_protocols=parse_protocols(desktop.console_protocols),
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
