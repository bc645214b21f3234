"""Jobs of provisioning and pool life cycle. Thin and idempotent: each checks the world before acting."""
from __future__ import annotations

import datetime as dt
import logging
from typing import Any

from sqlalchemy import select, update

from broker import lifecycle, sessions
from broker import service as broker_service
from core.enums import JobState, TaskState
from core.errors import DesktopBusy, VdiError
from event_manager.service import emit
from manager import db
from manager.jobs import JobCancelled, JobContext, OnCrash, enqueue, task
from manager.models import Desktop, Job, Pool, utcnow
from manager.provisioning import names, nodes, service
from manager.provisioning.power import PowerAction, run_power_action

log = logging.getLogger(__name__)
BATCH = 50


def _pool_requests(session, pool: Pool, count: int) -> list[service.DesktopRequest]:
    pattern = pool.name_pattern or f"{pool.name}-###"
    prefix = names.parse_pattern(pattern)[0]
    taken = session.scalars(select(Desktop.name).where(Desktop.name.like(f"{prefix}%")))
    return [service.DesktopRequest(name=name, template_id=pool.template_id,
                                   template_version_id=pool.template_version_id, cpus=pool.cpus,
                                   memory_mib=pool.memory_mib, pool_id=pool.id, cluster_id=pool.cluster_id)
            for name in names.next_names(pattern, taken, count)]


def grow_pool(ctx: JobContext | None, pool_id: str, count: int, policy: str = "spread") -> dict[str, Any]:
    """Create `count` desktops for the pool from its name pattern, in batches, reporting progress after each
    (a cancelled job stops between batches; what was made stays, consistent)."""
    created, failed = 0, {}
    if ctx is not None:
        ctx.progress(0, count, force=True)
    while created + len(failed) < count:
        todo = min(BATCH, count - created - len(failed))
        with db.session_scope() as session:
            pool = session.get(Pool, pool_id)
            if pool is None:
                raise VdiError(f"pool {pool_id} no longer exists")
            planned = service.plan_desktops(session, _pool_requests(session, pool, todo), policy=policy)
        outcome = service.materialise(planned, job_id=ctx.job_id if ctx else None)
        with db.session_scope() as session:
            service.finish(session, planned, outcome)
        created += len(outcome.created)
        failed.update(outcome.failed)
        if not outcome.created:
            first = next(iter(outcome.failed.items()))
            raise VdiError(f"no desktop of this batch could be created ({len(outcome.failed)} failed); "
                           f"first: {first[0]}: {first[1]}")
        if ctx is not None:
            ctx.completed.update(created=created, failed=dict(failed))
            ctx.progress(created + len(failed), count)
            ctx.check_cancelled()
    return {"created": created, "failed": failed}


def settle_pool_job(session, params: dict[str, Any], *, reason: str, job_id: str) -> list[str]:
    """The recover hook of pools.provision and pools.resize, whose runner died: the pool's desktops it left half
    made (PROVISIONING) or marked for removal (DELETING) are handed to desktops.deprovision jobs, unless another
    job of the same pool is still pending or running (they may be its own)."""
    pool_id = params.get("pool_id")
    others = [j for j in session.scalars(select(Job).where(Job.kind.in_(("pools.provision", "pools.resize")),
                                                             Job.state.in_((JobState.PENDING, JobState.RUNNING)),
                                                             Job.id != job_id))
              if (j.params or {}).get("pool_id") == pool_id]
    if not pool_id or others:
        return []
    left = session.execute(select(Desktop.id, Desktop.name).where(
        Desktop.pool_id == pool_id, Desktop.task_state.in_((TaskState.PROVISIONING, TaskState.DELETING)))).all()
    cleaned = []
    for desktop_id, name in left:
        session.execute(update(Desktop).where(Desktop.id == desktop_id).values(task_state=TaskState.DELETING)
                        .execution_options(synchronize_session=False))
        enqueue(session, "desktops.deprovision", params={"desktop_id": desktop_id}, target_kind="desktop",
                target_id=desktop_id, description=f"remove desktop {name}, left unfinished by job {job_id}")
        cleaned.append(f"desktop {name}")
    return cleaned


