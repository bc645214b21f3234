"""The self-service portal (/portal): a user's desktops and pools, Connect, and what the pool lets them do.

It reads through the broker's own functions (broker.service.my_desktops / my_pools, as GET /api/v1/me/desktops and
/me/pools) and acts only through the JSON API from static/portal.js (connect, reboot, reset, log off, extend, the
remembered choices), so the portal and a script have one implementation and one permission check per action.
"""
from __future__ import annotations

from fastapi import APIRouter, Query, Request
from fastapi.responses import HTMLResponse

from broker import service
from core.errors import NotFound
from manager.api.broker import SelfReader
from manager.api.common import DbSession
from manager.config import get_settings
from manager.db import get_or_404
from manager.models import Desktop, User
from manager.web.render import page

router = APIRouter()


@router.get("/portal", response_class=HTMLResponse, include_in_schema=False)
def portal(request: Request, session: DbSession, who: SelfReader) -> HTMLResponse:
    desktops = service.my_desktops(session, who.user_id)
    pools = service.my_pools(session, who.user_id)
    user = get_or_404(session, User, who.user_id, "user")
    return page(request, "portal/portal.html", {
        "title": "My desktops", "desktops": desktops, "pools": pools, "console_client": user.console_client,
        "auto_connect": user.auto_connect and len(desktops) == 1, "auto_connect_choice": user.auto_connect,
        "display_name": user.display_name or user.username}, who=who)


@router.get("/portal/console/{desktop_id}", response_class=HTMLResponse, include_in_schema=False)
def browser_console(request: Request, desktop_id: str, session: DbSession, who: SelfReader,
                    admin: bool = Query(False)) -> HTMLResponse:
    """The browser console (noVNC) of one of your desktops or, with ?admin=1, an administrator's console of any
    desktop. The page's script asks the API for a single-use ticket (unless the portal's Connect brought one in the
    URL's fragment) and opens the proxy's WebSocket with it (manager.console_proxy)."""
    if admin and not who.can("desktops:console"):
        raise NotFound(kind="desktop", id=desktop_id)
    name = get_or_404(session, Desktop, desktop_id, "desktop").name if admin \
        else service.my_desktop(session, who.user_id, desktop_id).name
    settings = get_settings()
    return page(request, "portal/console.html", {
        "title": f"{name} console", "desktop_id": desktop_id, "desktop_name": name, "admin": admin,
        "idle_seconds": settings.console_idle_seconds, "max_seconds": settings.console_max_seconds}, who=who)
