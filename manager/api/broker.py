"""The connection broker's routes: connect, console files, disconnect, logoff, sessions, and the user's own view
(/me/...). A user only ever sees and reaches their own desktops and sessions; others' are reported missing."""
from __future__ import annotations

import contextlib
import datetime as dt
from collections.abc import AsyncIterator
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import JSONResponse, PlainTextResponse
from pydantic import Field, model_validator
from sqlalchemy import func, select

import manager.provisioning  # noqa: F401  (registers the provisioning jobs)
from broker import entitlement, service, sessions
from broker.console import ConsoleDescriptor, render_file
from core.enums import PowerState, Protocol, SessionState
from core.errors import Conflict
from event_manager.service import emit
from manager.api import schemas as s
from manager.api.common import DbSession, Page, Paging, paginate
from manager.auth import Principal, require
from manager.db import get_or_404
from manager.models import Desktop, DesktopSession, Event, Pool
from manager.provisioning.consoles import NODES, issue_for_desktop
from manager.provisioning.maintenance import PoolMaintainer, configured_period


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
def _console_out(desc: ConsoleDescriptor) -> tuple[ConsoleOut, FileOut]:
    name, media_type, content = render_file(desc)
    return ConsoleOut(**desc.to_dict()), FileOut(name=name, media_type=media_type, content=content)


def _connect_out(result: service.ConsoleResult) -> ConnectOut:
    console, file = _console_out(result.console)
    return ConnectOut(session_id=result.session_id, desktop_id=result.desktop_id, desktop_name=result.desktop_name,
                      pool_id=result.pool_id, assignment=result.assignment, lease_until=result.lease_until,
                      protocol=result.protocol, protocol_reason=result.protocol_reason, console=console, file=file)


# ---- connect ----------------------------------------------------------------------------------------------
@router.post("/broker/connect", response_model=ConnectOut)
def connect(payload: ConnectIn, request: Request, session: DbSession, who: Connecting) -> Any:
    """Connect to a pool (a desktop is assigned) or one of your desktops: starts it if needed, issues a
    short-lived console ticket and returns the connection file."""
    client = payload.client
    address = client.address or (request.client.host if request.client else "")
    # The connect dependency took the user's lock as it authenticated (Connecting: lock_user).
    result = service.connect(session, who, service.ConnectTarget(payload.pool_id, payload.pool, payload.desktop_id,
                                                                 payload.new_desktop),
                             service.ClientInfo(client.protocols, client.prefer, address, client.fullscreen),
                             nodes=NODES, user_locked=True)
    # Already a validated ConnectOut: answered as is, which spares validating it again (in another worker thread).
    return JSONResponse(_connect_out(result).model_dump(mode="json"), headers={"Cache-Control": "no-store"})


@router.get("/broker/sessions/{session_id}/console-file", response_class=PlainTextResponse)
def console_file(session_id: str, session: DbSession, who: Connector) -> PlainTextResponse:
    """A fresh console file (.vv or .rdp) for your live session: a new ticket each time."""
    row = sessions.owned_session(session, session_id, who.user_id)
    if row.state not in sessions.LIVE:
        raise Conflict(f"session {session_id} has ended; connect again")
    desktop = service.reachable_desktop(session, who.user_id, row.desktop_id)
    desc = issue_for_desktop(session, desktop, Protocol(row.protocol), username=who.username)
    row.ticket_expires_at = desc.expires_at
    service.ticket_event(session, desktop, who, desc, row.id)
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


@router.post("/broker/logoff", response_model=SessionOut)
def logoff(payload: SessionRef, session: DbSession, who: Connector) -> Any:
    """End your session. An automatic pool takes the desktop back and resets it to the template."""
    row = sessions.owned_session(session, payload.session_id, who.user_id)
    return SessionOut.model_validate(service.logoff(session, row, actor=who.name))


# ---- admin views ---------------------------------------------------------------------------------------------
@router.get("/sessions", response_model=Page[SessionOut], tags=["sessions"])
def list_sessions(session: DbSession, paging: Paging, who: Annotated[Principal, Depends(require("sessions:read"))],
                  state: SessionState | None = None, user_id: str | None = None, desktop_id: str | None = None,
                  pool_id: str | None = None) -> dict[str, Any]:
    """Every console session (client address, since when), newest first."""
    stmt = sessions.query_sessions(state=state, user_id=user_id, desktop_id=desktop_id, pool_id=pool_id)
    return paginate(session, stmt, paging, SessionOut, sortable=sessions.SORTABLE,
                    default_order=list(sessions.NEWEST_FIRST))


@router.post("/sessions/{session_id}/logoff", response_model=SessionOut, tags=["sessions"])
def force_logoff(session_id: str, session: DbSession,
                 who: Annotated[Principal, Depends(require("sessions:write"))]) -> Any:
    """Log a user off (an administrator's action; same pool rules as the user's own logoff)."""
    row = get_or_404(session, DesktopSession, session_id, "session")
    return SessionOut.model_validate(service.logoff(session, row, actor=who.name))


@router.get("/desktops/{desktop_id}/console", response_model=ConnectOut, tags=["desktops"])
def admin_console(desktop_id: str, session: DbSession, who: Annotated[Principal, Depends(require("desktops:console"))],
                  protocol: Annotated[Protocol, Query()] = Protocol.SPICE) -> Any:
    """An administrator's console on any running desktop (HelpDesk and up). Recorded as an event."""
    return _connect_out(service.admin_console(session, who, desktop_id, protocol, nodes=NODES))


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
