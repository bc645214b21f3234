"""Mount the web pages on the manager's application."""
from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI
from fastapi.staticfiles import StaticFiles

from manager import console_proxy
from manager.web import login, portal
from manager.web.admin import actions, dashboard, kinds, planner, search
from manager.web.render import STATIC_URL

STATIC = Path(__file__).parent / "static"
# noVNC, installed from the npm registry by `make venv` (npm ci in manager/web/vendor); served as-is: its core/ is
# ES modules importing only its own files and vendor/pako.
NOVNC = Path(__file__).parent / "vendor" / "node_modules" / "@novnc" / "novnc"
NOVNC_URL = "/vendor/novnc"


def install_web(app: FastAPI) -> None:
    app.mount(STATIC_URL, StaticFiles(directory=STATIC), name="console-static")
    app.mount(NOVNC_URL, StaticFiles(directory=NOVNC, check_dir=False), name="novnc")
    app.add_api_websocket_route(console_proxy.WS_PATH, console_proxy.proxy)
    app.include_router(login.router)
    app.include_router(actions.router)  # before the object pages: /admin/pools/new names no pool
    app.include_router(search.router)
    app.include_router(kinds.router)
    app.include_router(dashboard.router)
    app.include_router(planner.router)
    app.include_router(portal.router)
