"""The connection broker's routes: connect, console files, disconnect, logoff, sessions, and the user's own view
(/me/...). A user only ever sees and reaches their own desktops and sessions; others' are reported missing."""
from __future__ import annotations

import contextlib
import datetime as dt
import os
from collections.abc import AsyncIterator
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import JSONResponse, PlainTextResponse
from pydantic import Field, model_validator
from sqlalchemy import bindparam, func, select
from sqlalchemy.orm import Session

import manager.provisioning  # noqa: F401  (registers the provisioning jobs)
from broker import entitlement, lifecycle, sessions
from broker.assignment import Assigned, assignment_guard, take_from_pool
from broker.console import ConsoleDescriptor, render_file
from broker.errors import BadConnectRequest, NotEntitled
from broker.protocol import choose_protocol, parse_protocols
from core.enums import PowerState, Protocol, ProtocolPolicy, SessionState, Severity
from core.errors import Conflict, NotFound
from event_manager.service import emit
from manager.api import schemas as s
from manager.api.common import DbSession, Page, Paging, paginate
from manager.auth import Principal, require
from manager.config import get_settings
from manager.db import commit_in_route, give_up_request_slot, is_postgres
from manager.jobs import enqueue
from manager.models import Desktop, DesktopSession, Event, Pool, User, utcnow
from manager.provisioning import consoles, nodes
from manager.provisioning.maintenance import PoolMaintainer, configured_period
from manager.provisioning.power import ensure_running

@contextlib.asynccontextmanager
async def _pool_maintenance(_app) -> AsyncIterator[None]:
    """While the manager runs, leases expire and prestarted desktops are topped up without anyone asking."""
    period = configured_period()
    maintainer = PoolMaintainer(period) if period > 0 else None
    if maintainer is not None:
        maintainer.start()
    try:
        yield
    finally:
        if maintainer is not None:
            maintainer.stop()


router = APIRouter(tags=["broker"], lifespan=_pool_maintenance)
Connector = Annotated[Principal, Depends(require("self:connect"))]
# A connect locks the caller's user row as it authenticates (see broker.assignment.take_from_pool).
Connecting = Annotated[Principal, Depends(require("self:connect", lock_user=True))]
SelfReader = Annotated[Principal, Depends(require("self:read"))]

START_TIMEOUT_S = float(os.environ.get("VDI_CONNECT_START_SECONDS", "120"))


# ---- shapes ---------------------------------------------------------------------------------------------
class ClientIn(s.In):
    protocols: list[Protocol] = Field(default_factory=lambda: [Protocol.SPICE], max_length=3,
                                      description="what the client can display, e.g. [\"spice\", \"rdp\"]")
    prefer: Protocol | None = Field(default=None, description="ask for this protocol when the desktop allows it")
    address: Annotated[str, Field(max_length=255)] = Field(default="", description="the client's address "
                                                          "(defaults to the address the request came from)")
    fullscreen: bool = False


class ConnectIn(s.In):
    pool_id: s.Id | None = None
    pool: Annotated[str | None, Field(max_length=255, description="a pool's name, instead of pool_id")] = None
    desktop_id: s.Id | None = None
    new_desktop: bool = Field(default=False, description="one more desktop of the pool (up to its per-user limit)")
    client: ClientIn = Field(default_factory=ClientIn)

    @model_validator(mode="after")
    def _one_target(self) -> "ConnectIn":
        given = [n for n in ("pool_id", "pool", "desktop_id") if getattr(self, n)]
        if len(given) != 1:
            raise ValueError("give exactly one of pool_id, pool (a name) or desktop_id")
        return self


class SessionRef(s.In):
    session_id: s.Id


class ConsoleOut(s.Out):
    protocol: Protocol
    host: str
    port: int | None
    tls_port: int | None = None
    password: str | None = None
    expires_at: dt.datetime | None = None
    desktop_id: str
    desktop_name: str
    username: str = ""
    title: str = ""


class FileOut(s.Out):
    name: str
    media_type: str
    content: str


class ConnectOut(s.Out):
    session_id: str
    desktop_id: str
    desktop_name: str
    pool_id: str | None
    assignment: str = Field(description="new | existing | dedicated | direct")
    lease_until: dt.datetime | None
    protocol: Protocol
    protocol_reason: str
    console: ConsoleOut
    file: FileOut


