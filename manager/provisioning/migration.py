"""Live migration of a running desktop to another host, as a job.

    request  checks (running, target up and not the source) and claims task_state MIGRATING (compare-and-swap),
             then enqueues desktops.migrate with the target host chosen (given, or the placement policy's best)
    job      asks the source node agent to migrate the domain live to the target's libvirt (shared storage),
             then records the target as the desktop's host and clears task_state

The job is idempotent: a re-run after a crash first asks the target whether the domain is already there. A failed
migration leaves the desktop where libvirt says it is (source, or target if the move completed after all).
"""
from __future__ import annotations

import logging
from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from core.enums import HostStatus, JobState, PowerState, Severity, TaskState
from core.errors import Conflict, DomainNotFound, NoHostAvailable, NotFound, VdiError
from event_manager.service import emit
from manager import db
from manager.jobs import JobContext, OnCrash, enqueue, task
from manager.models import Desktop, Host, Job
from manager.provisioning import nodes, placement, power
from manager.provisioning.service import candidate_hosts

log = logging.getLogger(__name__)


def _check_target(desktop: Desktop, host: Host) -> None:
    if host.id == desktop.host_id:
        raise Conflict(f"desktop {desktop.name} already runs on host {host.name}; choose another host")
    if host.status == HostStatus.MAINTENANCE:
        raise Conflict(f"host {host.name} is in maintenance: it takes no desktops")
    if host.status != HostStatus.UP:
        raise Conflict(f"host {host.name} is {host.status.value}: only a host that is up takes a desktop")
    if not host.agent_url or not host.libvirt_uri:
        raise Conflict(f"host {host.name} has no node agent URL or libvirt URI configured: it cannot take a "
                       "migrating desktop")


def choose_target(session: Session, desktop: Desktop, host_id: str | None, policy: str = "spread") -> Host:
    """The host the desktop goes to: `host_id` when given (NotFound, Conflict when it cannot take it), otherwise
    the placement policy's best host of the source's cluster other than the source (NoHostAvailable)."""
    if host_id is not None:
        host = session.get(Host, host_id)
        if host is None:
            raise NotFound(kind="host", id=host_id)
        _check_target(desktop, host)
        return host
    source = session.get(Host, desktop.host_id) if desktop.host_id else None
    hosts = [h for h in candidate_hosts(session, source.cluster_id if source else None) if h.host_id != desktop.host_id
             and session.get(Host, h.host_id).libvirt_uri]
    best = placement.get_policy(policy)(hosts, desktop.memory_mib)
    if best is None:
        raise NoHostAvailable(what=f"desktop {desktop.name} ({desktop.memory_mib} MiB)",
                              reason="no other host that is up has the memory free" if hosts else
                              "there is no other host that is up with a node agent and a libvirt URI")
    return session.get(Host, best.host_id)


def request_migration(session: Session, desktop_id: str, *, host_id: str | None = None, policy: str = "spread",
                      actor: str) -> Job:
    """Claim the running desktop for a live migration and enqueue the job (sent when the caller commits).
    NotFound (desktop, host), Conflict (not running, target in maintenance/down/the source), NoHostAvailable,
    DesktopBusy (another action holds it)."""
    desktop = power.claim(session, desktop_id, TaskState.MIGRATING, "migrate it")
    if desktop.power_state != PowerState.UP or desktop.host_id is None:
        raise Conflict(f"desktop {desktop.name} is {desktop.power_state.value}, not running: only a running "
                       "desktop migrates live")
    target = choose_target(session, desktop, host_id, policy)
    return enqueue(session, "desktops.migrate", params={"desktop_id": desktop_id, "host_id": target.id},
                   created_by=actor, target_kind="desktop", target_id=desktop_id,
                   description=f"migrate desktop {desktop.name} to {target.name}")


def _where_is(target: nodes.NodeTarget, desktop_id: str) -> bool:
    """Whether the node has the domain (a node that cannot answer counts as not)."""
    try:
        nodes.domain(target, desktop_id)
        return True
    except DomainNotFound:
        return False
    except VdiError:
        return False


def _settle(desktop_id: str, host_id: str | None) -> None:
    values: dict[str, Any] = {"task_state": None}
    if host_id is not None:
        values["host_id"] = host_id
    with db.session_scope() as session:
        session.execute(update(Desktop).where(Desktop.id == desktop_id, Desktop.task_state == TaskState.MIGRATING)
                        .values(**values).execution_options(synchronize_session=False))


def _source_target(session: Session, desktop: Desktop) -> nodes.NodeTarget:
    """The node the desktop runs on. Unlike a start, a host in maintenance is fine: that is what draining it
    needs; a host that is down, non-responsive or in error cannot migrate anything (Unavailable)."""
    host = session.get(Host, desktop.host_id) if desktop.host_id else None
    if host is not None and host.status == HostStatus.MAINTENANCE:
        return nodes.target_of_host(host)
    return nodes.target_of_desktop(session, desktop)


