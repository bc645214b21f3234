"""Actions on desktops and pools beyond plain CRUD: power (compare-and-swap on task_state), provisioning from a
template version, dedicated/shared attachment, pool growth/shrink/maintenance and manual-pool (un)assignment."""
from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends
from pydantic import Field, model_validator
from sqlalchemy import select, update
from sqlalchemy.orm import Session

import manager.provisioning  # noqa: F401  (registers the provisioning jobs)
from broker import assignment, lifecycle
from core.enums import OsType, PoolType, TaskState
from core.errors import Conflict, Invalid, NotFound
from event_manager.service import emit
from manager.api import schemas as s
from manager.api.common import DbSession
from manager.api.system import _job_out
from manager.auth import Principal, require
from manager.db import give_up_request_slot
from manager.jobs import enqueue
from manager.models import Assignment, Desktop, Pool, User
from manager.provisioning import service
from manager.provisioning.placement import POLICIES
from manager.provisioning.power import PowerAction, run_power_action

router = APIRouter()
Power = Annotated[Principal, Depends(require("desktops:power"))]
DesktopWriter = Annotated[Principal, Depends(require("desktops:write"))]
PoolWriter = Annotated[Principal, Depends(require("pools:write"))]
EntitlementWriter = Annotated[Principal, Depends(require("entitlements:write"))]
Placement = Annotated[str, Field(default="spread", description="placement policy: " + ", ".join(sorted(POLICIES)))]


class StopIn(s.In):
    timeout: Annotated[float, Field(gt=0, le=3600)] = 60


class ProvisionIn(s.In):
    name: s.MachineName
    description: s.Text = ""
    template_id: s.Id | None = None
    template_version_id: s.Id | None = None
    cpus: s.Cpus | None = None
    memory_mib: s.MemoryMiB | None = None
    os_type: OsType | None = None
    console_protocols: s.Protocols = "spice"
    monitors: Annotated[int, Field(ge=1, le=4)] = 1
    disk_size_gib: Annotated[int, Field(ge=0, le=65536)] = 0
    host_id: s.Id | None = None
    cluster_id: s.Id | None = None
    placement: Placement = "spread"
    user_ids: list[s.Id] = Field(default_factory=list, max_length=1000,
                                 description="one user: a dedicated desktop; several: a shared one")

    @model_validator(mode="after")
    def _template(self) -> "ProvisionIn":
        if not (self.template_id or self.template_version_id):
            raise ValueError("give template_id (its latest version) or template_version_id")
        return self


class UserRef(s.In):
    user_id: s.Id


class ResizeIn(s.In):
    size: Annotated[int, Field(ge=0, le=100_000)]
    prestarted: Annotated[int | None, Field(ge=0, le=100_000)] = None
    placement: Placement = "spread"


class PlacementIn(s.In):
    placement: Placement = "spread"


def _desktop_out(session: Session, desktop_id: str) -> s.DesktopOut:
    desktop = session.get(Desktop, desktop_id, populate_existing=True)
    if desktop is None:
        raise NotFound(kind="desktop", id=desktop_id)
    return s.DesktopOut.model_validate(desktop)


def _check_policy(name: str) -> None:
    if name not in POLICIES:
        raise Invalid(f"placement: unknown policy {name!r}; use one of {', '.join(sorted(POLICIES))}")


# ---- power -----------------------------------------------------------------------------------------------------
def _power(desktop_id: str, action: PowerAction, session: Session, who: Principal, timeout: float | None = None):
    session.commit()  # nothing of ours is pending; the action runs in its own short transactions
    give_up_request_slot(session)
    run_power_action(desktop_id, action, actor=who.name, timeout=timeout)
    return _desktop_out(session, desktop_id)


@router.post("/desktops/{desktop_id}/start", response_model=s.DesktopOut, tags=["desktops"])
def start(desktop_id: str, session: DbSession, who: Power) -> Any:
    """Boot the desktop. A second start while one is in progress is refused (409 desktop_busy)."""
    return _power(desktop_id, PowerAction.START, session, who)