@task("pools.provision", on_crash=OnCrash.FAIL, recover=settle_pool_job)
def provision_pool(ctx: JobContext, pool_id: str, count: int | None = None, policy: str = "spread") -> dict[str, Any]:
    """Grow the pool to its size (or by `count`)."""
    with db.session_scope() as session:
        pool = session.get(Pool, pool_id)
        if pool is None:
            return {"created": 0, "skipped": "pool gone"}
        plan = lifecycle.plan_resize(session, pool, pool.size)
        wanted = count if count is not None else plan.add
        name = pool.name
    result = grow_pool(ctx, pool_id, wanted, policy) if wanted > 0 else {"created": 0, "failed": {}}
    with db.session_scope() as session:
        emit(session, "pool.provisioned", f"pool {name}: {result['created']} desktop(s) created"
             + (f", {len(result['failed'])} failed" if result["failed"] else ""), pool_id=pool_id, job_id=ctx.job_id)
    return result


@task("pools.resize", on_crash=OnCrash.FAIL, recover=settle_pool_job)
def resize_pool(ctx: JobContext, pool_id: str, policy: str = "spread") -> dict[str, Any]:
    """Bring the pool to its size: grow from the name pattern, or remove free desktops only (never assigned)."""
    with db.session_scope() as session:
        pool = session.get(Pool, pool_id)
        if pool is None:
            return {"skipped": "pool gone"}
        plan = lifecycle.plan_resize(session, pool, pool.size)
        marked = []
        for desktop_id in plan.remove:
            # CAS: a desktop assigned or busy since the plan was made is left alone.
            if session.execute(update(Desktop).where(Desktop.id == desktop_id, Desktop.task_state.is_(None),
                                                     Desktop.assigned_user_id.is_(None))
                               .values(task_state=TaskState.DELETING)
                               .execution_options(synchronize_session=False)).rowcount:
                marked.append(desktop_id)
    result: dict[str, Any] = {"kept_busy": plan.kept_busy}
    removed = 0
    try:
        if plan.add:
            result.update(grow_pool(ctx, pool_id, plan.add, policy))
        for i, desktop_id in enumerate(marked):
            ctx.check_cancelled()
            removed += bool(deprovision_now(desktop_id, job_id=ctx.job_id))
            ctx.completed.update(result, removed=removed)
            ctx.progress(i + 1, len(marked))
    except JobCancelled:
        with db.session_scope() as session:  # the desktops not removed yet stay in the pool, as they were
            session.execute(update(Desktop).where(Desktop.id.in_(marked), Desktop.task_state == TaskState.DELETING)
                            .values(task_state=None).execution_options(synchronize_session=False))
        raise
    result["removed"] = removed
    return result


def deprovision_now(desktop_id: str, *, job_id: str | None) -> bool:
    """Remove a desktop marked DELETING: plug pulled, domain undefined, overlay and rows gone. False when it is
    not (any more) marked for removal."""
    with db.session_scope() as session:
        work = service.disk_work(session, desktop_id, TaskState.DELETING)
    if work is None:
        return False
    service.power_off_quietly(work)
    service.remove_everywhere(work)
    with db.session_scope() as session:
        if service.finish_removal(session, work):
            emit(session, "desktop.deprovisioned", f"desktop {work.name} was removed (domain and disk)",
                 pool_id=work.pool_id, job_id=job_id)
            return True
    return False


@task("desktops.deprovision", on_crash=OnCrash.RESUME)
def deprovision_desktop(ctx: JobContext, desktop_id: str) -> dict[str, Any]:
    return {"removed": deprovision_now(desktop_id, job_id=ctx.job_id)}


@task("desktops.provision", on_crash=OnCrash.RESUME)
def provision_desktop(ctx: JobContext, desktop_id: str, actor: str = "system") -> dict[str, Any]:
    """Make the overlay and define the domain of a desktop POST /desktops placed (task_state PROVISIONING).
    Idempotent: run again after a crash, it keeps what exists and does the rest. A failure removes the desktop's
    rows and overlay, and fails the job naming why."""
    with db.session_scope() as session:
        item = service.planned_of(session, desktop_id)
    if item is None:
        return {"skipped": "the desktop is not waiting to be created"}
    outcome = service.materialise([item], job_id=ctx.job_id)
    with db.session_scope() as session:
        service.finish(session, [item], outcome)
        if outcome.created:
            service.provisioned(session, item, actor=actor, job_id=ctx.job_id)
    if not outcome.created:
        raise VdiError(f"desktop {item.name} could not be created: {outcome.failed.get(item.name, '?')}")
    return {"created": item.desktop_id, "host_id": item.target.host_id}


