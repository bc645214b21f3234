"""The policy engine's routes (policy_engine.service): each cluster's policies, and one round on demand.

    GET  /clusters/{id}/policies   the cluster's policies (every policy off when never set)
    PUT  /clusters/{id}/policies   replace them (validated: 422 naming the field, 400 for a pool that is not the
                                   cluster's)
    POST /policies/run             {"dry_run": true|false, "cluster": optional id}: what a round decides, each
                                   decision with its reason; unless a dry run, carried out as jobs (their ids)
The leader runs the same round every VDI_POLICY_SECONDS (manager/app.py); `vdi policies run --dry-run` calls the
last route.
"""
from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends
from pydantic import Field

from manager import db
from manager.api import schemas as s
from manager.api.common import DbSession
from manager.auth import Principal, require
from manager.config import get_settings
from policy_engine import service
from policy_engine.config import ClusterPolicies

router = APIRouter(tags=["policies"])
HostsRead = Annotated[Principal, Depends(require("hosts:read"))]
HostsWrite = Annotated[Principal, Depends(require("hosts:write"))]


class RunIn(s.In):
    dry_run: bool = Field(default=True, description="decide only: nothing is changed and no event recorded")
    cluster: Annotated[str | None, Field(max_length=64, description="one cluster's id; all clusters when "
                                         "omitted")] = None


class DecisionOut(s.Out):
    policy: str = Field(description="load_balancing, power_saving, idle_desktops or memory_density")
    action: str = Field(description="migrate, power_off, power_on, suspend, shutdown, balloon or ksm")
    reason: str
    desktop_id: str | None = None
    desktop: str | None = None
    host_id: str | None = Field(default=None, description="the host acted on, or a migration's source")
    host: str | None = None
    target_host_id: str | None = None
    target_host: str | None = None
    params: dict[str, Any] = Field(default_factory=dict, description="KSM settings, or a balloon's memory_mib")


class FailedOut(DecisionOut):
    error: str


class RunOut(s.Out):
    dry_run: bool
    cluster_id: str | None
    decisions: list[DecisionOut]
    jobs: list[str] = Field(description="the jobs carrying the decisions out (none in a dry run)")
    failed: list[FailedOut] = Field(description="decisions refused when queued (a desktop busy meanwhile...)")


@router.get("/clusters/{cluster_id}/policies", response_model=ClusterPolicies)
def get_policies(cluster_id: str, session: DbSession, _who: HostsRead) -> Any:
    return service.get_policies(session, cluster_id)


@router.put("/clusters/{cluster_id}/policies", response_model=ClusterPolicies)
def put_policies(cluster_id: str, payload: ClusterPolicies, session: DbSession, who: HostsWrite) -> Any:
    return service.put_policies(session, cluster_id, payload, actor=who.name)


@router.post("/policies/run", response_model=RunOut)
def run(payload: RunIn, session: DbSession, who: HostsWrite) -> Any:
    db.commit_and_give_up_slot(session)  # the round opens its own transactions
    return service.run_round(dry_run=payload.dry_run, cluster_id=payload.cluster, actor=who.name,
                             dead_after_seconds=get_settings().host_dead_after_seconds)
