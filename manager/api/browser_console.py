"""The browser console's routes: a single-use ticket for a user's desktop (a connect, as POST /broker/connect) or for
an administrator's console, and an administrator's forced disconnect. The proxy itself is manager.console_proxy."""
from __future__ import annotations

import datetime as dt
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse
from pydantic import Field

from broker import service
from core.enums import Protocol
from manager import console_proxy
from manager.api import schemas as s
from manager.api.broker import Connecting, ConnectTargetIn
from manager.api.common import DbSession
from manager.auth import Principal, require
from manager.db import get_or_404
from manager.metrics import count_connect
from manager.models import Desktop

router = APIRouter(tags=["broker"])
ConsoleAdmin = Annotated[Principal, Depends(require("desktops:console"))]


class BrowserConsoleOut(s.Out):
    ticket: str = Field(description="single use, for the WebSocket: ws_path?ticket=<ticket>")
    expires_at: dt.datetime
    ws_path: str
    page: str = Field(description="the console page (the ticket goes in its #fragment)")
    desktop_id: str
    desktop_name: str
    session_id: str = Field(description="your console session (empty for an administrator's console)")


class DisconnectOut(s.Out):
    closed: int = Field(description="how many open browser consoles were asked to close")


def _out(session, result: service.ConsoleResult, who: Principal) -> JSONResponse:
    ticket = console_proxy.issue_ticket(session, result, who.user_id)
    out = BrowserConsoleOut(ticket=ticket.token, expires_at=ticket.expires_at, ws_path=console_proxy.WS_PATH,
                            page=f"/portal/console/{result.desktop_id}", desktop_id=result.desktop_id,
                            desktop_name=result.desktop_name, session_id=result.session_id)
    return JSONResponse(out.model_dump(mode="json"), headers={"Cache-Control": "no-store"})


@router.post("/broker/browser-console", response_model=BrowserConsoleOut)
def connect_in_browser(payload: ConnectTargetIn, request: Request, session: DbSession, who: Connecting) -> Any:
    """Connect to a pool or one of your desktops, as POST /broker/connect does, for the browser console: a
    single-use ticket valid VDI_TICKET_SECONDS that opens the console's WebSocket once."""
    address = request.client.host if request.client else ""
    client = service.ClientInfo((Protocol.VNC,), Protocol.VNC, address, browser=True)
    with count_connect("browser"):
        result = service.connect(session, who, payload.target, client, nodes=console_proxy.BROWSER_NODES,
                                 user_locked=True)
    return _out(session, result, who)


@router.post("/desktops/{desktop_id}/browser-console", response_model=BrowserConsoleOut, tags=["desktops"])
def admin_browser_console(desktop_id: str, session: DbSession, who: ConsoleAdmin) -> Any:
    """An administrator's browser console on any running desktop (HelpDesk and up), recorded as an event."""
    result = service.admin_console(session, who, desktop_id, Protocol.VNC, nodes=console_proxy.BROWSER_NODES,
                                   browser=True)
    return _out(session, result, who)


@router.post("/desktops/{desktop_id}/browser-console/disconnect", response_model=DisconnectOut, tags=["desktops"])
def disconnect_browser_consoles(desktop_id: str, session: DbSession, who: ConsoleAdmin) -> Any:
    """Close every open browser console of the desktop, whichever manager process holds it (within a second or
    two). Recorded as an event."""
    get_or_404(session, Desktop, desktop_id, "desktop")
    return DisconnectOut(closed=console_proxy.request_close(session, desktop_id, actor=who.name))
