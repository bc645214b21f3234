"""Creating, resetting and removing desktops: database rows, qcow2 overlays, domains on nodes.

Three phases, so no node call or disk write ever runs inside a transaction holding locks:
    plan_*      (caller's transaction) rows with task_state PROVISIONING, host chosen by a placement policy
    materialise (no transaction)       overlays made in one batch by image_manager, domains defined via NodeClient
    finish      (caller's transaction) task_state cleared for the ones that worked, failures removed
"""
from __future__ import annotations

import logging
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from sqlalchemy import Select, delete, func, select, update
from sqlalchemy.orm import Session

from core.enums import HostStatus, JobState, OsType, PowerState, TaskState
from core.errors import Conflict, DomainNotFound, DuplicateName, Invalid, NoHostAvailable, NotFound, VdiError
from core.ids import new_id
from core.specs import DesktopSpec
from event_manager.service import emit
from image_manager import chain, fileops, qcow2
from manager import db
from manager.db import get_or_404
from manager.jobs import enqueue
from manager.models import (Assignment, Desktop, Host, Job, Pool, Snapshot, StorageDomain, Template, TemplateVersion,
                            User, Volume)
from manager.provisioning import nodes, placement, power
from manager.provisioning.nodes import NodeTarget
from manager.tagging import forget as forget_tags

log = logging.getLogger(__name__)


@dataclass
class DesktopRequest:
    """One desktop to create. `template_version_id` wins over `template_id` (which means its latest version)."""

    name: str
    template_id: str | None = None
    template_version_id: str | None = None
    cpus: int | None = None  # None: the template's
    memory_mib: int | None = None
    os_type: OsType | None = None
    console_protocols: str = "spice"
    monitors: int = 1
    disk_size_gib: int = 0  # 0: the template's size
    pool_id: str | None = None
    host_id: str | None = None  # None: the placement policy decides
    cluster_id: str | None = None
    user_ids: list[str] = field(default_factory=list)  # dedicated (one) or shared (several)
    description: str = ""


@dataclass
class Planned:
    """What materialise needs for one desktop (plain data: safe to use after the transaction)."""

    desktop_id: str
    name: str
    target: NodeTarget
    spec: DesktopSpec
    template_path: str
    disk_path: str
    virtual_size: int | None


@dataclass
class Outcome:
    created: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)  # name -> reason


# ---- template and storage ----------------------------------------------------------------------------
def resolve_version(session: Session, *, template_id: str | None, version_id: str | None) \
        -> tuple[Template, TemplateVersion, Volume]:
    """The template version to build on and its image volume. Raises Invalid with what is missing."""
    if version_id:
        version = session.get(TemplateVersion, version_id)
        if version is None:
            raise Invalid(f"template_version_id: template version {version_id} does not exist")
        template = session.get(Template, version.template_id)
    elif template_id:
        template = session.get(Template, template_id)
        if template is None:
            raise Invalid(f"template_id: template {template_id} does not exist")
        if template.latest_version_id is None:
            raise Invalid(f"template {template.name} has no version yet")
        version = session.get(TemplateVersion, template.latest_version_id)
    else:
        raise Invalid("give template_id or template_version_id")
    if version.volume_id is None:
        raise Invalid(f"version {version.number} of template {template.name} has no disk image; import one first")
    volume = session.get(Volume, version.volume_id)
    return template, version, volume


def storage_layout(session: Session, template: Template, template_volume: Volume) -> fileops.StorageLayout:
    """The storage domain the desktops of this template live on (image_manager's layout:
    <root>/desktops/<desktop id>/<volume id>.qcow2). Without a domain row, the template file's own root."""
    domain_id = template_volume.storage_domain_id or template.storage_domain_id
    domain = session.get(StorageDomain, domain_id) if domain_id else None
    if domain is not None:
        return fileops.StorageLayout(Path(domain.path))
    template_path = Path(template_volume.path)
    root = template_path.parents[2] if fileops.is_template_path(template_path) else template_path.parent
    return fileops.StorageLayout(root)


# ---- placement -----------------------------------------------------------------------------------------
def candidate_hosts(session: Session, cluster_id: str | None = None) -> list[placement.HostLoad]:
    """Hosts that can take new desktops: up, with a node agent, in the cluster when one is given."""
    counts = dict(session.execute(select(Desktop.host_id, func.count()).where(Desktop.host_id.is_not(None))
                                  .group_by(Desktop.host_id)).all())
    stmt = select(Host).where(Host.status == HostStatus.UP, Host.agent_url != "")
    if cluster_id:
        stmt = stmt.where(Host.cluster_id == cluster_id)
    return [placement.HostLoad(h.id, h.name, h.free_memory_mib, counts.get(h.id, 0))
            for h in session.scalars(stmt.order_by(Host.name))]