class SessionOut(s.Out):
    id: str
    desktop_id: str
    user_id: str
    pool_id: str | None
    protocol: str
    client_address: str
    state: SessionState
    connected_at: dt.datetime | None
    disconnected_at: dt.datetime | None
    ended_at: dt.datetime | None
    ticket_expires_at: dt.datetime | None
    created_at: dt.datetime


class MyDesktopOut(s.Out):
    id: str
    name: str
    pool_id: str | None
    how: str = Field(description="pool (assigned to you from a pool) | dedicated | entitled")
    power_state: PowerState
    os_type: str
    console_protocols: str
    lease_until: dt.datetime | None
    session_state: SessionState | None = None


class MyPoolOut(s.Out):
    id: str
    name: str
    description: str
    pool_type: str
    free: int
    size: int
    holding: int = Field(description="desktops of this pool you hold")


# ---- helpers ----------------------------------------------------------------------------------------------
def _client_address(payload: ConnectIn, request: Request) -> str:
    return payload.client.address or (request.client.host if request.client else "")


def _console_out(desc: ConsoleDescriptor) -> tuple[ConsoleOut, FileOut]:
    name, media_type, content = render_file(desc)
    return ConsoleOut(**desc.to_dict()), FileOut(name=name, media_type=media_type, content=content)


def _reachable_desktop(session: Session, user_id: str, desktop_id: str) -> Desktop:
    desktop = session.get(Desktop, desktop_id)
    if desktop is None or not entitlement.can_reach_desktop(session, user_id, desktop):
        raise NotFound(kind="desktop", id=desktop_id)  # someone else's desktop does not exist for you
    return desktop


def issue_console(session: Session, desktop: Desktop, protocol: Protocol, *, username: str,
                  fullscreen: bool = False) -> ConsoleDescriptor:
    """Read where the desktop runs, then (outside any lock) set a ticket on it through its node."""
    # RDP goes to the guest itself: no node call, so no need to look the host up.
    target = None if protocol == Protocol.RDP else nodes.target_of_desktop(session, desktop)
    return consoles.issue(target, desktop_id=desktop.id, desktop_name=desktop.name, protocol=protocol,
                          valid_seconds=get_settings().ticket_seconds, guest_ip=desktop.ip, username=username,
                          fullscreen=fullscreen)


