"""Reconcile image files and rows after crashes: runnable as a job (image.reconcile) and at start-up.

What a manager or worker killed mid-job can leave, and what this pass does about it:
- an image job still RUNNING whose runner is gone (its lease not renewed for `dead_after_seconds`; the job
  recovery of manager/jobs.py, by the kind's OnCrash): desktop disk jobs, checks and reconciles are RESUMED (set
  back to pending and sent again with the same id: their file steps finish the work); imports, new versions and
  exports are UNDONE (rows removed, desktop released, the job marked failed);
- `.tmp-<job>-…` files of jobs that are not running, and image files (*.qcow2) under templates/ and
  desktops/ that no row knows and no known image reads from: deleted;
- rows without a live job: volumes still "locked", snapshots still "locked", template versions' images of
  deleted templates, volumes of deleted desktops, templates left "locked", desktops left SNAPSHOTTING:
  removed or released;
- volumes whose file is gone: marked "illegal" (nothing can be rebuilt; reported);
- images touched by interrupted jobs, or whose header says dirty/corrupt: `qemu-img check`, results reported.
Every cleaned item is reported as an event (code image.reconcile.*), and the pass as one summary event.
"""
from __future__ import annotations

import logging
import os
import threading
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy import or_, select
from sqlalchemy.orm import Session

from core.enums import JobState, Severity, TaskState
from core.errors import VdiError
from event_manager.service import emit
from image_manager import fileops, qcow2, qemu_img, service
from image_manager.errors import ImageInvalid, ImageNotFound
from manager import db, jobs
from manager.provisioning import nodes
from manager.models import Desktop, Job, Snapshot, StorageDomain, Template, TemplateVersion, Volume

log = logging.getLogger(__name__)

MIN_ORPHAN_AGE_SECONDS = 3600.0  # files younger than this may belong to work not yet recorded
MAX_EVENTS_PER_KIND = 50
IMAGE_SUFFIXES = (fileops.IMAGE_SUFFIX,)
_PATH_PARAMS = ("source", "dest", "active_path", "frozen_path", "stash_path")
_VOLUME_PARAMS = ("volume_id", "frozen_id", "template_volume_id", "stash_id")


@dataclass
class ReconcileReport:
    resumed_jobs: list[str] = field(default_factory=list)
    failed_jobs: list[str] = field(default_factory=list)
    removed_files: list[str] = field(default_factory=list)
    removed_rows: list[str] = field(default_factory=list)
    released: list[str] = field(default_factory=list)
    illegal_volumes: list[str] = field(default_factory=list)
    kept: list[str] = field(default_factory=list)  # volumes no row needs that a defined domain uses
    kept_for_silent_hosts: list[str] = field(default_factory=list)  # hosts that did not answer: nothing deleted
    checks: dict[str, dict[str, Any]] = field(default_factory=dict)

    @property
    def changed(self) -> bool:
        return any((self.resumed_jobs, self.failed_jobs, self.removed_files, self.removed_rows, self.released,
                    self.illegal_volumes))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# ---- abandon functions (also used by the tasks on failure) -------------------------------------------------
def abandon_export(session: Session, params: dict[str, Any], *, reason: str, job_id: str | None,
                   actor: str = "system") -> list[str]:
    cleaned = []
    if params.get("dest") and job_id:
        tmp = fileops.tmp_path_for(params["dest"], job_id)
        if fileops.remove(tmp):
            cleaned.append(f"file {tmp}")
    if params.get("desktop_id"):
        service.release_desktop(session, params["desktop_id"], TaskState.SNAPSHOTTING)
    emit(session, "image.export_failed", f"export to {params.get('dest')} failed: {reason}",
         severity=Severity.WARNING, actor=actor, desktop_id=params.get("desktop_id"), job_id=job_id)
    return cleaned


def abandon_build(session: Session, params: dict[str, Any], *, reason: str, job_id: str) -> list[str]:
    """The recover hook of image.import and image.new_version (a dead job's rows and temporary file go)."""
    return service.abandon_version_build(session, params, reason=reason, job_id=job_id)