# ---- create ----------------------------------------------------------------------------------------------
def plan_desktops(session: Session, requests: Sequence[DesktopRequest], *, policy: str = "spread") -> list[Planned]:
    """Insert the desktops' rows (task_state PROVISIONING) with their disk volumes and hosts. Flushes.

    Raises Invalid (bad template/names/users), DuplicateName (409, as for every other resource) for a taken name,
    NoHostAvailable when no host has the memory (naming the need and the best host's free memory)."""
    if not requests:
        return []
    choose = placement.get_policy(policy)
    names = [r.name for r in requests]
    if len(set(names)) != len(names):
        raise Invalid("the same desktop name is requested twice")
    taken = set(session.scalars(select(Desktop.name).where(Desktop.name.in_(names))))
    if taken:
        raise DuplicateName(kind="desktop", name=", ".join(sorted(taken)[:10]))
    hosts_by_cluster: dict[str | None, list[placement.HostLoad]] = {}
    out: list[Planned] = []
    for req in requests:
        template, version, template_volume = resolve_version(session, template_id=req.template_id,
                                                             version_id=req.template_version_id)
        cpus = req.cpus or template.cpus
        memory = req.memory_mib or template.memory_mib
        os_type = req.os_type or template.os_type
        if req.host_id:
            host = session.get(Host, req.host_id)
            if host is None:
                raise Invalid(f"host_id: host {req.host_id} does not exist")
            if host.status == HostStatus.MAINTENANCE:
                raise Conflict(f"host {host.name} is in maintenance: it takes no new desktops")
            load = placement.HostLoad(host.id, host.name, host.free_memory_mib)
        else:
            hosts = hosts_by_cluster.setdefault(req.cluster_id, candidate_hosts(session, req.cluster_id))
            load = choose(hosts, memory)
            if load is None:
                best = max((h.free_memory_mib for h in hosts), default=0)
                raise NoHostAvailable(what=f"desktop {req.name} ({memory} MiB)",
                                      reason=f"{len(hosts)} host(s) up; the most free memory is {best} MiB"
                                      if hosts else "no host is up with a node agent")
            load.free_memory_mib -= memory
            load.desktops += 1
        host = session.get(Host, load.host_id)
        desktop = Desktop(name=req.name, description=req.description, template_version_id=version.id, cpus=cpus,
                          memory_mib=memory, os_type=os_type, console_protocols=req.console_protocols,
                          monitors=req.monitors, disk_size_gib=req.disk_size_gib, host_id=host.id,
                          pool_id=req.pool_id, task_state=TaskState.PROVISIONING, power_state=PowerState.DOWN)
        session.add(desktop)
        session.flush()
        volume_id = new_id()
        disk = storage_layout(session, template, template_volume).desktop_volume_path(desktop.id, volume_id)
        volume = Volume(id=volume_id, storage_domain_id=template_volume.storage_domain_id, path=str(disk), format="qcow2",
                        role="desktop", parent_id=template_volume.id, desktop_id=desktop.id,
                        virtual_size=req.disk_size_gib * 1024 ** 3 if req.disk_size_gib else template_volume.virtual_size)
        session.add(volume)
        session.flush()
        desktop.volume_id = volume.id
        for user_id in req.user_ids:
            if session.get(User, user_id) is None:
                raise Invalid(f"user_ids: user {user_id} does not exist")
            session.add(Assignment(desktop_id=desktop.id, user_id=user_id, kind="dedicated"))
        spec = desktop_spec(desktop, template, str(disk), host.display_listen)
        out.append(Planned(desktop.id, desktop.name, nodes.target_of_host(host), spec, template_volume.path,
                           str(disk), req.disk_size_gib * 1024 ** 3 if req.disk_size_gib else None))
    session.flush()
    return out


