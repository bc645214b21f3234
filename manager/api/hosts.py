"""Host routes beyond plain CRUD: maintenance mode and activation (manager.host_maintenance)."""
from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends
from pydantic import Field

from manager import host_maintenance
from manager.api import schemas as s
from manager.api.common import DbSession
from manager.auth import Principal, require
from manager.config import get_settings

router = APIRouter(tags=["hosts"])
HostsWrite = Annotated[Principal, Depends(require("hosts:write"))]


class MaintenanceIn(s.In):
    reason: Annotated[str, Field(max_length=1000, description="recorded in the event")] = ""


@router.post("/hosts/{host_id}/maintenance", response_model=s.HostOut)
def maintenance(host_id: str, session: DbSession, who: HostsWrite, payload: MaintenanceIn | None = None) -> Any:
    """Take the host out of service: it gets no new desktops and its heartbeats no longer make it up. 409 when
    desktops run on it (naming them: shut them down first) or it already is in maintenance."""
    host = host_maintenance.enter_maintenance(session, host_id, actor=who.name,
                                              reason=(payload or MaintenanceIn()).reason)
    return s.HostOut.model_validate(host)


@router.post("/hosts/{host_id}/activate", response_model=s.HostOut)
def activate(host_id: str, session: DbSession, who: HostsWrite) -> Any:
    """Bring a host in maintenance back: up if its node agent is sending heartbeats, else non-responsive until
    it does. 409 when the host is not in maintenance."""
    host = host_maintenance.activate(session, host_id, actor=who.name,
                                     dead_after_seconds=get_settings().host_dead_after_seconds)
    return s.HostOut.model_validate(host)