# ---- the pass -----------------------------------------------------------------------------------------------
def reconcile(*, dead_after_seconds: float | None = None, min_age_seconds: float = MIN_ORPHAN_AGE_SECONDS,
              current_job_id: str | None = None,
              actor: str = "system", always_report: bool = True) -> ReconcileReport:
    """One reconcile pass over every storage domain (opens its own short transactions).

    A RUNNING image job is dead when its lease was not renewed for `dead_after_seconds` (default: the job lease,
    VDI_JOB_LEASE_SECONDS), whichever manager or worker ran it. Files younger than `min_age_seconds` are left
    alone. Returns what was done; emits one event per item and
    a summary (the summary only when something changed, unless always_report)."""
    report = ReconcileReport()
    touched_volumes: set[str] = set()
    _settle_dead_jobs(report, touched_volumes, dead_after_seconds, current_job_id)
    in_use, silent = _disks_of_defined_domains(report)
    with db.session_scope() as session:
        _read_one_snapshot(session)
        active_jobs = list(session.scalars(select(Job).where(Job.state.in_((JobState.PENDING, JobState.RUNNING)))))
        active_ids = [j.id for j in active_jobs if j.id != current_job_id]
        busy_volumes, busy_paths, busy_desktops, busy_templates = _held_by(active_jobs, current_job_id)
        _clean_rows(session, report, busy_volumes, busy_desktops, busy_templates, in_use, keep_all=bool(silent))
    with db.session_scope() as session:
        roots = [Path(p) for p in session.scalars(select(StorageDomain.path))]
        volumes = list(session.execute(select(Volume.id, Volume.path, Volume.status, Volume.desktop_id)))
    known = _known_paths([p for _i, p, _s, _d in volumes] + busy_paths + sorted(in_use))
    _clean_files(report, roots, known, active_ids, min_age_seconds, keep_images=bool(silent))
    _mark_missing(report, volumes)
    _check_suspects(report, volumes, touched_volumes)
    if report.changed or always_report:
        with db.session_scope() as session:
            emit(session, "image.reconciled",
                 f"image reconcile: {len(report.resumed_jobs)} job(s) resumed, {len(report.failed_jobs)} undone, "
                 f"{len(report.removed_files)} file(s) and {len(report.removed_rows)} row(s) removed, "
                 f"{len(report.released)} released, {len(report.illegal_volumes)} missing image(s)",
                 severity=Severity.WARNING if report.changed else Severity.NORMAL, actor=actor,
                 job_id=current_job_id)
    return report


def _disks_of_defined_domains(report: ReconcileReport) -> tuple[set[str], list[str]]:
    """The files every domain defined on any host uses (asked of the hosts' node agents, whatever the database
    says: a domain may outlive its row), and the hosts that did not answer. Storage domains are reachable from
    every host, so while one host is silent no disk or image may be deleted (reported once)."""
    with db.session_scope() as session:
        targets = nodes.every_target(session)
    in_use, silent = nodes.disks_in_use(targets)
    if silent:
        with db.session_scope() as session:
            _event(session, report, "kept", f"image reconcile kept every disk and image: host(s) {', '.join(silent)} "
                   "did not say which disks their domains use")
    report.kept_for_silent_hosts = silent
    return in_use, silent


def _read_one_snapshot(session: Session) -> None:
    """Make every statement of `session`'s (not yet begun) transaction read the same snapshot.

    Rows are judged together (a template volume is unused when no version refers to it): under Postgres'
    READ COMMITTED each statement would see newer commits, so a volume and its version committed together
    between two statements looked like an orphan and its file was deleted. SQLite transactions already
    read one snapshot.
    """
    if db.is_postgres(session):
        session.connection(execution_options={"isolation_level": "REPEATABLE READ"})


def _settle_dead_jobs(report: ReconcileReport, touched: set[str], dead_after: float,
                      current_job_id: str | None) -> None:
    """The image jobs whose runner died (manager/jobs.py recovery, each kind as it registered: disk jobs resumed,
    builds and exports undone); the volumes they touched are checked afterwards."""
    recovery = jobs.recover_orphaned_jobs(dead_after=dead_after, kind_prefix="image.", exclude=current_job_id)
    report.resumed_jobs.extend(recovery.resumed)
    report.failed_jobs.extend(recovery.failed)
    with db.session_scope() as session:
        for job in session.scalars(select(Job).where(Job.id.in_(recovery.resumed + recovery.failed))):
            params = dict(job.params or {})
            for key in _VOLUME_PARAMS:
                if params.get(key):
                    touched.add(params[key])
            if params.get("desktop_id"):
                desktop = session.get(Desktop, params["desktop_id"])
                if desktop is not None and desktop.volume_id:
                    touched.add(desktop.volume_id)
            if job.id in recovery.resumed:
                _event(session, report, "resumed", f"image job {job.kind} {job.id} was interrupted; resumed it with "
                       "the same id so it finishes its work", job_id=job.id, desktop_id=params.get("desktop_id"))
            else:
                cleaned = recovery.cleaned.get(job.id) or []
                _event(session, report, "undone", f"image job {job.kind} {job.id} was interrupted; undid it"
                       + (f": removed {', '.join(cleaned)}" if cleaned else ""), job_id=job.id,
                       desktop_id=params.get("desktop_id"), template_id=params.get("template_id"))