def desktop_spec(desktop: Desktop, template: Template, disk_path: str, display_listen: str) -> DesktopSpec:
    """What a node needs to define this desktop's domain (the designer decides the XML); its displays listen on
    `display_listen` (the host's Host.display_listen)."""
    return DesktopSpec(uuid=desktop.id, name=desktop.name, vcpus=desktop.cpus, memory_mib=desktop.memory_mib,
                       disk_path=disk_path, os_type=desktop.os_type.value, monitors=desktop.monitors,
                       kernel=template.boot_kernel or None, initrd=template.boot_initrd or None,
                       cmdline=_cmdline(template.boot_cmdline, desktop.name) if template.boot_kernel else None,
                       serial_log=str(Path(disk_path).parent / "serial.log"), spice_listen=display_listen)


def _cmdline(base: str, name: str) -> str:
    """The template's kernel command line plus this desktop's host name (the demo image reads vdi.hostname)."""
    hostname = "".join(c if c.isalnum() or c == "-" else "-" for c in name)[:63].strip("-") or "desktop"
    return f"{base} vdi.hostname={hostname}".strip()


def planned_of(session: Session, desktop_id: str) -> Planned | None:
    """What materialise needs for a desktop still being created (task_state PROVISIONING), read back from the
    rows plan_desktops wrote: the job desktops.provision, run again after a crash, does the same work (materialise
    is idempotent). None when the desktop is gone or no longer waiting to be created."""
    desktop = session.get(Desktop, desktop_id)
    if desktop is None or desktop.task_state != TaskState.PROVISIONING or None in (desktop.host_id,
                                                                                    desktop.volume_id):
        return None
    host, volume = session.get(Host, desktop.host_id), session.get(Volume, desktop.volume_id)
    version = session.get(TemplateVersion, desktop.template_version_id) if desktop.template_version_id else None
    template_volume = session.get(Volume, volume.parent_id) if volume.parent_id else None
    if host is None or version is None or template_volume is None:
        return None
    template = session.get(Template, version.template_id)
    return Planned(desktop.id, desktop.name, nodes.target_of_host(host),
                   desktop_spec(desktop, template, volume.path, host.display_listen), template_volume.path,
                   volume.path, desktop.disk_size_gib * 1024 ** 3 if desktop.disk_size_gib else None)


def materialise(planned: Sequence[Planned], *, job_id: str | None = None) -> Outcome:
    """Make the overlays (batched per template) and define the domains. No database. Idempotent: an existing
    overlay of the same template and an existing definition are kept."""
    outcome = Outcome()
    by_template: dict[tuple[str, int | None], list[Planned]] = {}
    for item in planned:
        by_template.setdefault((item.template_path, item.virtual_size), []).append(item)
    ready: list[Planned] = []
    for (template_path, size), items in by_template.items():
        try:
            qcow2.create_overlays(template_path, [i.disk_path for i in items], virtual_size=size, job_id=job_id)
            ready.extend(items)
        except VdiError as exc:
            for item in items:
                outcome.failed[item.name] = f"disk: {exc.message}"
    for item in ready:
        try:
            nodes.define(item.target, item.spec)
            outcome.created.append(item.desktop_id)
        except VdiError as exc:
            outcome.failed[item.name] = f"define on {item.target.host_name}: {exc.message}"
    return outcome


def finish(session: Session, planned: Sequence[Planned], outcome: Outcome) -> None:
    """Clear PROVISIONING on the desktops that exist now; remove the rows and overlays of the failed ones."""
    ok = set(outcome.created)
    if ok:
        session.execute(update(Desktop).where(Desktop.id.in_(ok), Desktop.task_state == TaskState.PROVISIONING)
                        .values(task_state=None).execution_options(synchronize_session=False))
    failed = [p for p in planned if p.desktop_id not in ok]
    for item in failed:
        _remove_rows(session, item.desktop_id)
        try:
            _remove_desktop_files(item.disk_path)
        except (OSError, VdiError):
            log.warning("could not remove the overlay of failed desktop %s", item.name)


def _remove_rows(session: Session, desktop_id: str) -> None:
    session.execute(update(Desktop).where(Desktop.id == desktop_id).values(volume_id=None)
                    .execution_options(synchronize_session=False))
    # snapshots name the desktop's frozen volumes: their rows go first (remove_everywhere removed their files)
    session.execute(delete(Snapshot).where(Snapshot.desktop_id == desktop_id)
                    .execution_options(synchronize_session=False))
    session.execute(delete(Volume).where(Volume.desktop_id == desktop_id).execution_options(synchronize_session=False))
    session.execute(delete(Desktop).where(Desktop.id == desktop_id).execution_options(synchronize_session=False))
    forget_tags(session, "desktop", [desktop_id])