# ---- connect ----------------------------------------------------------------------------------------------
@router.post("/broker/connect", response_model=ConnectOut)
def connect(payload: ConnectIn, request: Request, session: DbSession, who: Connecting) -> Any:
    """Connect to a pool (a desktop is assigned) or one of your desktops: starts it if needed, issues a
    short-lived console ticket and returns the connection file."""
    now = utcnow()
    client_protocols = list(payload.client.protocols)

    def protocol_for(desktop: Any, policy: ProtocolPolicy):
        return choose_protocol(os_type=desktop.os_type, desktop_protocols=parse_protocols(desktop.console_protocols),
                               client_protocols=client_protocols, policy=policy, preferred=payload.client.prefer,
                               desktop_name=desktop.name)

    if payload.desktop_id:
        if payload.new_desktop:
            raise BadConnectRequest(reason="new_desktop applies to pools; give pool_id or pool")
        desktop = _reachable_desktop(session, who.user_id, payload.desktop_id)
        pool = session.get(Pool, desktop.pool_id) if desktop.pool_id else None
        assigned = Assigned(desktop, "direct", desktop.lease_until)
        choice = protocol_for(desktop, pool.protocol_policy if pool is not None else ProtocolPolicy.AUTO)
    else:
        with assignment_guard(session):
            # The connect dependency took the user's lock as it authenticated (Connecting: lock_user).
            pool, assigned = take_from_pool(session, who.user_id, "id" if payload.pool_id else "name",
                                            payload.pool_id or payload.pool, new_desktop=payload.new_desktop,
                                            now=now, user_locked=True)
            desktop = assigned.desktop
            # Refuse before committing: a user whose client cannot display this desktop keeps no assignment.
            choice = protocol_for(desktop, pool.protocol_policy)
            if assigned.newly_assigned:
                lease = f" until {assigned.lease_until.isoformat()}" if assigned.lease_until else ""
                emit(session, "broker.assigned", f"desktop {desktop.name} of pool {pool.name} assigned to "
                     f"{who.name}{lease}", actor=who.name, user_id=who.user_id, desktop_id=desktop.id,
                     pool_id=pool.id)
            # Release the row locks before any node call (and, on SQLite, before leaving the guard). Without a
            # node call ahead (RDP to a running desktop) the request's own commit does it, one round trip less.
            needs_node = desktop.power_state != PowerState.UP or desktop.task_state is not None \
                or choice.protocol != Protocol.RDP
            if needs_node or not is_postgres(session):
                session.commit()

    if desktop.power_state != PowerState.UP or desktop.task_state is not None:
        session.commit()  # no connection or lock is held while the desktop boots
        give_up_request_slot(session)
        ensure_running(desktop.id, actor=who.name, timeout=START_TIMEOUT_S)
        desktop = session.get(Desktop, desktop.id, populate_existing=True)  # where it runs now
    desc = issue_console(session, desktop, choice.protocol, username=who.username,
                         fullscreen=payload.client.fullscreen)
    address = _client_address(payload, request)
    # A new desktop's session is a plain INSERT: with the events, it needs no answer and goes with the commit.
    with commit_in_route(session, pipelined=assigned.newly_assigned):
        session_id = sessions.open_session(session, user_id=who.user_id, desktop_id=desktop.id,
                                           pool_id=desktop.pool_id, protocol=choice.protocol.value,
                                           client_address=address, ticket_expires_at=desc.expires_at, now=now,
                                           fresh=assigned.newly_assigned)
        emit(session, "broker.connected", f"{who.name} connected to desktop {desktop.name} over "
             f"{choice.protocol.value} from {address or 'an unknown address'} ({assigned.how} desktop; "
             f"{choice.reason})", actor=who.name, user_id=who.user_id, desktop_id=desktop.id,
             pool_id=desktop.pool_id, correlation_id=session_id)
        _ticket_event(session, desktop, who, desc, session_id)
    console, file = _console_out(desc)
    out = ConnectOut(session_id=session_id, desktop_id=desktop.id, desktop_name=desktop.name, pool_id=desktop.pool_id,
                     assignment=assigned.how, lease_until=assigned.lease_until, protocol=choice.protocol,
                     protocol_reason=choice.reason, console=console, file=file)
    # Already a validated ConnectOut: answered as is, which spares validating it again (in another worker thread).
    return JSONResponse(out.model_dump(mode="json"), headers={"Cache-Control": "no-store"})


def _ticket_event(session: Session, desktop: Desktop, who: Principal, desc: ConsoleDescriptor, session_id: str) -> None:
    # The password never goes into an event or a log line: only who, which desktop and until when.
    until = desc.expires_at.isoformat() if desc.expires_at else "n/a (RDP uses the guest's own login)"
    emit(session, "console.ticket", f"{desc.protocol.value} console ticket for desktop {desktop.name} issued to "
         f"{who.name}, valid until {until}", actor=who.name, user_id=who.user_id, desktop_id=desktop.id,
         pool_id=desktop.pool_id, correlation_id=session_id)


@router.get("/broker/sessions/{session_id}/console-file", response_class=PlainTextResponse)
def console_file(session_id: str, session: DbSession, who: Connector) -> PlainTextResponse:
    """A fresh console file (.vv or .rdp) for your live session: a new ticket each time."""
    row = sessions.owned_session(session, session_id, who.user_id)
    if row.state not in sessions.LIVE:
        raise Conflict(f"session {session_id} has ended; connect again")
    desktop = _reachable_desktop(session, who.user_id, row.desktop_id)
    desc = issue_console(session, desktop, Protocol(row.protocol), username=who.username)
    row.ticket_expires_at = desc.expires_at
    _ticket_event(session, desktop, who, desc, row.id)
    name, media_type, content = render_file(desc)
    return PlainTextResponse(content, media_type=media_type,
                             headers={"Content-Disposition": f'attachment; filename="{name}"',
                                      "Cache-Control": "no-store"})


