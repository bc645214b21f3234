"""Actions on desktops and pools beyond plain CRUD: power (compare-and-swap on task_state), provisioning from a
template version, dedicated/shared attachment, pool growth/shrink/maintenance, manual-pool (un)assignment and
bulk actions. Thin wrappers: the work is in manager.provisioning (service, power, pools, bulk), which the web
console's pages call too."""
from __future__ import annotations

import datetime as dt
from typing import Annotated, Any, NamedTuple

from fastapi import APIRouter, Depends, Query, Request
from pydantic import Field, field_validator, model_validator
from sqlalchemy.orm import Session

import manager.provisioning  # noqa: F401  (registers the provisioning jobs)
from core.enums import JobState, OsType
from manager.api import schemas as s
from manager.api.common import DbSession, Page, PageParams, Paging, paginate
from manager.api.openapi import NODE_ERRORS
from manager.api.resources import RESOURCE_BY_PATH
from manager.api.system import _job_out
from manager.auth import Principal, require
from manager.models import Assignment
from manager.provisioning import bulk, migration, pools, service
from manager.provisioning.placement import POLICIES
from manager.provisioning.power import DEFAULT_STOP_TIMEOUT_S, PowerAction, power_desktop

router = APIRouter(responses=NODE_ERRORS)
Power = Annotated[Principal, Depends(require("desktops:power"))]
DesktopReader = Annotated[Principal, Depends(require("desktops:read"))]
DesktopWriter = Annotated[Principal, Depends(require("desktops:write"))]
PoolWriter = Annotated[Principal, Depends(require("pools:write"))]
EntitlementWriter = Annotated[Principal, Depends(require("entitlements:write"))]
Placement = Annotated[str, Field(default="spread", description="placement policy: " + ", ".join(sorted(POLICIES)))]


class StopIn(s.In):
    timeout: Annotated[float, Field(gt=0, le=3600)] = DEFAULT_STOP_TIMEOUT_S


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


class AttachmentOut(s.Out):
    user_id: str
    kind: str  # dedicated | pool
    until: dt.datetime | None
    created_at: dt.datetime


class ResizeIn(s.In):
    size: Annotated[int, Field(ge=0, le=100_000)]
    prestarted: Annotated[int | None, Field(ge=0, le=100_000)] = None
    placement: Placement = "spread"


class PlacementIn(s.In):
    placement: Placement = "spread"


class BulkIn(s.In):
    action: bulk.BulkAction
    desktop_ids: list[s.Id] = Field(min_length=1, max_length=bulk.MAX_DESKTOPS,
                                    description="the desktops (each once; repeats are ignored)")
    template_version_id: s.Id | None = Field(default=None, description="reimage: the version (of the desktops' "
                                             "template); default: each desktop's template's latest version")
    keep_snapshots: bool = Field(default=False, description="reimage: keep the desktops' snapshots")
    power_off: bool = Field(default=False, description="reimage: pull the plug first where a desktop runs (idle)")
    snapshot_name: s.Name | None = Field(default=None, description="snapshot: the name of the snapshot to take "
                                         "(required); revert: the snapshot to revert to (default: the newest)")
    description: s.Text = Field(default="", description="snapshot: the snapshot's description")
    user_id: s.Id | None = Field(default=None, description="assign: the user who gets the desktops (required)")

    @field_validator("desktop_ids")
    @classmethod
    def _once_each(cls, ids: list[str]) -> list[str]:
        return list(dict.fromkeys(ids))

    def options(self) -> bulk.Options:
        return bulk.Options(**self.model_dump(exclude={"action", "desktop_ids"}))


class BulkPreviewOut(s.Out):
    action: bulk.BulkAction
    count: int
    names: list[str] = Field(description=f"the first {bulk.SHOWN} desktops by name")
    in_use: int = Field(description="desktops with a live console session or an assigned user")
    in_use_names: list[str] = Field(description=f"the first {bulk.SHOWN} of those")
    busy: int = Field(description="desktops busy with another action (task_state set)")
    logged_in: int = Field(description="desktops a user is logged in to now (a live console session or a user "
                                       "the guest agent reports)")
    without_snapshot: int = Field(description="revert: desktops without a snapshot to revert to (of the name "
                                              "given); 0 for other actions")


