"""The image manager's jobs. Each is thin: read a plan from the rows, do the file work outside any
transaction (passing the job id down, so a re-run finishes a crashed run), record the result in one
transaction. A failure undoes the rows through the same `abandon` functions reconcile uses after a crash.

Kinds: image.import, image.new_version, image.export (undone after a crash) and the desktop disk
jobs image.snapshot, image.revert, image.preview, image.undo_preview, image.commit_preview,
image.delete_snapshot, image.reimage, image.check and image.reconcile (resumed after a crash: their file steps
are idempotent).
"""
from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from sqlalchemy import select

from core.enums import Severity, TaskState
from core.errors import VdiError
from event_manager.service import emit
from image_manager import chain, fileops, qemu_img, reconcile, service
from manager import db
from manager.jobs import JobContext, OnCrash, task
from manager.models import Desktop, Job, Volume

log = logging.getLogger(__name__)

DESKTOP_DISK_KINDS = ("image.snapshot", "image.revert", "image.preview", "image.undo_preview",
                      "image.commit_preview", "image.delete_snapshot", "image.reimage")


def _actor(job_id: str) -> str:
    with db.session_scope() as session:
        job = session.get(Job, job_id)
        return job.created_by if job is not None else "system"


def _percent_progress(ctx: JobContext):
    return lambda percent: ctx.progress(int(percent * 10), 1000)


# ---- templates ----------------------------------------------------------------------------------------
def _build_version(ctx: JobContext, params: dict[str, Any], build) -> dict[str, Any]:
    actor = _actor(ctx.job_id)
    with db.session_scope() as session:
        volume = session.get(Volume, params["volume_id"])
        if volume is None:
            return {"skipped": "the version's volume row is gone"}
        dest = volume.path
    ctx.progress(0, 1000, force=True)
    try:
        build(Path(dest))
        virtual, actual = service._usage(dest)
    except BaseException as exc:
        reason = exc.message if isinstance(exc, VdiError) else f"{type(exc).__name__}: {exc}"
        with db.session_scope() as session:
            service.abandon_version_build(session, params, reason=reason, job_id=ctx.job_id, actor=actor)
        raise
    with db.session_scope() as session:
        service.finish_import(session, params, virtual_size=virtual, actual_size=actual, job_id=ctx.job_id,
                              actor=actor)
        if params.get("desktop_id"):
            service.release_desktop(session, params["desktop_id"], TaskState.SNAPSHOTTING)
    if params.get("delete_source") and params.get("source"):
        fileops.remove(params["source"])
    return {"path": dest, "virtual_size": virtual, "actual_size": actual}


@task("image.import", on_crash=OnCrash.FAIL, recover=reconcile.abandon_build)
def import_image(ctx: JobContext, *, template_id: str, version_id: str, volume_id: str, source: str,
                 source_format: str | None = None, created_version: bool = False,
                 delete_source: bool = False) -> dict[str, Any]:
    """Convert the source file into the template version's qcow2 (temporary name, checked, then published)."""
    params = dict(template_id=template_id, version_id=version_id, volume_id=volume_id, source=source,
                  source_format=source_format, created_version=created_version, delete_source=delete_source)

    def build(dest: Path) -> None:
        service.check_import_source(source, source_format)  # again: the file may have changed since the request
        with fileops.atomic_output(dest, job_id=ctx.job_id, replace=False) as tmp:
            qemu_img.convert(source, tmp, src_fmt=source_format, out_fmt="qcow2", progress=_percent_progress(ctx))
            result = qemu_img.check(tmp)
            if result.status in ("corrupt", "error"):
                from image_manager.errors import ImageCorrupt

                raise ImageCorrupt(path=str(dest), reason=f"the imported copy failed qemu-img check: {result}")

    return _build_version(ctx, params, build)


@task("image.new_version", on_crash=OnCrash.FAIL, recover=reconcile.abandon_build)
def new_version(ctx: JobContext, *, template_id: str, version_id: str, volume_id: str, source: str,
                created_version: bool = True, desktop_id: str | None = None) -> dict[str, Any]:
    """Flatten a desktop's chain into a new standalone template version."""
    params = dict(template_id=template_id, version_id=version_id, volume_id=volume_id, source=source,
                  created_version=created_version, desktop_id=desktop_id)
    return _build_version(ctx, params, lambda dest: chain.flatten(source, dest, progress=_percent_progress(ctx),
                                                                   job_id=ctx.job_id))