# ---- reset and removal (run by jobs; the desktop is marked REIMAGING / DELETING first) --------------------
@dataclass
class DiskWork:
    desktop_id: str
    name: str
    target: NodeTarget | None
    disk_path: str | None
    template_path: str | None
    new_version_id: str | None
    pool_id: str | None
    other_paths: tuple[str, ...] = ()  # the desktop's other volumes' files: its snapshots' frozen overlays


def disk_work(session: Session, desktop_id: str, expected: TaskState) -> DiskWork | None:
    """What a reset/removal job must do, or None when the desktop is not (any more) in `expected` state."""
    desktop = session.get(Desktop, desktop_id)
    if desktop is None or desktop.task_state != expected:
        return None
    volume = session.get(Volume, desktop.volume_id) if desktop.volume_id else None
    version_id = desktop.pending_template_version_id or desktop.template_version_id
    version = session.get(TemplateVersion, version_id) if version_id else None
    template_volume = session.get(Volume, version.volume_id) if version and version.volume_id else None
    target = None
    if desktop.host_id is not None:
        host = session.get(Host, desktop.host_id)
        target = nodes.target_of_host(host) if host is not None and host.agent_url else None
    others = session.scalars(select(Volume.path).where(Volume.desktop_id == desktop.id,
                                                        Volume.id.is_distinct_from(desktop.volume_id)))
    return DiskWork(desktop.id, desktop.name, target, volume.path if volume else None,
                    template_volume.path if template_volume else None, version_id, desktop.pool_id, tuple(others))


def power_off_quietly(work: DiskWork) -> None:
    """Pull the plug before the disk changes; a domain that is already gone is fine."""
    if work.target is not None:
        nodes.power_off_if_defined(work.target, work.desktop_id)


def reset_disk(work: DiskWork, *, job_id: str | None = None) -> None:
    """Throw away the desktop's changes: a fresh overlay on its (possibly newer) template version."""
    if work.disk_path is None or work.template_path is None:
        return  # a desktop without a disk image of ours (nothing to reset)
    chain.reimage(work.disk_path, work.template_path, job_id=job_id)


def finish_reset(session: Session, work: DiskWork) -> bool:
    """REIMAGING -> idle and down, on the new template version when one was pending (compare-and-swap)."""
    return session.execute(
        update(Desktop).where(Desktop.id == work.desktop_id, Desktop.task_state == TaskState.REIMAGING)
        .values(task_state=None, power_state=PowerState.DOWN, template_version_id=work.new_version_id,
                pending_template_version_id=None).execution_options(synchronize_session=False)).rowcount == 1


def remove_everywhere(work: DiskWork) -> None:
    """Undefine the domain and delete the overlay (the template is never touched)."""
    if work.target is not None:
        try:
            nodes.undefine(work.target, work.desktop_id)
        except DomainNotFound:
            pass
    if work.disk_path:
        _remove_desktop_files(work.disk_path, work.other_paths)


def _remove_desktop_files(disk_path: str, other_paths: tuple[str, ...] = ()) -> None:
    """The overlay, its snapshots' files, the serial log beside it, and the desktop's directory once empty."""
    disk = Path(disk_path)
    for path in (disk, *map(Path, other_paths), disk.parent / "serial.log"):
        if os.path.lexists(path):
            fileops.remove(path)
    if disk.parent.is_dir():
        fileops.remove_dir_if_empty(disk.parent)


def finish_removal(session: Session, work: DiskWork) -> bool:
    desktop = session.get(Desktop, work.desktop_id)
    if desktop is None or desktop.task_state != TaskState.DELETING:
        return False
    _remove_rows(session, work.desktop_id)
    return True


def get_desktop(session: Session, desktop_id: str) -> Desktop:
    return get_or_404(session, Desktop, desktop_id, "desktop")


# ---- what a request (an API route, a web page) asks for ----------------------------------------------------
def provision_desktop(session: Session, request: DesktopRequest, *, policy: str = "spread", actor: str) -> Desktop:
    """Create one desktop now: plan (rows), commit, materialise (overlay and domain), finish. Commits the
    caller's session: no lock is held while the disk is written and the node defines the domain. Raises what
    plan_desktops raises, and Conflict when the desktop could not be made (naming why)."""
    planned = plan_desktops(session, [request], policy=policy)
    session.commit()
    outcome = materialise(planned)
    finish(session, planned, outcome)
    if not outcome.created:
        session.commit()
        raise Conflict(f"desktop {request.name} could not be created: {outcome.failed.get(request.name, '?')}")
    provisioned(session, planned[0], actor=actor, users=len(request.user_ids))
    return get_or_404(session, Desktop, planned[0].desktop_id, "desktop", populate_existing=True)