def _desktop_out(desktop) -> s.DesktopOut:
    return s.DesktopOut.model_validate(desktop)


# ---- power -----------------------------------------------------------------------------------------------------
@router.post("/desktops/{desktop_id}/start", response_model=s.DesktopOut, tags=["desktops"])
def start(desktop_id: str, session: DbSession, who: Power) -> Any:
    """Boot the desktop. A second start while one is in progress is refused (409 desktop_busy)."""
    return _desktop_out(power_desktop(session, desktop_id, PowerAction.START, actor=who.name))


@router.post("/desktops/{desktop_id}/stop", response_model=s.DesktopOut, tags=["desktops"])
def stop(desktop_id: str, session: DbSession, who: Power, payload: StopIn | None = None) -> Any:
    """Ask the guest to shut down and wait up to `timeout` seconds (504 if it is still running)."""
    return _desktop_out(power_desktop(session, desktop_id, PowerAction.STOP, actor=who.name,
                                      timeout=(payload or StopIn()).timeout))


@router.post("/desktops/{desktop_id}/poweroff", response_model=s.DesktopOut, tags=["desktops"])
def poweroff(desktop_id: str, session: DbSession, who: Power) -> Any:
    """Pull the plug."""
    return _desktop_out(power_desktop(session, desktop_id, PowerAction.POWEROFF, actor=who.name))


@router.post("/desktops/{desktop_id}/reboot", response_model=s.DesktopOut, tags=["desktops"])
def reboot(desktop_id: str, session: DbSession, who: Power) -> Any:
    """Ask the running guest to reboot."""
    return _desktop_out(power_desktop(session, desktop_id, PowerAction.REBOOT, actor=who.name))


@router.post("/desktops/{desktop_id}/suspend", response_model=s.DesktopOut, tags=["desktops"])
def suspend(desktop_id: str, session: DbSession, who: Power) -> Any:
    """Pause the running guest (its memory stays on its host); resume continues it."""
    return _desktop_out(power_desktop(session, desktop_id, PowerAction.SUSPEND, actor=who.name))


@router.post("/desktops/{desktop_id}/resume", response_model=s.DesktopOut, tags=["desktops"])
def resume(desktop_id: str, session: DbSession, who: Power) -> Any:
    """Continue a suspended guest."""
    return _desktop_out(power_desktop(session, desktop_id, PowerAction.RESUME, actor=who.name))


class MigrateIn(s.In):
    host_id: s.Id | None = Field(default=None, description="the target host; default: the placement policy's best "
                                 "other host of the desktop's cluster")
    placement: Placement = "spread"


@router.post("/desktops/{desktop_id}/migrate", response_model=s.JobOut, status_code=202, tags=["desktops"])
def migrate(desktop_id: str, session: DbSession, who: Power, payload: MigrateIn | None = None) -> Any:
    """Move the running desktop live to another host (shared storage), as a job: to `host_id`, or to the best
    host by the placement policy. 409 when it is not running, busy, or the target is its host, in maintenance or
    not up; 404 for an unknown desktop or host."""
    payload = payload or MigrateIn()
    return _job_out(migration.request_migration(session, desktop_id, host_id=payload.host_id,
                                                policy=payload.placement, actor=who.name))


# ---- bulk -------------------------------------------------------------------------------------------------------
class BulkAsk(NamedTuple):
    payload: BulkIn
    who: Principal


def _bulk_ask(payload: BulkIn, request: Request, session: DbSession) -> BulkAsk:
    """The body, and who asks, holding the permissions of the action asked for (bulk.PERMISSIONS, the single
    actions'): desktops:power to start, stop, power off or reboot; desktops:write to reset, remove, re-image,
    snapshot or revert; pools:write and entitlements:write to assign or unassign."""
    who = None
    for permission in bulk.PERMISSIONS[payload.action]:
        who = require(permission)(request, session)
    return BulkAsk(payload, who)