# ---- desktop disks --------------------------------------------------------------------------------------
def _run_disk_job(ctx: JobContext, kind: str, params: dict[str, Any]) -> dict[str, Any]:
    actor = _actor(ctx.job_id)
    expected = TaskState.REIMAGING if kind == "image.reimage" else TaskState.SNAPSHOTTING
    with db.session_scope() as session:
        desktop = session.get(Desktop, params["desktop_id"])
        if desktop is None or desktop.task_state != expected:
            # Done already (a resumed job whose result was committed) or the desktop is gone.
            return {"skipped": "the desktop is no longer waiting for this job"}
        plan = service.plan_reimage(session, params) if kind == "image.reimage" \
            else service.plan_disk_job(session, kind, params)
        if plan is None:
            service.release_desktop(session, params["desktop_id"], expected)
            return {"skipped": "nothing to do"}
    try:
        service.power_off_for_disk_work(plan)
        service.do_disk_work(kind, plan, job_id=ctx.job_id, progress=_percent_progress(ctx))
    except BaseException as exc:
        reason = exc.message if isinstance(exc, VdiError) else f"{type(exc).__name__}: {exc}"
        with db.session_scope() as session:
            if getattr(plan, "live", False):
                service.record_failed_live_merge(session, plan, exc)
            service.release_desktop(session, params["desktop_id"], expected)
            emit(session, f"desktop.{kind.removeprefix('image.')}_failed",
                 f"{kind.removeprefix('image.').replace('_', ' ')} of desktop {plan.desktop_name} failed: {reason}",
                 severity=Severity.ERROR, actor=actor, desktop_id=plan.desktop_id, job_id=ctx.job_id)
        raise
    with db.session_scope() as session:
        service.finish_disk_job(session, kind, plan, params, job_id=ctx.job_id, actor=actor)
    return {"desktop_id": plan.desktop_id, "active_path": plan.active_path}


@task("image.snapshot", on_crash=OnCrash.RESUME)
def take_snapshot(ctx: JobContext, *, desktop_id: str, snapshot_id: str, active_path: str, frozen_id: str,
                  frozen_path: str, live: bool = False, volume_id: str | None = None) -> dict[str, Any]:
    """Offline: freeze the active file under a new name (files only). Live: the desktop's node snapshots the
    running domain into `active_path` (a new file), which becomes the active volume."""
    params = dict(desktop_id=desktop_id, snapshot_id=snapshot_id, active_path=active_path, frozen_id=frozen_id,
                  frozen_path=frozen_path)
    actor = _actor(ctx.job_id)
    with db.session_scope() as session:
        desktop = session.get(service.Desktop, desktop_id)
        if desktop is None or desktop.task_state != TaskState.SNAPSHOTTING:
            return {"skipped": "the desktop is no longer waiting for this job"}
    if live:
        return _take_live_snapshot(ctx, dict(params, live=True, volume_id=volume_id), actor)
    try:
        service.freeze_active(active_path, frozen_path, job_id=ctx.job_id)
    except BaseException as exc:
        reason = exc.message if isinstance(exc, VdiError) else f"{type(exc).__name__}: {exc}"
        with db.session_scope() as session:
            service.abandon_snapshot(session, params, reason=reason, job_id=ctx.job_id, actor=actor)
        raise
    with db.session_scope() as session:
        service.finish_snapshot(session, params, job_id=ctx.job_id, actor=actor)
    return {"snapshot_id": snapshot_id, "path": frozen_path}