def _held_by(active_jobs: list[Job], current_job_id: str | None) -> tuple[set[str], list[str], set[str], set[str]]:
    volumes: set[str] = set()
    paths: list[str] = []
    desktops: set[str] = set()
    templates: set[str] = set()
    for job in active_jobs:
        if job.id == current_job_id:
            continue
        params = job.params or {}
        for key in _VOLUME_PARAMS:
            if params.get(key):
                volumes.add(params[key])
        volumes.update(params.get("volume_ids") or [])
        paths.extend(params[key] for key in _PATH_PARAMS if params.get(key))
        if params.get("desktop_id"):
            desktops.add(params["desktop_id"])
        if params.get("template_id"):
            templates.add(params["template_id"])
    return volumes, paths, desktops, templates


def _event(session: Session, report: ReconcileReport, what: str, message: str, **ids: Any) -> None:
    counts = report.__dict__.setdefault("_event_counts", {})
    counts[what] = counts.get(what, 0) + 1
    if counts[what] > MAX_EVENTS_PER_KIND:
        return
    emit(session, f"image.reconcile.{what}", message, severity=Severity.WARNING,
         **{k: v for k, v in ids.items() if k in ("job_id", "desktop_id", "template_id")})


def _clean_rows(session: Session, report: ReconcileReport, busy_volumes: set[str], busy_desktops: set[str],
                busy_templates: set[str], in_use: set[str], *, keep_all: bool) -> None:
    """Remove the rows (and then files) of volumes nothing needs, except what a defined domain uses (`in_use`,
    real paths) and, with `keep_all` (a host did not answer), any volume at all."""
    referenced_by_version = set(session.scalars(select(TemplateVersion.volume_id)
                                                .where(TemplateVersion.volume_id.is_not(None))))
    active_ids = set(session.scalars(select(Desktop.volume_id).where(Desktop.volume_id.is_not(None))))
    parents = set(session.scalars(select(Volume.parent_id).where(Volume.parent_id.is_not(None))))
    candidates = session.scalars(select(Volume).where(or_(
        Volume.status == service.VOLUME_LOCKED, Volume.role == service.ROLE_TEMPLATE, Volume.desktop_id.is_(None))))
    for vol in list(candidates):
        if vol.id in busy_volumes or vol.id in parents or keep_all:
            continue
        if os.path.realpath(vol.path) in in_use:
            report.kept.append(vol.path)
            _event(session, report, "kept", f"kept volume {vol.path}: a domain defined on a host uses it",
                   desktop_id=vol.desktop_id)
            continue
        if vol.status == service.VOLUME_LOCKED:
            why = "left locked by a job that is not running"
        elif vol.role == service.ROLE_TEMPLATE and vol.id not in referenced_by_version:
            why = "a template image no template version uses"
        elif vol.role != service.ROLE_TEMPLATE and vol.desktop_id is None and vol.id not in active_ids:
            why = "a disk of a desktop that no longer exists"
        else:
            continue
        for version in session.scalars(select(TemplateVersion).where(TemplateVersion.volume_id == vol.id)):
            version.volume_id = None
        for snap in session.scalars(select(Snapshot).where(Snapshot.volume_id == vol.id)):
            session.delete(snap)
        session.flush()
        if os.path.lexists(vol.path):
            # only once the row's removal is committed: a pass that fails (e.g. a serialization conflict with
            # a transaction that just started using the volume) must not have deleted the file
            db.after_commit(session, lambda path=vol.path: fileops.remove(path))
            report.removed_files.append(vol.path)
        session.delete(vol)
        session.flush()
        report.removed_rows.append(f"volume {vol.id} ({vol.path})")
        _event(session, report, "row_removed", f"removed volume {vol.path}: {why}", desktop_id=vol.desktop_id)
    for snap in list(session.scalars(select(Snapshot).where(Snapshot.status == "locked"))):
        if snap.desktop_id in busy_desktops:
            continue
        session.delete(snap)
        session.flush()
        report.removed_rows.append(f"snapshot {snap.id} ({snap.name})")
        _event(session, report, "row_removed", f"removed snapshot {snap.name}: its job is not running",
               desktop_id=snap.desktop_id)
    for desktop in list(session.scalars(select(Desktop).where(Desktop.task_state == TaskState.SNAPSHOTTING))):
        if desktop.id in busy_desktops:
            continue
        service.release_desktop(session, desktop.id, TaskState.SNAPSHOTTING)
        report.released.append(desktop.name)
        _event(session, report, "released", f"desktop {desktop.name} was left locked by an image job that is not "
               "running; released it", desktop_id=desktop.id)
    for template in list(session.scalars(select(Template).where(Template.status == "locked"))):
        if template.id in busy_templates:
            continue
        template.status = "ok"
        report.released.append(template.name)
        _event(session, report, "released", f"template {template.name} was left locked by an image job that is "
               "not running; released it", template_id=template.id)


