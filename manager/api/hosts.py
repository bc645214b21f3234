"""Host routes beyond plain CRUD: maintenance mode and activation (manager.host_maintenance)."""
from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends
from pydantic import Field

from ha_manager import failover
from manager import host_maintenance
from manager.api import schemas as s
from manager.api.common import DbSession
from manager.auth import Principal, require
from manager.config import get_settings
from manager.provisioning import migration

router = APIRouter(tags=["hosts"])
HostsWrite = Annotated[Principal, Depends(require("hosts:write"))]


class MaintenanceIn(s.In):
    reason: Annotated[str, Field(max_length=1000, description="recorded in the event")] = ""
    drain: bool = Field(default=False, description="desktops running on the host are moved away by live migration, "
                        "as a cancellable job, instead of refusing")


class MaintenanceOut(s.HostOut):
    drain_job_id: str | None = Field(default=None, description="the job that migrates the running desktops away")


@router.post("/hosts/{host_id}/maintenance", response_model=MaintenanceOut)
def maintenance(host_id: str, session: DbSession, who: HostsWrite, payload: MaintenanceIn | None = None) -> Any:
    """Take the host out of service: it gets no new desktops and its heartbeats no longer make it up. With
    `drain`, its running desktops move live to other hosts (the job `drain_job_id`, cancellable); without, 409
    when desktops run on it (naming them: shut them down first). 409 when it already is in maintenance."""
    payload = payload or MaintenanceIn()
    host = host_maintenance.enter_maintenance(session, host_id, actor=who.name, reason=payload.reason,
                                              drain=payload.drain)
    job = migration.request_drain(session, host, actor=who.name) \
        if payload.drain and host_maintenance.running_desktops(session, host.id) else None
    return MaintenanceOut.model_validate(host).model_copy(update={"drain_job_id": job.id if job else None})


@router.post("/hosts/{host_id}/activate", response_model=s.HostOut)
def activate(host_id: str, session: DbSession, who: HostsWrite) -> Any:
    """Bring a host in maintenance back: up if its node agent is sending heartbeats, else non-responsive until
    it does. 409 when the host is not in maintenance."""
    host = host_maintenance.activate(session, host_id, actor=who.name,
                                     dead_after_seconds=get_settings().host_dead_after_seconds)
    return s.HostOut.model_validate(host)


class FenceAgentIn(s.In):
    kind: Annotated[str, Field(min_length=1, max_length=32, description="ipmi (IPMI over LAN, UDP 623) or redfish "
                                                                        "(HTTPS /redfish/v1)")]
    address: Annotated[str, Field(min_length=1, max_length=255, description="the BMC's address")]
    port: Annotated[int, Field(ge=0, le=65535, description="0: the kind's default (623, 443)")] = 0
    username: Annotated[str, Field(max_length=255)] = ""
    password: Annotated[str, Field(max_length=255, description="sealed under the node key; never shown again")] = ""
    options: Annotated[dict[str, Any], Field(description='redfish: {"system": "/redfish/v1/Systems/1", '
                                                         '"verify_tls": false, "scheme": "http"}')] = {}


class FenceAgentsIn(s.In):
    agents: Annotated[list[FenceAgentIn], Field(max_length=8, description="tried in this order until one "
                                                "confirms the host is off; [] = the host cannot be fenced")]


class FenceAgentOut(s.Out):
    kind: str
    address: str
    port: int
    username: str
    password_set: bool
    options: dict[str, Any]


@router.get("/hosts/{host_id}/fence-agents", response_model=list[FenceAgentOut])
def get_fence_agents(host_id: str, session: DbSession,
                     _who: Annotated[Principal, Depends(require("hosts:read"))]) -> Any:
    """How the HA monitor powers this host off when it fails (docs/ha.md); passwords are never shown."""
    return failover.fence_agents_of(session, host_id)


@router.put("/hosts/{host_id}/fence-agents", response_model=list[FenceAgentOut])
def put_fence_agents(host_id: str, payload: FenceAgentsIn, session: DbSession, who: HostsWrite) -> Any:
    """Replace the host's fence agents. Without one, a failed host is not fenced and its desktops are not restarted
    elsewhere (they might still run there)."""
    failover.set_fence_agents(session, host_id, [a.model_dump() for a in payload.agents], actor=who.name)
    return failover.fence_agents_of(session, host_id)
