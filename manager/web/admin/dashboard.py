"""/admin/dashboard: hosts, desktops by state, sessions, pool usage, open alerts and jobs at a glance.

The figures come from manager.dashboard.snapshot, the same object GET /api/v1/dashboard returns; the page's
script (static/dashboard.js) polls that route and rewrites the figures in place, so nothing here is computed
twice."""
from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Request
from fastapi.responses import HTMLResponse

from core.enums import HostStatus, PowerState, TaskState
from manager import dashboard
from manager.api.common import DbSession
from manager.auth import Principal, require
from manager.search_fields import HOST_STATUS, VM_STATUS
from manager.web.render import page

router = APIRouter()
SystemViewer = Annotated[Principal, Depends(require("system:read"))]


def _search_word(table: dict[str, str], value: str) -> str:
    """The search language's word for an enum value (VM_STATUS maps e.g. "PoweringUp" to "powering_up")."""
    return next((word for word, v in table.items() if v == value), value)


# Each state's count links to the search that lists those objects.
STATE_QUERIES = {
    "power": {s.value: f"Vms: status = {_search_word(VM_STATUS, s.value)}" for s in PowerState},
    "task": {t.value: f"Vms: task = {t.value}" for t in TaskState},
    "host": {s.value: f"Hosts: status = {_search_word(HOST_STATUS, s.value)}" for s in HostStatus},
}


@router.get("/admin/dashboard", response_class=HTMLResponse, include_in_schema=False)
def dashboard_page(request: Request, session: DbSession, who: SystemViewer) -> HTMLResponse:
    return page(request, "admin/dashboard.html",
                {"title": "Dashboard", "d": dashboard.snapshot(session), "queries": STATE_QUERIES,
                 "nearly_full_pct": dashboard.NEARLY_FULL_PCT}, who=who)