@router.post("/broker/disconnect", response_model=SessionOut)
def disconnect(payload: SessionRef, session: DbSession, who: Connector) -> Any:
    """Your client went away: the desktop stays yours and you can reconnect."""
    row = sessions.owned_session(session, payload.session_id, who.user_id)
    sessions.mark_disconnected(session, row)
    desktop = session.get(Desktop, row.desktop_id)
    emit(session, "broker.disconnected", f"{who.name} disconnected from desktop {desktop.name if desktop else '?'}",
         actor=who.name, user_id=who.user_id, desktop_id=row.desktop_id, pool_id=row.pool_id, correlation_id=row.id)
    return SessionOut.model_validate(row)


def _logoff(session: Session, row: DesktopSession, actor: str) -> None:
    desktop = session.get(Desktop, row.desktop_id)
    if desktop is None:
        raise NotFound(kind="desktop", id=row.desktop_id)
    outcome = lifecycle.logoff(session, desktop, row.user_id, actor=actor)
    if outcome == lifecycle.AfterLogoff.RESET:
        enqueue(session, "desktops.reset", params={"desktop_id": desktop.id}, created_by=actor,
                target_kind="desktop", target_id=desktop.id, description=f"reset desktop {desktop.name} after logoff")


@router.post("/broker/logoff", response_model=SessionOut)
def logoff(payload: SessionRef, session: DbSession, who: Connector) -> Any:
    """End your session. An automatic pool takes the desktop back and resets it to the template."""
    row = sessions.owned_session(session, payload.session_id, who.user_id)
    if row.state == SessionState.ENDED:
        raise Conflict(f"session {row.id} has already ended")
    _logoff(session, row, who.name)
    session.refresh(row)
    return SessionOut.model_validate(row)


# ---- admin views ---------------------------------------------------------------------------------------------
@router.get("/sessions", response_model=Page[SessionOut], tags=["sessions"])
def list_sessions(session: DbSession, paging: Paging, who: Annotated[Principal, Depends(require("sessions:read"))],
                  state: SessionState | None = None, user_id: str | None = None, desktop_id: str | None = None,
                  pool_id: str | None = None) -> dict[str, Any]:
    """Every console session (client address, since when), newest first."""
    stmt = select(DesktopSession)
    for column, value in ((DesktopSession.state, state), (DesktopSession.user_id, user_id),
                          (DesktopSession.desktop_id, desktop_id), (DesktopSession.pool_id, pool_id)):
        if value is not None:
            stmt = stmt.where(column == value)
    return paginate(session, stmt, paging, SessionOut, sortable={"connected_at": DesktopSession.connected_at,
                                                                 "state": DesktopSession.state},
                    default_order=[DesktopSession.created_at.desc(), DesktopSession.id])


@router.post("/sessions/{session_id}/logoff", response_model=SessionOut, tags=["sessions"])
def force_logoff(session_id: str, session: DbSession,
                 who: Annotated[Principal, Depends(require("sessions:write"))]) -> Any:
    """Log a user off (an administrator's action; same pool rules as the user's own logoff)."""
    row = session.get(DesktopSession, session_id)
    if row is None:
        raise NotFound(kind="session", id=session_id)
    if row.state == SessionState.ENDED:
        raise Conflict(f"session {row.id} has already ended")
    _logoff(session, row, who.name)
    session.refresh(row)
    return SessionOut.model_validate(row)


@router.get("/desktops/{desktop_id}/console", response_model=ConnectOut, tags=["desktops"])
def admin_console(desktop_id: str, session: DbSession, who: Annotated[Principal, Depends(require("desktops:console"))],
                  protocol: Annotated[Protocol, Query()] = Protocol.SPICE) -> Any:
    """An administrator's console on any running desktop (HelpDesk and up). Recorded as an event."""
    desktop = session.get(Desktop, desktop_id)
    if desktop is None:
        raise NotFound(kind="desktop", id=desktop_id)
    if desktop.power_state != PowerState.UP:
        raise Conflict(f"desktop {desktop.name} is {desktop.power_state.value}; start it to open its console")
    choice = choose_protocol(os_type=desktop.os_type, desktop_protocols=parse_protocols(desktop.console_protocols),
                             client_protocols=[protocol], preferred=protocol, desktop_name=desktop.name)
    desc = issue_console(session, desktop, choice.protocol, username=who.username)
    holder = session.get(User, desktop.assigned_user_id) if desktop.assigned_user_id else None
    emit(session, "console.admin_access", f"{who.name} opened the {choice.protocol.value} console of desktop "
         f"{desktop.name}" + (f" (in use by {holder.username}@{holder.domain})" if holder else ""),
         severity=Severity.WARNING if holder else Severity.NORMAL, actor=who.name, user_id=desktop.assigned_user_id,
         desktop_id=desktop.id, pool_id=desktop.pool_id)
    console, file = _console_out(desc)
    return ConnectOut(session_id="", desktop_id=desktop.id, desktop_name=desktop.name, pool_id=desktop.pool_id,
                      assignment="admin", lease_until=desktop.lease_until, protocol=choice.protocol,
                      protocol_reason="administrator console", console=console, file=file)