_bulk_ask.permission = "by action: bulk.PERMISSIONS (the single actions')"  # type: ignore[attr-defined]


@router.post("/desktops/bulk", response_model=s.JobOut, status_code=202, tags=["desktops"])
def bulk_action(ask: Annotated[BulkAsk, Depends(_bulk_ask)], session: DbSession) -> Any:
    """One action on up to 1,000 desktops, as one job: a few desktops at a time, progress done/total, cancelable;
    a desktop that cannot be done (busy, assigned, its host down, no snapshot to revert to, not in a manual pool)
    is listed by name in the job's result (`failed`) while the others go on. Needs the single action's
    permission (desktops:power for start, stop, poweroff, reboot; desktops:write for reset, deprovision, reimage,
    snapshot, revert; pools:write and entitlements:write for assign, unassign). `snapshot` needs
    `snapshot_name`, `assign` needs `user_id`; an option the action does not take, unknown ids, users or
    versions are a 422 naming them. reimage: each desktop's template's latest version, or
    `template_version_id` (a desktop of another template fails); revert: each desktop's newest snapshot, or the
    one named `snapshot_name`; assign: manual-pool desktops through the pool (its per-user limit), desktops
    outside pools by attaching the user; unassign: pool desktops back from their user (then reset), desktops
    outside pools lose all their users."""
    return _job_out(bulk.request_bulk(session, ask.payload.action, ask.payload.desktop_ids, actor=ask.who.name,
                                      options=ask.payload.options()))


@router.post("/desktops/bulk/preview", response_model=BulkPreviewOut, tags=["desktops"])
def bulk_preview(payload: BulkIn, session: DbSession, who: DesktopReader) -> Any:
    """What a confirmation must say before a bulk action: how many desktops, their first names, how many have a
    user (a live console session or an assigned user), how many have a user logged in now, how many are busy
    with another action and, for a revert, how many have no snapshot to revert to."""
    return BulkPreviewOut.model_validate(bulk.preview(session, payload.action, payload.desktop_ids,
                                                      bulk.check_options(session, payload.action, payload.options())))


# ---- create, change, delete: jobs on the desktop's host --------------------------------------------------------
_DESKTOPS = RESOURCE_BY_PATH["desktops"]
DesktopPatch = _DESKTOPS.update
# How long a PATCH waits for its desktops.redefine job, to say what it did per field (then "pending": the job's
# result will say). Long enough for a define and a balloon change on a busy host.
HARDWARE_WAIT_S = 15.0


class DesktopCreated(s.DesktopOut):
    job_id: str = Field(description="the job desktops.provision (GET /jobs/{id}): overlay made, domain defined; "
                                    "until it ends the desktop's task_state is provisioning")


class DesktopChanged(s.DesktopOut):
    job_id: str | None = Field(default=None, description="the job desktops.redefine when CPUs, memory or monitors "
                                                        "of a desktop with a domain changed")
    applied: dict[str, str] = Field(default_factory=dict, description="per hardware field changed: live (the "
                                    "running guest has it now), next_boot, pending (the job had not ended "
                                    f"within {HARDWARE_WAIT_S:.0f} s: see its result), or failed (see its error)")


@router.post("/desktops", response_model=DesktopCreated, status_code=201, tags=["desktops"])
def create_desktop(payload: ProvisionIn, session: DbSession, who: DesktopWriter) -> Any:
    """Create a desktop: its row now, placed on a host with room by the placement policy (or on `host_id`), and
    the job desktops.provision (`job_id`) that makes its qcow2 overlay of the template and defines its domain
    there. 422 for an unknown template, version, host or user; 409 for a taken name or when no host has room (or
    the host asked for is in maintenance). A failed job removes the desktop again and says why."""
    request = service.DesktopRequest(**payload.model_dump(exclude={"placement"}))
    desktop, job = service.request_provision(session, request, policy=payload.placement, actor=who.name)
    return DesktopCreated.model_validate({**s.DesktopOut.model_validate(desktop).model_dump(), "job_id": job.id})