def provisioned(session: Session, item: Planned, *, actor: str, users: int = 0, job_id: str | None = None) -> None:
    emit(session, "desktop.provisioned", f"{actor} created desktop {item.name} on {item.target.host_name}"
         + (f" for {users} user(s)" if users else ""), actor=actor, desktop_id=item.desktop_id,
         host_id=item.target.host_id, job_id=job_id)


def request_provision(session: Session, request: DesktopRequest, *, policy: str = "spread",
                      actor: str) -> tuple[Desktop, Job]:
    """POST /desktops: the desktop's rows now (placed on a host, task_state PROVISIONING), and the job
    desktops.provision that makes its overlay and defines its domain (sent when the caller's transaction
    commits). Raises what plan_desktops raises (Invalid, NoHostAvailable, Conflict)."""
    item = plan_desktops(session, [request], policy=policy)[0]
    job = enqueue(session, "desktops.provision", params={"desktop_id": item.desktop_id, "actor": actor},
                  created_by=actor, target_kind="desktop", target_id=item.desktop_id,
                  description=f"create desktop {item.name} on {item.target.host_name}")
    return get_or_404(session, Desktop, item.desktop_id, "desktop"), job


def ended_job(job_id: str, timeout: float) -> tuple[JobState, dict] | None:
    """The job's end state and result once it has ended, or None if it is still pending or running after
    `timeout` seconds. Reads in short transactions of its own."""
    deadline = time.monotonic() + timeout
    while True:
        with db.session_scope() as session:
            job = session.get(Job, job_id)
            if job is None:
                return None
            if job.state not in (JobState.PENDING, JobState.RUNNING):
                return job.state, dict(job.result or {})
        if time.monotonic() >= deadline:
            return None
        time.sleep(0.2)


HARDWARE = ("cpus", "memory_mib", "monitors")  # what a PATCH changes on the domain too (desktops.redefine)


# What a PATCH cannot change on a desktop that has a domain and a disk, and what does it instead.
NOT_BY_PATCH = {"host_id": "POST /desktops/{id}/migrate moves it", "template_version_id": "a re-image "
                "(POST /desktops/bulk, action reimage) changes it", "disk_size_gib": "its disk is not resized",
                "pool_id": "pools provision their own desktops"}


def check_change(session: Session, desktop_id: str, values: dict) -> None:
    """Refuse (409) a PATCH of what the domain or disk of a placed desktop would not follow (NOT_BY_PATCH)."""
    desktop = get_desktop(session, desktop_id)
    if desktop.host_id is None and desktop.volume_id is None:
        return
    for name, how in NOT_BY_PATCH.items():
        if name in values and values[name] != getattr(desktop, name):
            raise Conflict(f"{name} of desktop {desktop.name} cannot be changed by PATCH: {how}")


def request_hardware_change(session: Session, desktop: Desktop, changed: Sequence[str], *, actor: str) -> Job | None:
    """After a PATCH: new CPUs, memory or monitors of a desktop with a domain reach it through the job
    desktops.redefine (live where libvirt can, else at the next boot; its result says which per field). None when
    no such field changed or the desktop has no domain."""
    fields = [name for name in HARDWARE if name in changed]
    if not fields or desktop.host_id is None or desktop.volume_id is None:
        return None
    return enqueue(session, "desktops.redefine", params={"desktop_id": desktop.id, "fields": fields},
                   created_by=actor, target_kind="desktop", target_id=desktop.id,
                   description=f"apply the new {', '.join(fields)} of desktop {desktop.name} to its domain")


def request_removal(session: Session, desktop_id: str, *, force: bool, actor: str) -> Job:
    """DELETE /desktops/{id}: the job desktops.deprovision (domain stopped and undefined, disk deleted, then the
    rows; the desktop stays, DELETING, until its host has confirmed). A running desktop is refused unless `force`
    (then it is powered off first), as oVirt refuses to remove a VM that is not down. A desktop already DELETING
    (its last job failed, e.g. its host did not answer) gets its running job, or a new one."""
    desktop = get_desktop(session, desktop_id)
    if desktop.task_state == TaskState.DELETING:
        running = session.scalar(select(Job).where(Job.kind == "desktops.deprovision", Job.target_id == desktop_id,
                                                   Job.state.in_((JobState.PENDING, JobState.RUNNING))).limit(1))
        return running or enqueue(session, "desktops.deprovision", params={"desktop_id": desktop_id},
                                  created_by=actor, target_kind="desktop", target_id=desktop_id,
                                  description=f"remove desktop {desktop.name} (again)")
    if not force and desktop.host_id is not None and desktop.power_state != PowerState.DOWN:
        raise Conflict(f"desktop {desktop.name} is {desktop.power_state.value}: stop it first, or delete it with "
                       "?force=true to power it off and remove it")
    return request_disk_action(session, desktop_id, "deprovision", actor=actor)