def _take_live_snapshot(ctx: JobContext, params: dict[str, Any], actor: str) -> dict[str, Any]:
    try:
        with db.session_scope() as session:
            target = service.live_snapshot_target(session, params)
        chain = service.take_live_snapshot(target, params)
    except BaseException as exc:
        reason = exc.message if isinstance(exc, VdiError) else f"{type(exc).__name__}: {exc}"
        with db.session_scope() as session:
            service.abandon_live_snapshot(session, params, reason=reason, job_id=ctx.job_id, actor=actor)
        raise
    with db.session_scope() as session:
        service.finish_live_snapshot(session, params, job_id=ctx.job_id, actor=actor)
    return {"snapshot_id": params["snapshot_id"], "path": params["frozen_path"], "active_path": params["active_path"],
            "chain": chain}


def _disk_task(kind: str):
    @task(kind, on_crash=OnCrash.RESUME)
    def run(ctx: JobContext, **params: Any) -> dict[str, Any]:
        return _run_disk_job(ctx, kind, params)

    run.__name__ = kind.replace(".", "_")
    return run


revert = _disk_task("image.revert")
preview = _disk_task("image.preview")
undo_preview = _disk_task("image.undo_preview")
commit_preview = _disk_task("image.commit_preview")
delete_snapshot = _disk_task("image.delete_snapshot")
reimage = _disk_task("image.reimage")


# ---- integrity and backup ------------------------------------------------------------------------------------
@task("image.check", on_crash=OnCrash.RESUME)
def check_images(ctx: JobContext, *, volume_ids: list[str]) -> dict[str, Any]:
    """qemu-img check each volume (read-only; works on a running desktop's files too)."""
    actor = _actor(ctx.job_id)
    with db.session_scope() as session:
        rows = [(v.id, v.path, v.desktop_id) for v in session.scalars(select(Volume).where(Volume.id.in_(volume_ids)))]
    results: dict[str, Any] = {}
    ctx.progress(0, len(rows), force=True)
    for done, (volume_id, path, desktop_id) in enumerate(rows, 1):
        results[path] = reconcile.check_volume(volume_id, path, desktop_id, actor=actor, job_id=ctx.job_id)
        ctx.completed["results"] = dict(results)
        ctx.progress(done, len(rows))
        if done < len(rows):
            ctx.check_cancelled()
    return {"results": results, "ok": all(r["status"] == "ok" for r in results.values())}


EXPORT_MODE = 0o640  # an export holds a whole disk: never world-readable


@task("image.export", on_crash=OnCrash.FAIL, recover=reconcile.abandon_export)
def export_image(ctx: JobContext, *, volume_id: str, source: str, dest: str, format: str = "qcow2",
                 compress: bool = False, desktop_id: str | None = None) -> dict[str, Any]:
    """Copy what the volume reads into one standalone file (temporary name, then published)."""
    actor = _actor(ctx.job_id)
    ctx.progress(0, 1000, force=True)
    try:
        chain.flatten(source, dest, out_fmt=format, compress=compress, progress=_percent_progress(ctx),
                      job_id=ctx.job_id, mode=EXPORT_MODE)
    except BaseException as exc:
        reason = exc.message if isinstance(exc, VdiError) else f"{type(exc).__name__}: {exc}"
        with db.session_scope() as session:
            reconcile.abandon_export(session, {"dest": dest, "desktop_id": desktop_id}, reason=reason,
                                     job_id=ctx.job_id, actor=actor)
        raise
    size = os.path.getsize(dest)
    with db.session_scope() as session:
        if desktop_id:
            service.release_desktop(session, desktop_id, TaskState.SNAPSHOTTING)
        emit(session, "image.exported", f"{actor} exported {source} to {dest} ({size // (1 << 20)} MiB)",
             actor=actor, desktop_id=desktop_id, job_id=ctx.job_id)
    return {"path": dest, "bytes": size}


@task("image.reconcile", on_crash=OnCrash.RESUME)
def reconcile_images(ctx: JobContext, *, dead_after_seconds: float | None = None,
                     min_age_seconds: float = reconcile.MIN_ORPHAN_AGE_SECONDS) -> dict[str, Any]:
    """Find and clean what crashed jobs left (see image_manager.reconcile)."""
    report = reconcile.reconcile(dead_after_seconds=dead_after_seconds, min_age_seconds=min_age_seconds,
                                 current_job_id=ctx.job_id, actor=_actor(ctx.job_id))
    return report.to_dict()