@router.post("/desktops/{desktop_id}/stop", response_model=s.DesktopOut, tags=["desktops"])
def stop(desktop_id: str, session: DbSession, who: Power, payload: StopIn | None = None) -> Any:
    """Ask the guest to shut down and wait up to `timeout` seconds (504 if it is still running)."""
    return _power(desktop_id, PowerAction.STOP, session, who, (payload or StopIn()).timeout)


@router.post("/desktops/{desktop_id}/poweroff", response_model=s.DesktopOut, tags=["desktops"])
def poweroff(desktop_id: str, session: DbSession, who: Power) -> Any:
    """Pull the plug."""
    return _power(desktop_id, PowerAction.POWEROFF, session, who)


@router.post("/desktops/{desktop_id}/reboot", response_model=s.DesktopOut, tags=["desktops"])
def reboot(desktop_id: str, session: DbSession, who: Power) -> Any:
    """Ask the running guest to reboot."""
    return _power(desktop_id, PowerAction.REBOOT, session, who)


# ---- provisioning ----------------------------------------------------------------------------------------------
@router.post("/desktops/provision", response_model=s.DesktopOut, status_code=201, tags=["desktops"])
def provision(payload: ProvisionIn, session: DbSession, who: DesktopWriter) -> Any:
    """Create a desktop from a template version: placed on a host with room, disk = a qcow2 overlay, domain
    defined on the host; optionally attached to one user (dedicated) or several (shared)."""
    _check_policy(payload.placement)
    request = service.DesktopRequest(**payload.model_dump(exclude={"placement"}))
    planned = service.plan_desktops(session, [request], policy=payload.placement)
    session.commit()
    outcome = service.materialise(planned)
    service.finish(session, planned, outcome)
    if not outcome.created:
        session.commit()
        raise Conflict(f"desktop {payload.name} could not be created: {outcome.failed.get(payload.name, '?')}")
    item = planned[0]
    emit(session, "desktop.provisioned", f"{who.name} created desktop {item.name} on {item.target.host_name}"
         + (f" for {len(payload.user_ids)} user(s)" if payload.user_ids else ""), actor=who.name,
         desktop_id=item.desktop_id, host_id=item.target.host_id)
    return _desktop_out(session, item.desktop_id)


def _mark(session: Session, desktop_id: str, task: TaskState, action: str) -> Desktop:
    desktop = session.get(Desktop, desktop_id)
    if desktop is None:
        raise NotFound(kind="desktop", id=desktop_id)
    if desktop.assigned_user_id is not None:
        raise Conflict(f"desktop {desktop.name} is assigned to a user; unassign it first")
    done = session.execute(update(Desktop).where(Desktop.id == desktop_id, Desktop.task_state.is_(None))
                           .values(task_state=task).execution_options(synchronize_session=False)).rowcount
    if not done:
        session.refresh(desktop)
        raise Conflict(f"desktop {desktop.name} is {desktop.task_state.value if desktop.task_state else 'busy'}; "
                       f"cannot {action}")
    return desktop


@router.post("/desktops/{desktop_id}/reset", response_model=s.JobOut, status_code=202, tags=["desktops"])
def reset(desktop_id: str, session: DbSession, who: DesktopWriter) -> Any:
    """Throw away the desktop's changes (fresh overlay on its template), as a job."""
    desktop = _mark(session, desktop_id, TaskState.REIMAGING, "reset")
    job = enqueue(session, "desktops.reset", params={"desktop_id": desktop_id}, created_by=who.name,
                  target_kind="desktop", target_id=desktop_id, description=f"reset desktop {desktop.name}")
    return _job_out(job)


@router.post("/desktops/{desktop_id}/deprovision", response_model=s.JobOut, status_code=202, tags=["desktops"])
def deprovision(desktop_id: str, session: DbSession, who: DesktopWriter) -> Any:
    """Remove the desktop everywhere (domain, overlay, rows), as a job."""
    desktop = _mark(session, desktop_id, TaskState.DELETING, "remove it")
    job = enqueue(session, "desktops.deprovision", params={"desktop_id": desktop_id}, created_by=who.name,
                  target_kind="desktop", target_id=desktop_id, description=f"remove desktop {desktop.name}")
    return _job_out(job)