def reset_now(desktop_id: str, *, job_id: str | None) -> dict[str, Any]:
    """Reset a desktop marked REIMAGING: power off, a fresh overlay on its template (version), idle again; then
    top up its pool's prestarted desktops."""
    with db.session_scope() as session:
        work = service.disk_work(session, desktop_id, TaskState.REIMAGING)
    if work is None:
        return {"skipped": "the desktop is not waiting for a reset"}
    service.power_off_quietly(work)
    service.reset_disk(work, job_id=job_id)
    with db.session_scope() as session:
        if service.finish_reset(session, work):
            emit(session, "desktop.reset", f"desktop {work.name} was reset to its template", desktop_id=desktop_id,
                 pool_id=work.pool_id, job_id=job_id)
    started = prestart(work.pool_id) if work.pool_id else 0
    return {"reset": True, "prestarted": started}


@task("desktops.reset", on_crash=OnCrash.RESUME)
def reset_desktop(ctx: JobContext, desktop_id: str) -> dict[str, Any]:
    return reset_now(desktop_id, job_id=ctx.job_id)


@task("desktops.cut_consoles", on_crash=OnCrash.RESUME)  # a new unknown password again: harmless twice
def cut_consoles(ctx: JobContext, desktop_id: str) -> dict[str, Any]:
    """Disconnect every console client of a desktop its user may no longer use but keeps running (revocation of
    a desktop not released): the old tickets stop working too. A desktop gone, unplaced or stopped has none."""
    with db.session_scope() as session:
        desktop = session.get(Desktop, desktop_id)
        if desktop is None or desktop.host_id is None:
            return {"skipped": "the desktop is gone or not placed"}
        target = nodes.target_of_desktop(session, desktop)
    return {"cut": nodes.cut_consoles(target, desktop_id)}


def prestart(pool_id: str, now: dt.datetime | None = None) -> int:
    """Start free desktops until the pool has `prestarted` of them running. Returns how many were started."""
    with db.session_scope() as session:
        pool = session.get(Pool, pool_id)
        ids = lifecycle.desktops_to_prestart(session, pool, now) if pool else []
    started = 0
    for desktop_id in ids:
        try:
            run_power_action(desktop_id, PowerAction.START, actor="system")
            started += 1
        except DesktopBusy:
            continue
        except VdiError as exc:
            log.warning("prestart of desktop %s failed: %s", desktop_id, exc.message)
    return started


def maintain_pools(pool_id: str | None = None, now: dt.datetime | None = None) -> dict[str, Any]:
    """Open and close time-based pools on their schedules, expire time-based leases (reclaim jobs are enqueued),
    apply the pools' disconnect policies (reset jobs are enqueued) and top up prestarted desktops. `now` is the
    clock (tests move it; the loop passes none)."""
    now = now or utcnow()
    with db.session_scope() as session:
        scheduled = lifecycle.apply_schedules(session, now)
    with db.session_scope() as session:
        reclaimed = lifecycle.expire_leases(session, now)
        broker_service.enqueue_reclaims(session, reclaimed, why="lease expired")
        sessions.expire_pending(session, now)
        away = lifecycle.act_on_disconnected(session, now)
        for desktop_id in away:
            enqueue(session, "desktops.reset", params={"desktop_id": desktop_id}, target_kind="desktop",
                    target_id=desktop_id, description="reset a desktop its user left disconnected (pool policy)")
        stmt = select(Pool.id).where(Pool.prestarted > 0)
        if pool_id:
            stmt = select(Pool.id).where(Pool.id == pool_id)
        pool_ids = list(session.scalars(stmt))
    started = sum(prestart(pid, now) for pid in pool_ids)
    return {"scheduled": len(scheduled), "reclaimed": len(reclaimed), "disconnect_policy": len(away),
            "prestarted": started}


@task("pools.maintain", on_crash=OnCrash.RESUME)
def maintain(ctx: JobContext, pool_id: str | None = None) -> dict[str, Any]:
    return maintain_pools(pool_id)