def migrate_now(desktop_id: str, host_id: str, *, job_id: str | None) -> dict[str, Any]:
    """Move the desktop claimed MIGRATING live to `host_id`; its host becomes the target, task_state clears.
    Raises the node's error when the move failed (the desktop stays where libvirt says it is)."""
    with db.session_scope() as session:
        desktop = session.get(Desktop, desktop_id)
        if desktop is None or desktop.task_state != TaskState.MIGRATING:
            return {"skipped": "the desktop is not waiting for a migration"}
        name = desktop.name
        dest = session.get(Host, host_id)
        try:
            if dest is None:
                raise NotFound(kind="host", id=host_id)
            source = _source_target(session, desktop)
            dest_target = nodes.target_of_host(dest)
        except VdiError:
            power.settle(session, desktop_id, TaskState.MIGRATING, None)
            raise
        dest_uri, dest_name = dest.libvirt_uri, dest.name
        migrate_uri = f"tcp://{dest.address}" if dest.address else None
    if _where_is(dest_target, desktop_id):  # a re-run after the move completed
        _settle(desktop_id, host_id)
        return {"migrated": True, "host_id": host_id, "resumed": True}
    try:
        nodes.migrate(source, desktop_id, dest_uri, migrate_uri)
    except VdiError as exc:
        moved = _where_is(dest_target, desktop_id)
        _settle(desktop_id, host_id if moved else None)
        with db.session_scope() as session:
            emit(session, "desktop.migrate_failed", f"migrating desktop {name} from {source.host_name} to "
                 f"{dest_name} failed: {exc.message}", severity=Severity.ERROR, desktop_id=desktop_id,
                 host_id=source.host_id, job_id=job_id)
        if not moved:
            raise
    _settle(desktop_id, host_id)
    with db.session_scope() as session:
        emit(session, "desktop.migrated", f"desktop {name} moved live from {source.host_name} to {dest_name}",
             desktop_id=desktop_id, host_id=host_id, job_id=job_id)
    return {"migrated": True, "host_id": host_id, "from_host_id": source.host_id}


@task("desktops.migrate", on_crash=OnCrash.RESUME)
def migrate_desktop(ctx: JobContext, desktop_id: str, host_id: str) -> dict[str, Any]:
    return migrate_now(desktop_id, host_id, job_id=ctx.job_id)


def _held_by_a_migrate_job(session: Session, desktop_id: str) -> bool:
    return session.scalar(select(func.count()).select_from(Job).where(
        Job.kind == "desktops.migrate", Job.target_id == desktop_id,
        Job.state.in_([JobState.PENDING, JobState.RUNNING]))) > 0


def _settle_interrupted_move(desktop_id: str, source_host_id: str) -> str | None:
    """A desktop of a draining host still MIGRATING with no desktops.migrate job holding it: the drain's own move,
    cut short when its runner died. Ask the other hosts where the domain is now: settle the desktop there (its host
    id is returned) or, when no other host has it, on the source (task_state cleared, None returned)."""
    with db.session_scope() as session:
        others = [(h.id, nodes.target_of_host(h)) for h in session.scalars(
            select(Host).where(Host.id != source_host_id, Host.status.in_([HostStatus.UP, HostStatus.MAINTENANCE])))]
    for host_id, target in others:
        if _where_is(target, desktop_id):
            _settle(desktop_id, host_id)
            return host_id
    _settle(desktop_id, None)
    return None


# ---- draining a host in maintenance ----------------------------------------------------------------------
def request_drain(session: Session, host: Host, *, actor: str) -> Job:
    """Enqueue the job that moves the running desktops off a host in maintenance (sent when the caller commits)."""
    return enqueue(session, "hosts.drain", params={"host_id": host.id}, created_by=actor, target_kind="host",
                   target_id=host.id, description=f"drain host {host.name} by live migration")


@task("hosts.drain", on_crash=OnCrash.RESUME)
def drain_host(ctx: JobContext, host_id: str, policy: str = "spread") -> dict[str, Any]:
    """Migrate every running desktop of a host in maintenance to the placement policy's best other host, one at a
    time (cancellable between desktops). A desktop that cannot go is listed with the reason while the others go
    on; the job stops when the host leaves maintenance."""
    with db.session_scope() as session:
        running = session.execute(select(Desktop.id, Desktop.name).where(
            Desktop.host_id == host_id, Desktop.power_state == PowerState.UP).order_by(Desktop.name)).all()
    migrated: list[str] = []
    failed: dict[str, str] = {}
    ctx.progress(0, len(running), force=True)
    for done, (desktop_id, name) in enumerate(running, start=1):
        ctx.check_cancelled()
        try:
            with db.session_scope() as session:
                host = session.get(Host, host_id)
                if host is None or host.status != HostStatus.MAINTENANCE:
                    return {"migrated": migrated, "failed": failed, "stopped": "the host left maintenance"}
                row = session.get(Desktop, desktop_id)
                interrupted = row is not None and row.task_state == TaskState.MIGRATING and \
                    not _held_by_a_migrate_job(session, desktop_id)
            # A resumed drain finds the desktop its dead runner was moving: where libvirt has it decides.
            if interrupted and _settle_interrupted_move(desktop_id, host_id) is not None:
                migrated.append(name)
                ctx.completed.update(migrated=list(migrated), failed=dict(failed))
                ctx.progress(done, len(running))
                continue
            with db.session_scope() as session:
                desktop = power.claim(session, desktop_id, TaskState.MIGRATING, "migrate it")
                if desktop.host_id != host_id or desktop.power_state != PowerState.UP:
                    raise Conflict(f"desktop {name} no longer runs on this host")
                target_id = choose_target(session, desktop, None, policy).id
            migrate_now(desktop_id, target_id, job_id=ctx.job_id)
            migrated.append(name)
        except VdiError as exc:
            failed[name] = exc.message
        ctx.completed.update(migrated=list(migrated), failed=dict(failed))
        ctx.progress(done, len(running))
    return {"migrated": migrated, "failed": failed}
