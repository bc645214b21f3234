"""The planner's runs in the admin console: /admin/planner lists them, each linked to its report (the same page as
GET /api/v1/planner/runs/{id}/report, under the console's session and the same permission)."""
from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Request
from fastapi.responses import HTMLResponse

from manager import planner_runs
from manager.api.common import DbSession
from manager.auth import Principal, require
from manager.web.render import page

router = APIRouter()
Reader = Annotated[Principal, Depends(require("planner:read"))]


@router.get("/admin/planner", response_class=HTMLResponse, include_in_schema=False)
def planner_list(request: Request, session: DbSession, who: Reader) -> HTMLResponse:
    return page(request, "admin/planner.html", {"runs": planner_runs.list_runs(session)}, who=who)


@router.get("/admin/planner/{run_id}/report", response_class=HTMLResponse, include_in_schema=False)
def planner_report(run_id: str, session: DbSession, who: Reader) -> HTMLResponse:
    return HTMLResponse(planner_runs.run_report_html(session, run_id), headers={"Cache-Control": "no-store"})