@router.patch("/desktops/{desktop_id}", response_model=DesktopChanged, tags=["desktops"])
def update_desktop(desktop_id: str, payload: DesktopPatch, session: DbSession,  # type: ignore[valid-type]
                   who: DesktopWriter) -> Any:
    """Change a desktop. New CPUs, memory or monitors of a desktop with a domain reach it through the job
    desktops.redefine: the domain is defined again (the next boot has them) and a running guest gets memory live
    through its balloon (up to the memory it booted with) and vCPUs by hot-plug (up to its maximum vCPUs);
    `applied` says per field what happened (monitors: always next_boot). Its host, template version, disk size or
    pool cannot change by PATCH once it has a domain (409 naming what does it instead)."""
    values = payload.model_dump(exclude_unset=True)  # type: ignore[attr-defined]
    _DESKTOPS.fetch(session, desktop_id, who)
    service.check_change(session, desktop_id, values)
    desktop = _DESKTOPS.update_object(session, desktop_id, values, who)
    job = service.request_hardware_change(session, desktop, list(values), actor=who.name)
    out = s.DesktopOut.model_validate(desktop).model_dump()
    if job is None:
        return DesktopChanged.model_validate(out)
    job_id, fields = job.id, job.params["fields"]
    session.commit()  # the job is sent now
    ended = service.ended_job(job_id, HARDWARE_WAIT_S)
    if ended is None:
        applied = {name: "pending" for name in fields}
    elif ended[0] == JobState.SUCCEEDED:
        applied = ended[1].get("applied") or {name: "next_boot" for name in fields}
    else:  # the domain did not take it (its host did not answer...): the job's error says why
        applied = {name: ended[0].value for name in fields}
    return DesktopChanged.model_validate({**out, "job_id": job_id, "applied": applied})


@router.delete("/desktops/{desktop_id}", response_model=s.JobOut, status_code=202, tags=["desktops"])
def delete_desktop(desktop_id: str, session: DbSession, who: DesktopWriter,
                   force: Annotated[bool, Query(description="power a running desktop off first")] = False) -> Any:
    """Remove the desktop, as the job desktops.deprovision: its domain stopped (only with `force`: a desktop that
    is not down is a 409, as in oVirt) and undefined, its overlay deleted, then its rows. Until its host has
    confirmed, the desktop stays, task_state deleting; asking again for a desktop whose removal failed sends a new
    job. 409 for a desktop assigned to a user or busy with another action."""
    return _job_out(service.request_removal(session, desktop_id, force=force, actor=who.name))


# ---- provisioning ----------------------------------------------------------------------------------------------
@router.post("/desktops/provision", response_model=s.DesktopOut, status_code=201, tags=["desktops"])
def provision(payload: ProvisionIn, session: DbSession, who: DesktopWriter) -> Any:
    """Create a desktop from a template version: placed on a host with room, disk = a qcow2 overlay, domain
    defined on the host; optionally attached to one user (dedicated) or several (shared)."""
    request = service.DesktopRequest(**payload.model_dump(exclude={"placement"}))
    return _desktop_out(service.provision_desktop(session, request, policy=payload.placement, actor=who.name))


@router.post("/desktops/{desktop_id}/reset", response_model=s.JobOut, status_code=202, tags=["desktops"])
def reset(desktop_id: str, session: DbSession, who: DesktopWriter) -> Any:
    """Throw away the desktop's changes (fresh overlay on its template), as a job."""
    return _job_out(service.request_disk_action(session, desktop_id, "reset", actor=who.name))


@router.post("/desktops/{desktop_id}/deprovision", response_model=s.JobOut, status_code=202, tags=["desktops"])
def deprovision(desktop_id: str, session: DbSession, who: DesktopWriter) -> Any:
    """Remove the desktop everywhere (domain, overlay, rows), as a job."""
    return _job_out(service.request_disk_action(session, desktop_id, "deprovision", actor=who.name))