@router.post("/desktops/{desktop_id}/users", status_code=201, tags=["desktops"])
def attach_user(desktop_id: str, payload: UserRef, session: DbSession, who: EntitlementWriter) -> dict[str, Any]:
    """Attach a desktop to a user (dedicated; with several users it is shared)."""
    desktop = service.get_desktop(session, desktop_id)
    user = session.get(User, payload.user_id)
    if user is None:
        raise Invalid(f"user_id: user {payload.user_id} does not exist")
    if desktop.pool_id is not None:
        raise Conflict(f"desktop {desktop.name} belongs to a pool; assign pool desktops through the pool")
    if session.scalar(select(Assignment.id).where(Assignment.desktop_id == desktop_id,
                                                  Assignment.user_id == user.id)):
        raise Conflict(f"{user.username} is already attached to desktop {desktop.name}")
    session.add(Assignment(desktop_id=desktop_id, user_id=user.id, kind="dedicated"))
    emit(session, "desktop.user_attached", f"{who.name} attached desktop {desktop.name} to {user.username}@"
         f"{user.domain}", actor=who.name, user_id=user.id, desktop_id=desktop_id)
    users = list(session.scalars(select(Assignment.user_id).where(Assignment.desktop_id == desktop_id)))
    return {"desktop_id": desktop_id, "user_ids": sorted(set(users) | {user.id})}


@router.delete("/desktops/{desktop_id}/users/{user_id}", status_code=204, tags=["desktops"])
def detach_user(desktop_id: str, user_id: str, session: DbSession, who: EntitlementWriter) -> None:
    """Detach a user from a dedicated/shared desktop."""
    row = session.scalar(select(Assignment).where(Assignment.desktop_id == desktop_id, Assignment.user_id == user_id))
    if row is None:
        raise NotFound(kind="desktop attachment", id=f"{desktop_id}/{user_id}")
    session.delete(row)
    emit(session, "desktop.user_detached", f"{who.name} detached user {user_id} from desktop {desktop_id}",
         actor=who.name, user_id=user_id, desktop_id=desktop_id)


# ---- pools ----------------------------------------------------------------------------------------------------------
def _pool(session: Session, pool_id: str) -> Pool:
    pool = session.get(Pool, pool_id)
    if pool is None:
        raise NotFound(kind="pool", id=pool_id)
    return pool


@router.post("/pools/{pool_id}/provision", response_model=s.JobOut, status_code=202, tags=["pools"])
def provision_pool(pool_id: str, session: DbSession, who: PoolWriter, payload: PlacementIn | None = None) -> Any:
    """Create the pool's missing desktops (up to its size) from its name pattern, as a cancelable job."""
    pool = _pool(session, pool_id)
    placement = (payload or PlacementIn()).placement
    _check_policy(placement)
    service.resolve_version(session, template_id=pool.template_id, version_id=pool.template_version_id)
    job = enqueue(session, "pools.provision", params={"pool_id": pool.id, "policy": placement}, created_by=who.name,
                  target_kind="pool", target_id=pool.id, description=f"provision pool {pool.name}", total=pool.size)
    return _job_out(job)


@router.post("/pools/{pool_id}/resize", response_model=s.JobOut, status_code=202, tags=["pools"])
def resize_pool(pool_id: str, payload: ResizeIn, session: DbSession, who: PoolWriter) -> Any:
    """Grow or shrink the pool. Shrinking removes free desktops only; assigned ones are never touched."""
    _check_policy(payload.placement)
    pool = _pool(session, pool_id)
    prestarted = pool.prestarted if payload.prestarted is None else payload.prestarted
    if prestarted > payload.size:
        raise Invalid(f"prestarted ({prestarted}) cannot exceed size ({payload.size})")
    old = pool.size
    pool.size, pool.prestarted = payload.size, prestarted
    emit(session, "pool.resized", f"{who.name} resized pool {pool.name} from {old} to {payload.size} desktops "
         f"({prestarted} prestarted)", actor=who.name, pool_id=pool.id)
    job = enqueue(session, "pools.resize", params={"pool_id": pool.id, "policy": payload.placement},
                  created_by=who.name, target_kind="pool", target_id=pool.id,
                  description=f"resize pool {pool.name} to {payload.size}")
    if prestarted:
        enqueue(session, "pools.maintain", params={"pool_id": pool.id}, created_by=who.name, target_kind="pool",
                target_id=pool.id, description=f"prestart desktops of pool {pool.name}")
    return _job_out(job)


