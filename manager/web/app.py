"""Mount the web pages on the manager's application."""
from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI
from fastapi.staticfiles import StaticFiles

from manager.web import login, portal
from manager.web.admin import actions, dashboard, kinds, search
from manager.web.render import STATIC_URL

STATIC = Path(__file__).parent / "static"


def install_web(app: FastAPI) -> None:
    app.mount(STATIC_URL, StaticFiles(directory=STATIC), name="console-static")
    app.include_router(login.router)
    app.include_router(actions.router)  # before the object pages: /admin/pools/new names no pool
    app.include_router(search.router)
    app.include_router(kinds.router)
    app.include_router(dashboard.router)
    app.include_router(portal.router)