@router.post("/desktops/{desktop_id}/users", status_code=201, tags=["desktops"])
def attach_user(desktop_id: str, payload: UserRef, session: DbSession, who: EntitlementWriter) -> dict[str, Any]:
    """Attach a desktop to a user (dedicated; with several users it is shared)."""
    users = service.attach_user(session, desktop_id, payload.user_id, actor=who.name)
    return {"desktop_id": desktop_id, "user_ids": users}


def attachments_page(session: Session, desktop_id: str, paging: PageParams, who: Principal) -> dict[str, Any]:
    """One page of the users the desktop is attached to, oldest attachment first (GET /desktops/{id}/users, the
    desktop's page)."""
    desktop = RESOURCE_BY_PATH["desktops"].fetch(session, desktop_id, who)
    return paginate(session, service.attachments(desktop.id), paging, AttachmentOut,
                    sortable={"created_at": Assignment.created_at, "until": Assignment.until},
                    default_order=[Assignment.created_at, Assignment.id])


@router.get("/desktops/{desktop_id}/users", response_model=Page[AttachmentOut], tags=["desktops"])
def list_attached_users(desktop_id: str, session: DbSession, paging: Paging, who: DesktopReader) -> dict[str, Any]:
    """The users the desktop is attached to (dedicated or shared, or its pool's holder), paged."""
    return attachments_page(session, desktop_id, paging, who)


@router.delete("/desktops/{desktop_id}/users/{user_id}", status_code=204, tags=["desktops"])
def detach_user(desktop_id: str, user_id: str, session: DbSession, who: EntitlementWriter) -> None:
    """Detach a user from a dedicated/shared desktop."""
    service.detach_user(session, desktop_id, user_id, actor=who.name)


# ---- pools ----------------------------------------------------------------------------------------------------------
@router.post("/pools/{pool_id}/provision", response_model=s.JobOut, status_code=202, tags=["pools"])
def provision_pool(pool_id: str, session: DbSession, who: PoolWriter, payload: PlacementIn | None = None) -> Any:
    """Create the pool's missing desktops (up to its size) from its name pattern, as a cancelable job."""
    placement = (payload or PlacementIn()).placement
    return _job_out(pools.provision_pool(session, pool_id, policy=placement, actor=who.name))


@router.post("/pools/{pool_id}/resize", response_model=s.JobOut, status_code=202, tags=["pools"])
def resize_pool(pool_id: str, payload: ResizeIn, session: DbSession, who: PoolWriter) -> Any:
    """Grow or shrink the pool. Shrinking removes free desktops only; assigned ones are never touched."""
    return _job_out(pools.resize_pool(session, pool_id, size=payload.size, prestarted=payload.prestarted,
                                      policy=payload.placement, actor=who.name))


@router.post("/pools/{pool_id}/maintain", response_model=s.JobOut, status_code=202, tags=["pools"])
def maintain_pool(pool_id: str, session: DbSession, who: PoolWriter) -> Any:
    """Expire time-based leases now and top up the prestarted desktops, as a job."""
    return _job_out(pools.maintain_pool(session, pool_id, actor=who.name))


@router.post("/pools/{pool_id}/desktops/{desktop_id}/assign", response_model=s.DesktopOut, tags=["pools"])
def assign_pool_desktop(pool_id: str, desktop_id: str, payload: UserRef, session: DbSession, who: PoolWriter) -> Any:
    """Hand a free desktop of a manual pool to a user for good."""
    return _desktop_out(pools.assign_pool_desktop(session, pool_id, desktop_id, payload.user_id, actor=who.name))


@router.post("/pools/{pool_id}/desktops/{desktop_id}/unassign", response_model=s.DesktopOut, tags=["pools"])
def unassign_pool_desktop(pool_id: str, desktop_id: str, session: DbSession, who: PoolWriter) -> Any:
    """Take a pool desktop back from its user; it is reset to the template before anyone else gets it."""
    return _desktop_out(pools.unassign_pool_desktop(session, pool_id, desktop_id, actor=who.name))