@router.post("/pools/{pool_id}/maintain", response_model=s.JobOut, status_code=202, tags=["pools"])
def maintain_pool(pool_id: str, session: DbSession, who: PoolWriter) -> Any:
    """Expire time-based leases now and top up the prestarted desktops, as a job."""
    pool = _pool(session, pool_id)
    job = enqueue(session, "pools.maintain", params={"pool_id": pool.id}, created_by=who.name, target_kind="pool",
                  target_id=pool.id, description=f"maintain pool {pool.name}")
    return _job_out(job)


def _pool_desktop(session: Session, pool_id: str, desktop_id: str) -> tuple[Pool, Desktop]:
    pool = _pool(session, pool_id)
    desktop = session.get(Desktop, desktop_id)
    if desktop is None or desktop.pool_id != pool.id:
        raise NotFound(kind=f"desktop of pool {pool.name}", id=desktop_id)
    return pool, desktop


@router.post("/pools/{pool_id}/desktops/{desktop_id}/assign", response_model=s.DesktopOut, tags=["pools"])
def assign_pool_desktop(pool_id: str, desktop_id: str, payload: UserRef, session: DbSession, who: PoolWriter) -> Any:
    """Hand a free desktop of a manual pool to a user for good."""
    pool, desktop = _pool_desktop(session, pool_id, desktop_id)
    if pool.pool_type != PoolType.MANUAL:
        raise Conflict(f"pool {pool.name} is {pool.pool_type.value}; only manual pools take fixed assignments")
    user = session.get(User, payload.user_id)
    if user is None:
        raise Invalid(f"user_id: user {payload.user_id} does not exist")
    with assignment.assignment_guard(session):
        held = assignment.desktops_held(session, user.id, pool.id)
        if len(held) >= pool.max_desktops_per_user:
            raise Conflict(f"{user.username} already holds {len(held)} desktop(s) of pool {pool.name} "
                           f"(the limit is {pool.max_desktops_per_user})")
        if not assignment.assign_to_user(session, desktop.id, user.id):
            raise Conflict(f"desktop {desktop.name} is already assigned; unassign it first")
        emit(session, "broker.assigned", f"{who.name} assigned desktop {desktop.name} of pool {pool.name} to "
             f"{user.username}@{user.domain}", actor=who.name, user_id=user.id, desktop_id=desktop.id, pool_id=pool.id)
        session.commit()
    return _desktop_out(session, desktop.id)


@router.post("/pools/{pool_id}/desktops/{desktop_id}/unassign", response_model=s.DesktopOut, tags=["pools"])
def unassign_pool_desktop(pool_id: str, desktop_id: str, session: DbSession, who: PoolWriter) -> Any:
    """Take a pool desktop back from its user; it is reset to the template before anyone else gets it."""
    pool, desktop = _pool_desktop(session, pool_id, desktop_id)
    if desktop.assigned_user_id is None:
        raise Conflict(f"desktop {desktop.name} is not assigned to anyone")
    if lifecycle.unassign(session, desktop, actor=who.name) is None:
        raise Conflict(f"desktop {desktop.name} is busy ({desktop.task_state}); try again shortly")
    enqueue(session, "desktops.reset", params={"desktop_id": desktop.id}, created_by=who.name,
            target_kind="desktop", target_id=desktop.id, description=f"reset desktop {desktop.name} after unassign")
    return _desktop_out(session, desktop.id)