# The disk actions: the task_state a desktop holds meanwhile, what the refusal says, the job that does the work.
DISK_ACTIONS = {"reset": (TaskState.REIMAGING, "reset", "desktops.reset", "reset desktop"),
                "deprovision": (TaskState.DELETING, "remove it", "desktops.deprovision", "remove desktop")}


def claim_for_disk_action(session: Session, desktop_id: str, action: str) -> Desktop:
    """Mark the desktop for a reset or a removal (compare-and-swap on task_state). A desktop assigned to a user
    is refused (Conflict: unassign it first), a busy one too (DesktopBusy); NotFound for an unknown id."""
    task, refusal, _kind, _what = DISK_ACTIONS[action]
    return power.claim(session, desktop_id, task, refusal, unassigned_only=True)


def request_disk_action(session: Session, desktop_id: str, action: str, *, actor: str) -> Job:
    """Claim the desktop for `action` ("reset": a fresh overlay on its template; "deprovision": gone
    everywhere) and enqueue the job that does it (sent when the caller's transaction commits)."""
    desktop = claim_for_disk_action(session, desktop_id, action)
    _task, _refusal, kind, what = DISK_ACTIONS[action]
    return enqueue(session, kind, params={"desktop_id": desktop_id}, created_by=actor, target_kind="desktop",
                   target_id=desktop_id, description=f"{what} {desktop.name}")


def attach_user(session: Session, desktop_id: str, user_id: str, *, actor: str) -> list[str]:
    """Attach a desktop outside any pool to a user (one user: dedicated; several: shared). Returns the ids of
    every user attached now. Invalid for an unknown user, Conflict for a pool desktop or a repeat."""
    desktop = get_desktop(session, desktop_id)
    user = session.get(User, user_id)
    if user is None:
        raise Invalid(f"user_id: user {user_id} does not exist")
    if desktop.pool_id is not None:
        raise Conflict(f"desktop {desktop.name} belongs to a pool; assign pool desktops through the pool")
    if session.scalar(select(Assignment.id).where(Assignment.desktop_id == desktop_id,
                                                  Assignment.user_id == user.id)):
        raise Conflict(f"{user.username} is already attached to desktop {desktop.name}")
    session.add(Assignment(desktop_id=desktop_id, user_id=user.id, kind="dedicated"))
    emit(session, "desktop.user_attached", f"{actor} attached desktop {desktop.name} to {user.username}@"
         f"{user.domain}", actor=actor, user_id=user.id, desktop_id=desktop_id)
    users = list(session.scalars(select(Assignment.user_id).where(Assignment.desktop_id == desktop_id)))
    return sorted(set(users) | {user.id})


def attachments(desktop_id: str) -> Select:
    """SELECT of the desktop's attachments to users (dedicated, shared, or from its pool), oldest first as the
    caller orders them (GET /desktops/{id}/users and the desktop's page)."""
    return select(Assignment).where(Assignment.desktop_id == desktop_id)


def detach_user(session: Session, desktop_id: str, user_id: str, *, actor: str) -> None:
    """Detach a user from a dedicated or shared desktop (NotFound when they were not attached)."""
    row = session.scalar(select(Assignment).where(Assignment.desktop_id == desktop_id, Assignment.user_id == user_id))
    if row is None:
        raise NotFound(kind="desktop attachment", id=f"{desktop_id}/{user_id}")
    session.delete(row)
    emit(session, "desktop.user_detached", f"{actor} detached user {user_id} from desktop {desktop_id}",
         actor=actor, user_id=user_id, desktop_id=desktop_id)


def pool_or_404(session: Session, pool_ref: str) -> Pool:
    """A pool by id or by name."""
    pool = session.get(Pool, pool_ref) or session.scalar(select(Pool).where(Pool.name == pool_ref))
    if pool is None:
        raise NotFound(kind="pool", id=pool_ref)
    return pool
