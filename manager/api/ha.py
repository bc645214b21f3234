"""GET /api/v1/ha: which manager leads (with its epoch and lease), every manager instance seen, and what the rest
of ha_manager reports (each host's liveness and fence state). Any instance answers, leader or standby."""
from __future__ import annotations

import datetime as dt
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends
from pydantic import ConfigDict, Field

from ha_manager.service import ha_status
from manager.api import schemas as s
from manager.api.common import DbSession
from manager.auth import Principal, require

router = APIRouter(tags=["ha"])
SystemReader = Annotated[Principal, Depends(require("system:read"))]


class LeaderOut(s.Out):
    instance_id: str = Field(description="the leading manager instance (VDI_INSTANCE_ID)")
    address: str = Field(description="its public URL")
    epoch: int = Field(description="grows by one at every takeover; the fencing token of the leader's loops")
    acquired_at: dt.datetime
    renewed_at: dt.datetime
    expires_at: dt.datetime = Field(description="the lease's end unless renewed (the database's clock)")
    expired: bool = Field(description="the lease ran out and no instance has taken it yet")


class ThisInstanceOut(s.Out):
    instance_id: str
    address: str
    role: Literal["leader", "standby"]
    epoch: int | None = Field(description="the epoch this instance leads with; null on a standby")
    led_for_seconds: float | None
    refused_writes: int = Field(description="writes of this process's singleton loops refused by the epoch "
                                            "check since it started (a former leader's)")
    lease_ttl_seconds: float
    lease_renew_seconds: float


class InstanceOut(s.Out):
    instance_id: str
    address: str
    pid: int
    started_at: dt.datetime
    seen_at: dt.datetime = Field(description="its last lease renewal or poll (the database's clock)")
    alive: bool = Field(description="seen within one lease ttl")
    leader: bool


class HaOut(s.Out):
    # Other parts of ha_manager add their sections (ha_manager.service.status_section), e.g. "hosts".
    model_config = ConfigDict(extra="allow")

    leader: LeaderOut | None
    epoch: int | None
    lease_expires_at: dt.datetime | None
    now: dt.datetime = Field(description="the database's clock when this was read")
    this_instance: ThisInstanceOut | None = Field(description="the instance that answered")
    instances: list[InstanceOut]


@router.get("/ha", response_model=HaOut)
def ha(session: DbSession, _who: SystemReader) -> Any:
    """The manager's high availability: the leader, its epoch and lease expiry, the instances seen, and each host's
    liveness and fence state."""
    return ha_status(session)
