"""The connection broker's routes: connect, console files, disconnect, logoff, sessions, and the user's own view
(/me/...). A user only ever sees and reaches their own desktops and sessions; others' are reported missing."""
from __future__ import annotations

import contextlib
import datetime as dt
from collections.abc import AsyncIterator
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import JSONResponse, PlainTextResponse
from pydantic import Field, model_validator
from sqlalchemy import select
from starlette.concurrency import run_in_threadpool

import manager.provisioning  # noqa: F401  (registers the provisioning jobs)
from broker import service, sessions
from broker.console import ConsoleDescriptor, render_file
from core.enums import Protocol, SessionState
from core.errors import Conflict, Invalid
from event_manager.service import emit
from ha_manager.service import singleton_loop, stop_loop
from manager.api import schemas as s
from manager.api.common import DbSession, Page, Paging, paginate
from manager.api.openapi import NODE_ERRORS, error_responses
from manager.api.screens import KeysIn, KeysOut
from manager.auth import Principal, require
from manager.db import get_or_404, open_request_connections
from manager.metrics import count_connect
from manager.api.system import _job_out
from manager.models import Desktop, DesktopSession, Event, User
from manager.provisioning.consoles import NODES, issue_for_desktop
from manager.provisioning.maintenance import configured_period
from manager.provisioning.power import PowerAction, power_desktop
from manager.provisioning.screens import send_keys
from manager.provisioning.tasks import maintain_pools


@contextlib.asynccontextmanager
async def _pool_maintenance(_app) -> AsyncIterator[None]:
    """While the manager runs, the leader expires leases and tops up prestarted desktops without anyone asking
    (a singleton loop: ha_manager.service). Connects are ready from the start: the database connections they use
    are opened first."""
    await run_in_threadpool(open_request_connections)  # a storm may come right after a start
    period = configured_period()
    loop = singleton_loop("pool-maintenance", period, maintain_pools) if period > 0 else None
    try:
        yield
    finally:
        if loop is not None:
            stop_loop(loop)


router = APIRouter(tags=["broker"], lifespan=_pool_maintenance, responses=NODE_ERRORS)
Connector = Annotated[Principal, Depends(require("self:connect"))]
# A connect locks the caller's user row as it authenticates (see broker.assignment.take_from_pool).
Connecting = Annotated[Principal, Depends(require("self:connect", lock_user=True))]
SelfReader = Annotated[Principal, Depends(require("self:read"))]
ConsoleClient = Literal["native", "browser"]


# ---- shapes ---------------------------------------------------------------------------------------------
class ClientIn(s.In):
    protocols: list[Protocol] = Field(default_factory=lambda: [Protocol.SPICE], max_length=3,
                                      description="what the client can display, e.g. [\"spice\", \"rdp\"]")
    prefer: Protocol | None = Field(default=None, description="ask for this protocol when the desktop allows it")
    address: Annotated[str, Field(max_length=255)] = Field(default="", description="the client's address "
                                                          "(defaults to the address the request came from)")
    fullscreen: bool = False


class ConnectTargetIn(s.In):
    pool_id: s.Id | None = None
    pool: Annotated[str | None, Field(max_length=255, description="a pool's name, instead of pool_id")] = None
    desktop_id: s.Id | None = None
    new_desktop: bool = Field(default=False, description="one more desktop of the pool (up to its per-user limit)")

    @model_validator(mode="after")
    def _one_target(self) -> "ConnectTargetIn":
        given = [n for n in ("pool_id", "pool", "desktop_id") if getattr(self, n)]
        if len(given) != 1:
            raise ValueError("give exactly one of pool_id, pool (a name) or desktop_id")
        return self

    @property
    def target(self) -> service.ConnectTarget:
        return service.ConnectTarget(self.pool_id, self.pool, self.desktop_id, self.new_desktop)


class ConnectIn(ConnectTargetIn):
    client: ClientIn = Field(default_factory=ClientIn)


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
    proxy: str = Field(default="", description="the HTTP CONNECT proxy a SPICE client goes through (empty: none)")


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


MyDesktopOut = s.out_of("MyDesktopOut", service.MyDesktop, {
    "how": "pool (assigned to you from a pool) | dedicated | entitled",
    "lease_limit": "the latest your lease may be extended to",
    "session_id": "your live session on it (to log off)",
    "session_state": "pending: a ticket was issued and no viewer attached yet | connected: a viewer is attached (as "
                     "the host sees it; RDP as your client reports it) | disconnected: your viewer left",
    "maintenance": "its host is in maintenance",
    "new_image_at_logoff": "a new template version applies at next logoff",
    "in_use": "a console client of yours is attached (session_state connected)",
    "can_reset": "you may reset it to a clean desktop (automatic and time-based pools)",
    "can_extend": "you may extend its lease (time-based pools with a limit)",
})
MyPoolOut = s.out_of("MyPoolOut", service.MyPool, {"holding": "desktops of this pool you hold"},
                     can_take=(bool, Field(description="a desktop is free and you hold fewer than the pool allows")))


