"""GET /api/v1/dashboard: the figures the console's dashboard shows (manager.dashboard computes them)."""
from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends

from manager import dashboard
from manager.api.common import DbSession
from manager.auth import Principal, require

router = APIRouter()


@router.get("/dashboard", response_model=dashboard.Dashboard, tags=["system"])
def get_dashboard(session: DbSession, who: Annotated[Principal, Depends(require("system:read"))]) \
        -> dashboard.Dashboard:
    """Hosts with their CPU and memory use, desktops by power state and task, live console sessions by protocol,
    each pool's usage (pools at 90 % or more flagged), open alerts (alert and error events of the last 24 hours)
    and unfinished jobs. Each figure is one aggregate query."""
    return dashboard.snapshot(session)