# ---- the user's own view ----------------------------------------------------------------------------------------
@router.get("/me/desktops", response_model=list[MyDesktopOut], tags=["me"])
def my_desktops(session: DbSession, who: SelfReader) -> Any:
    """The desktops you can connect to right now (yours from pools, dedicated, entitled)."""
    ids = entitlement.reachable_desktop_ids(session, who.user_id)
    if not ids:
        return []
    live = dict(session.execute(select(DesktopSession.desktop_id, DesktopSession.state).where(
        DesktopSession.user_id == who.user_id, DesktopSession.state.in_(sessions.LIVE))).all())
    out = []
    for d in session.scalars(select(Desktop).where(Desktop.id.in_(ids)).order_by(Desktop.name)):
        how = "pool" if d.assigned_user_id == who.user_id else "dedicated" if d.pool_id is None else "entitled"
        out.append(MyDesktopOut(id=d.id, name=d.name, pool_id=d.pool_id, how=how, power_state=d.power_state,
                                os_type=d.os_type.value, console_protocols=d.console_protocols,
                                lease_until=d.lease_until, session_state=live.get(d.id)))
    return out


@router.get("/me/pools", response_model=list[MyPoolOut], tags=["me"])
def my_pools(session: DbSession, who: SelfReader) -> Any:
    """The pools you are entitled to, with how many desktops are free."""
    pool_ids = entitlement.entitled_pool_ids(session, who.user_id)
    if not pool_ids:
        return []
    counts = {pid: (total, free, mine) for pid, total, free, mine in session.execute(
        select(Desktop.pool_id, func.count(Desktop.id),
               func.count(Desktop.id).filter(Desktop.assigned_user_id.is_(None)),
               func.count(Desktop.id).filter(Desktop.assigned_user_id == who.user_id))
        .where(Desktop.pool_id.in_(pool_ids)).group_by(Desktop.pool_id))}
    return [MyPoolOut(id=p.id, name=p.name, description=p.description, pool_type=p.pool_type.value,
                      size=counts.get(p.id, (0, 0, 0))[0], free=counts.get(p.id, (0, 0, 0))[1],
                      holding=counts.get(p.id, (0, 0, 0))[2])
            for p in session.scalars(select(Pool).where(Pool.id.in_(pool_ids)).order_by(Pool.name))]


@router.get("/me/sessions", response_model=list[SessionOut], tags=["me"])
def my_sessions(session: DbSession, who: SelfReader,
                include_ended: Annotated[bool, Query(description="also sessions that ended")] = False) -> Any:
    """Your console sessions, newest first."""
    stmt = select(DesktopSession).where(DesktopSession.user_id == who.user_id)
    if not include_ended:
        stmt = stmt.where(DesktopSession.state.in_(sessions.LIVE))
    return [SessionOut.model_validate(r) for r in
            session.scalars(stmt.order_by(DesktopSession.created_at.desc()).limit(200))]


@router.get("/me/events", response_model=list[s.EventOut], tags=["me"])
def my_events(session: DbSession, who: SelfReader,
              limit: Annotated[int, Query(ge=1, le=500)] = 100) -> Any:
    """Events about you (assignments, lease expiry, logoffs), newest first."""
    rows = session.scalars(select(Event).where(Event.user_id == who.user_id, Event.deleted.is_(False))
                           .order_by(Event.id.desc()).limit(limit))
    return [s.EventOut.model_validate(r) for r in rows]