class LeaseOut(s.Out):
    desktop_id: str
    lease_until: dt.datetime


class PreferencesIn(s.In):
    console_client: ConsoleClient | None = Field(default=None, description="how Connect opens a desktop")
    auto_connect: bool | None = Field(default=None, description="connect to your only desktop as the portal opens")


class PreferencesOut(s.Out):
    console_client: ConsoleClient
    auto_connect: bool


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
    with count_connect("api"):
        result = service.connect(session, who, payload.target,
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
    sessions.ticket_renewed(row, desc.expires_at)
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


@router.get("/desktops/{desktop_id}/console", response_model=ConnectOut, tags=["desktops"],
            responses=error_responses(409))
def admin_console(desktop_id: str, session: DbSession, who: Annotated[Principal, Depends(require("desktops:console"))],
                  protocol: Annotated[Protocol, Query()] = Protocol.SPICE) -> Any:
    """An administrator's console on any running desktop (HelpDesk and up). Recorded as an event."""
    return _connect_out(service.admin_console(session, who, desktop_id, protocol, nodes=NODES))


# ---- the user's own view ----------------------------------------------------------------------------------------
@router.get("/me/desktops", response_model=list[MyDesktopOut], tags=["me"])
def my_desktops(session: DbSession, who: SelfReader) -> Any:
    """The desktops you can connect to right now (yours from pools, dedicated, entitled), with their flags and
    what you may do to each."""
    return [MyDesktopOut.model_validate(d) for d in service.my_desktops(session, who.user_id)]


@router.get("/me/pools", response_model=list[MyPoolOut], tags=["me"])
def my_pools(session: DbSession, who: SelfReader) -> Any:
    """The pools you are entitled to, with how many desktops are free."""
    return [MyPoolOut.model_validate(p) for p in service.my_pools(session, who.user_id)]


@router.post("/me/desktops/{desktop_id}/reboot", response_model=MyDesktopOut, tags=["me"])
def reboot_my_desktop(desktop_id: str, session: DbSession, who: Connector) -> Any:
    """Reboot one of your running desktops (the same power action as an administrator's reboot). Another
    user's desktop is reported missing (404)."""
    service.reachable_desktop(session, who.user_id, desktop_id)
    power_desktop(session, desktop_id, PowerAction.REBOOT, actor=who.name)
    return MyDesktopOut.model_validate(service.my_desktop(session, who.user_id, desktop_id))


@router.post("/me/desktops/{desktop_id}/send-keys", response_model=KeysOut, tags=["me"], responses=NODE_ERRORS)
def send_keys_to_my_desktop(desktop_id: str, body: KeysIn, session: DbSession, who: Connector) -> Any:
    """Press keys together on one of your running desktops, e.g. ["ctrl", "alt", "delete"] at a lock screen (as an
    administrator's send-keys). Another user's desktop is reported missing (404)."""
    service.reachable_desktop(session, who.user_id, desktop_id)
    return KeysOut(desktop_id=desktop_id, keys=send_keys(session, desktop_id, body.keys, actor=who.name))


@router.post("/me/desktops/{desktop_id}/reset", response_model=s.JobOut, status_code=202, tags=["me"])
def reset_my_desktop(desktop_id: str, session: DbSession, who: Connector) -> Any:
    """Give a desktop you hold in an automatic or time-based pool back to be reset to its template (a job); your
    next Connect to the pool gets a clean desktop. 409 for manual pools and dedicated desktops: they keep your work."""
    return _job_out(service.reset_own_desktop(session, who, desktop_id))


@router.post("/me/desktops/{desktop_id}/extend", response_model=LeaseOut, tags=["me"])
def extend_my_lease(desktop_id: str, session: DbSession, who: Connector) -> Any:
    """Extend your lease on a time-based desktop by one lease length, up to the pool's max_lease_seconds from
    when you took it (409 when the pool allows no extension or the limit is reached)."""
    return LeaseOut(desktop_id=desktop_id, lease_until=service.extend_lease(session, who, desktop_id))


@router.get("/me/preferences", response_model=PreferencesOut, tags=["me"])
def my_preferences(session: DbSession, who: SelfReader) -> Any:
    """Your portal choices: how Connect opens a desktop, and auto-connect."""
    return PreferencesOut.model_validate(get_or_404(session, User, who.user_id, "user"))


@router.patch("/me/preferences", response_model=PreferencesOut, tags=["me"])
def set_my_preferences(payload: PreferencesIn, session: DbSession, who: SelfReader) -> Any:
    """Change your portal choices (only the fields given)."""
    user = get_or_404(session, User, who.user_id, "user")
    for key, value in payload.model_dump(exclude_unset=True).items():
        if value is None:
            raise Invalid(f"{key}: give a value (null is not allowed)")
        setattr(user, key, value)
    session.flush()
    return PreferencesOut.model_validate(user)


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