def _known_paths(paths: list[str]) -> set[str]:
    """The recorded paths and every file their images read from (never delete a backing file in use)."""
    known: set[str] = set()
    for path in paths:
        known.add(os.path.realpath(path))
        if not path.endswith(IMAGE_SUFFIXES) or not os.path.lexists(path):
            continue
        try:
            for link in qcow2.backing_chain(path):
                known.add(os.path.realpath(link.path))
        except (ImageNotFound, ImageInvalid):
            continue
    return known


def _clean_files(report: ReconcileReport, roots: list[Path], known: set[str], active_ids: list[str],
                 min_age: float, *, keep_images: bool) -> None:
    """Delete the temporary files of dead jobs and the image files nothing knows (unless `keep_images`)."""
    removed: list[tuple[str, str, int]] = []
    for root in roots:
        if not root.is_dir():
            continue
        for orphan in fileops.find_orphans(root, known, active_job_ids=active_ids, min_age_seconds=min_age):
            if orphan.reason == "unreferenced" and (keep_images or not orphan.path.name.endswith(IMAGE_SUFFIXES)):
                continue  # serial logs and other files beside the disks are not ours to judge
            if fileops.remove(orphan.path):
                removed.append((str(orphan.path), orphan.reason, orphan.size_bytes))
                fileops.remove_dir_if_empty(orphan.path.parent)
    if not removed:
        return
    with db.session_scope() as session:
        for path, reason, size in removed:
            report.removed_files.append(path)
            what = "the temporary file of a job that is not running" if reason == "temporary" \
                else "an image file no record knows"
            _event(session, report, "file_removed", f"removed {path} ({size // 1024} KiB): {what}")


def _mark_missing(report: ReconcileReport, volumes: list[Any]) -> None:
    missing = [(vid, path) for vid, path, status, _d in volumes
               if status == service.VOLUME_OK and not os.path.lexists(path)]
    if not missing:
        return
    with db.session_scope() as session:
        for vid, path in missing:
            vol = session.get(Volume, vid)
            if vol is None or os.path.lexists(path):
                continue
            vol.status = service.VOLUME_ILLEGAL
            report.illegal_volumes.append(path)
            emit(session, "image.reconcile.missing", f"image file {path} is missing; volume {vid} marked illegal "
                 "(restore the file from a backup, or re-image/delete what uses it)", severity=Severity.ERROR,
                 desktop_id=vol.desktop_id)


def _check_suspects(report: ReconcileReport, volumes: list[Any], touched: set[str]) -> None:
    for vid, path, _status, desktop_id in volumes:
        if not os.path.lexists(path) or not path.endswith(IMAGE_SUFFIXES):
            continue
        suspect = vid in touched
        if not suspect:
            try:
                header = qcow2.read_header(path)
                suspect = header.dirty or header.corrupt
            except (ImageNotFound, ImageInvalid):
                suspect = True
        if suspect:
            report.checks[path] = check_volume(vid, path, desktop_id)


def check_volume(volume_id: str, path: str, desktop_id: str | None, *, actor: str = "system",
                 job_id: str | None = None) -> dict[str, Any]:
    """qemu-img check one image; a corrupt one is marked illegal. Emits an event unless it is clean."""
    try:
        result = qemu_img.check(path, force_share=True)
        outcome = {"status": result.status, "corruptions": result.corruptions, "leaks": result.leaks,
                   "check_errors": result.check_errors}
    except VdiError as exc:
        outcome = {"status": "error", "detail": exc.message}
    if outcome["status"] != "ok":
        with db.session_scope() as session:
            if outcome["status"] in ("corrupt", "error"):
                vol = session.get(Volume, volume_id)
                if vol is not None:
                    vol.status = service.VOLUME_ILLEGAL
            severity = Severity.WARNING if outcome["status"] == "leaks" else Severity.ERROR
            emit(session, "image.check_failed" if severity == Severity.ERROR else "image.check_leaks",
                 f"qemu-img check of {path}: {outcome}", severity=severity, actor=actor, desktop_id=desktop_id,
                 job_id=job_id)
    return outcome


# ---- start-up ------------------------------------------------------------------------------------------------
def reconcile_at_startup(*, in_process_jobs: bool) -> threading.Thread:
    """Run one pass in the background when the manager starts. Only jobs whose lease ran out are taken for dead
    (another manager on the same database may be running its own); the rest are left to the job recovery loop."""
    def run() -> None:
        try:
            reconcile(min_age_seconds=0.0 if in_process_jobs else MIN_ORPHAN_AGE_SECONDS, always_report=False)
        except Exception:  # a failed pass must not take the manager down; the next one retries
            log.exception("start-up image reconcile failed")

    thread = threading.Thread(target=run, name="image-reconcile", daemon=True)
    thread.start()
    return thread
