"""The image manager's public API: templates, versions, desktop disks, snapshots, re-image, lineage.

Other packages call only this module (docs/architecture.md, import rules). Functions here take the caller's
`Session` and at most flush; long work is enqueued as a job (manager.jobs) that runs after the caller
commits, in image_manager.tasks. Every job is tied to its files by its id: temporaries are named
`.tmp-<job_id>-…`, and a re-run with the same id finishes the work (see image_manager.fileops), which
is what image_manager.reconcile relies on after a crash.

Model of a desktop disk:
- the *active* volume (Desktop.volume_id) is the file the desktop writes. OFFLINE operations keep its
  path, so the domain definition on its host does not change: snapshots, previews and re-images swap the
  file under that path atomically (hard link to keep the old content, then rename a new overlay over the
  path);
- a snapshot is a frozen volume (role "snapshot"); volumes form a tree through Volume.parent_id whose
  roots are template versions (role "template") or full clones (role "clone");
- a snapshot preview keeps the pre-preview disk as a "stash" volume until it is committed or undone.

Running desktops (power state up or paused, placed on a host): files under a running QEMU cannot be
swapped, so the two LIVE operations move the active volume to another file instead, through the node
(libvirt rewrites the domain's live AND persistent definition to the new file in the same call, so the
host and the database agree; Desktop.volume_id moves to the volume of that file):
- create_snapshot: the node takes an external disk-only snapshot into a NEW overlay
  (<desktop dir>/<new volume id>.qcow2). The file written until then is frozen in place and becomes the
  snapshot's volume (same row, role "snapshot"); the new overlay's volume becomes the desktop's active
  volume. Crash-consistent only: the demo guests have no qemu-guest-agent to quiesce file systems.
- delete_snapshot: a block commit through the node. The snapshot's only child is merged DOWN into the
  snapshot's own file, which then replaces that child in the chain: an active commit + pivot when the
  child is the active volume (the desktop then writes the snapshot's former file, which becomes its
  active volume), an inner commit when the child is a newer snapshot (whose snapshot row then points at
  the merged file). Templates are never written: the commit base is always the deleted snapshot's file.
  Snapshots outside the running chain or with several children (branches left by reverts) need the
  offline delete: DesktopBusy says so.
- revert, preview and re-image stay offline (as in oVirt): DesktopBusy "power it off first".
"""
from __future__ import annotations

import errno
import os
import stat
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy import func, or_, select, update
from sqlalchemy.orm import Session

from core.enums import PoolType, PowerState, SessionState, TaskState
from core.errors import Conflict, DesktopBusy, DuplicateName, InUse, Invalid, NotFound
from core.ids import new_id
from event_manager.service import emit
from image_manager import chain, fileops, qcow2, qemu_img
from image_manager.errors import ImageExists, ImageInvalid, ImageNotFound
from manager import db, jobs
from manager.models import (Desktop, DesktopSession, Job, Pool, Snapshot, StorageDomain, Template,
                            TemplateVersion, Volume)

GiB = 1 << 30

# Volume.role values
ROLE_TEMPLATE = "template"
ROLE_DESKTOP = "desktop"  # an active overlay
ROLE_CLONE = "clone"  # an active standalone copy
ROLE_SNAPSHOT = "snapshot"
ROLE_STASH = "stash"  # the disk as it was before a snapshot preview
# Volume.status values
VOLUME_OK = "ok"
VOLUME_LOCKED = "locked"  # being built by a job
VOLUME_ILLEGAL = "illegal"  # missing or corrupt: found by reconcile or a check
# Snapshot.status values
SNAPSHOT_OK = "ok"
SNAPSHOT_IN_PREVIEW = "in_preview"
SNAPSHOT_MERGE_FAILED = "merge_failed"  # a live delete stopped part-way: its file holds newer data; delete only

LIVE_SESSION_STATES = (SessionState.PENDING, SessionState.CONNECTED, SessionState.DISCONNECTED)
# power states in which snapshots and merges go through the node (the QEMU process is there)
RUNNING_STATES = (PowerState.UP, PowerState.PAUSED)

IMPORT_FORMATS = ("qcow2", "raw")


# ---- look-ups ------------------------------------------------------------------------------------------
def get_template(session: Session, template_id: str) -> Template:
    return db.get_or_404(session, Template, template_id, "template")


def get_version(session: Session, template: Template, version_id: str) -> TemplateVersion:
    version = session.get(TemplateVersion, version_id)
    if version is None or version.template_id != template.id:
        raise NotFound(kind="template version", id=version_id)
    return version


def template_versions(session: Session, template_id: str) -> list[TemplateVersion]:
    """The template's versions, oldest (number 1) first."""
    return list(session.scalars(select(TemplateVersion).where(TemplateVersion.template_id == template_id)
                                .order_by(TemplateVersion.number)))


def get_desktop(session: Session, desktop_id: str) -> Desktop:
    return db.get_or_404(session, Desktop, desktop_id, "desktop")


def version_by_id(session: Session, version_id: str) -> TemplateVersion:
    """A template version named in a request body (Invalid, naming the field, when there is none)."""
    version = session.get(TemplateVersion, version_id)
    if version is None:
        raise Invalid(f"template_version_id: template version {version_id} does not exist")
    return version


def reimage_target(session: Session, desktop: Desktop, version_id: str | None) -> TemplateVersion:
    """The version a re-image of many desktops gives `desktop`: `version_id` when it is a version of the desktop's
    own template (Conflict otherwise: a mixed selection must not move a desktop to another template), else its
    template's latest version."""
    current = session.get(TemplateVersion, desktop.template_version_id) if desktop.template_version_id else None
    if current is None:
        raise Invalid(f"desktop {desktop.name} has no template version to re-image from")
    if version_id is not None:
        version = version_by_id(session, version_id)
        if version.template_id != current.template_id:
            raise Conflict(f"desktop {desktop.name} is not built on the template of version {version.number}")
        return version
    template = session.get(Template, current.template_id)
    latest = template.latest_version_id if template is not None else None
    return session.get(TemplateVersion, latest) if latest else current


def snapshot_named(session: Session, desktop: Desktop, name: str | None = None) -> Snapshot:
    """The desktop's snapshot called `name`, or its newest one (Conflict when it has none / none of that name)."""
    stmt = select(Snapshot).where(Snapshot.desktop_id == desktop.id)
    if name is not None:
        stmt = stmt.where(Snapshot.name == name)
    snap = session.scalar(stmt.order_by(Snapshot.created_at.desc(), Snapshot.id.desc()).limit(1))
    if snap is None:
        raise Conflict(f"desktop {desktop.name} has no snapshot" + (f" named {name}" if name is not None else ""))
    return snap


def get_snapshot(session: Session, desktop: Desktop, snapshot_id: str) -> Snapshot:
    snap = session.get(Snapshot, snapshot_id)
    if snap is None or snap.desktop_id != desktop.id:
        raise NotFound(kind="snapshot", id=snapshot_id)
    return snap


def version_volume(session: Session, version: TemplateVersion) -> Volume:
    """The image of a template version, ready to build on. Raises Invalid if it has none (yet)."""
    volume = session.get(Volume, version.volume_id) if version.volume_id else None
    if volume is None:
        raise Invalid(f"template version {version.number} has no disk image; import one first")
    if volume.status != VOLUME_OK:
        raise Conflict(f"the image of template version {version.number} is {volume.status}; wait for its job "
                       "or run a reconcile")
    return volume


def active_volume(session: Session, desktop: Desktop) -> Volume:
    volume = session.get(Volume, desktop.volume_id) if desktop.volume_id else None
    if volume is None:
        raise Invalid(f"desktop {desktop.name} has no disk; create its disk first")
    return volume


def storage_layout(session: Session, storage_domain_id: str | None, *, what: str) -> tuple[StorageDomain, fileops.StorageLayout]:
    if not storage_domain_id:
        raise Invalid(f"{what} needs a storage domain: give storage_domain_id or set the template's")
    domain = session.get(StorageDomain, storage_domain_id)
    if domain is None:
        raise Invalid(f"storage_domain_id: storage domain {storage_domain_id} does not exist")
    return domain, fileops.StorageLayout(Path(domain.path))


def desktop_in_use(session: Session, desktop: Desktop) -> bool:
    """A user is on it: an open console session, a user logged in per the guest agent, or (automatic
    pools) a user holding it for a session."""
    if desktop.logged_in_user:
        return True
    if desktop.assigned_user_id is not None and desktop.pool_id is not None:
        pool = session.get(Pool, desktop.pool_id)
        if pool is not None and pool.pool_type == PoolType.AUTOMATIC:
            return True
    live = session.scalar(select(func.count()).select_from(DesktopSession).where(
        DesktopSession.desktop_id == desktop.id, DesktopSession.state.in_(LIVE_SESSION_STATES)))
    return bool(live)


def _claim(session: Session, desktop: Desktop, task: TaskState, action: str, *,
           require_down: bool = True) -> None:
    """Compare-and-swap the desktop's task_state from idle to `task` (DesktopBusy if another action holds
    it, or if it is not powered off and `require_down`)."""
    if require_down and desktop.power_state != PowerState.DOWN:
        raise DesktopBusy(desktop_id=desktop.name, state=desktop.power_state.value,
                          action=f"{action}: power it off first (disk changes are offline)")
    claimed = session.execute(update(Desktop).where(Desktop.id == desktop.id, Desktop.task_state.is_(None))
                              .values(task_state=task).execution_options(synchronize_session=False)).rowcount
    # Read it again (not refresh(): a removal that won the race leaves no row to refresh, which was a 500).
    if session.get(Desktop, desktop.id, populate_existing=True) is None:
        raise NotFound(kind="desktop", id=desktop.id)
    if not claimed:
        raise DesktopBusy(desktop_id=desktop.name, state=desktop.task_state.value if desktop.task_state else "busy",
                          action=action)


def release_desktop(session: Session, desktop_id: str, task: TaskState) -> None:
    session.execute(update(Desktop).where(Desktop.id == desktop_id, Desktop.task_state == task)
                    .values(task_state=None).execution_options(synchronize_session=False))


def _enqueue(session: Session, kind: str, params: dict[str, Any], *, description: str, actor: str,
             target_kind: str, target_id: str) -> Job:
    return jobs.enqueue(session, kind, params=params, description=description, created_by=actor,
                        target_kind=target_kind, target_id=target_id, total=1000)


# ---- templates: import ------------------------------------------------------------------------------------
def _next_version(session: Session, template: Template, name: str, *,
                  created_from_desktop_id: str | None = None) -> tuple[TemplateVersion, bool]:
    """The version an import fills: the template's first version while it has no image, else a new one.
    Returns (version, created)."""
    versions = template_versions(session, template.id)
    if created_from_desktop_id is None and len(versions) == 1 and versions[0].volume_id is None:
        if name:
            versions[0].name = name
        return versions[0], False
    number = (versions[-1].number if versions else 0) + 1
    version = TemplateVersion(id=new_id(), template_id=template.id, number=number, name=name or f"version {number}",
                              created_from_desktop_id=created_from_desktop_id)
    session.add(version)
    session.flush()
    return version, True


def _new_template_volume(session: Session, template: Template, version: TemplateVersion,
                         domain: StorageDomain, layout: fileops.StorageLayout) -> Volume:
    path = layout.template_path(template.id, version.number)
    if session.scalar(select(Volume.id).where(Volume.path == str(path))):
        raise DuplicateName(kind="volume", name=str(path))
    if os.path.lexists(path):
        raise ImageExists(path=str(path), actual="a file no record knows", expected="a new template version; run "
                          "a reconcile to clean it up")
    volume = Volume(id=new_id(), storage_domain_id=domain.id, path=str(path), format="qcow2", role=ROLE_TEMPLATE,
                    status=VOLUME_LOCKED)
    session.add(volume)
    session.flush()
    version.volume_id = volume.id
    return volume


def check_import_source(source_path: str, source_format: str | None = None) -> qemu_img.ImageInfo:
    """Validate a file on the manager host as an importable image: a readable, non-empty regular file (opened
    without following a symlink), in qcow2 or raw, standalone (no backing or external data file, which would
    read other files), and for raw a whole number of 512-byte sectors. Raises Invalid, ImageNotFound,
    ImageInvalid; nothing is created before it passes."""
    if not source_path or not os.path.isabs(source_path):
        raise Invalid(f"source_path must be an absolute path on the manager host, not {source_path!r}")
    if source_format is not None and source_format not in IMPORT_FORMATS:
        raise Invalid(f"format must be one of {', '.join(IMPORT_FORMATS)}, not {source_format!r}")
    if not os.path.lexists(source_path):
        raise ImageNotFound(path=source_path)
    try:
        fd = os.open(source_path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError as exc:
        reason = "it is a symbolic link; name the file itself" if exc.errno == errno.ELOOP \
            else f"it cannot be read ({exc.strerror})"
        raise ImageInvalid(path=source_path, reason=reason) from exc
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise Invalid(f"source_path {source_path} is not a regular file")
        if st.st_size == 0:
            raise ImageInvalid(path=source_path, reason="it is empty (0 bytes)")
        try:
            os.read(fd, 1)
        except OSError as exc:
            raise ImageInvalid(path=source_path, reason=f"it cannot be read ({exc.strerror})") from exc
    finally:
        os.close(fd)
    info = qemu_img.info(source_path, fmt=source_format)
    if info.format not in IMPORT_FORMATS:
        raise ImageInvalid(path=source_path, reason=f"it is in {info.format} format; import qcow2 or raw")
    if info.backing_filename:
        raise ImageInvalid(path=source_path, reason=f"it has a backing file ({info.backing_filename}); import a "
                           "standalone image (qemu-img convert it into one first)")
    specific = (info.raw.get("format-specific") or {}).get("data") or {}
    if specific.get("data-file"):
        raise ImageInvalid(path=source_path, reason="it keeps its data in an external data file; import a "
                           "standalone image (qemu-img convert it into one first)")
    if info.format == "raw" and st.st_size % 512:  # qemu-img rounds a raw file's virtual size up to a sector
        raise ImageInvalid(path=source_path, reason=f"its size ({st.st_size} bytes) is not a whole number "
                           "of 512-byte sectors, so it is not a disk image")
    return info


def import_template_image(session: Session, template: Template, *, source_path: str,
                          source_format: str | None = None, storage_domain_id: str | None = None,
                          version_name: str = "", actor: str = "system", delete_source: bool = False) -> Job:
    """Import a qcow2 or raw file on the manager host as the template's next version (its first version while
    it has no image). The copy is a job (qemu-img convert with progress) into
    <storage>/templates/<template_id>/<number>.qcow2; the version becomes the template's latest when done.

    delete_source=True (HTTP uploads) removes the source file when the job ends, whatever the outcome.
    Raises NotFound/Invalid for a bad template, storage domain or source, ImageInvalid for an unsupported
    format, Conflict while the template is locked by another import.
    """
    if template.status == "locked":
        raise Conflict(f"template {template.name} is locked by another import or version job; wait for it")
    info = check_import_source(source_path, source_format)
    domain, layout = storage_layout(session, storage_domain_id or template.storage_domain_id,
                                    what=f"importing template {template.name}")
    if template.storage_domain_id is None:
        template.storage_domain_id = domain.id
    version, created = _next_version(session, template, version_name)
    volume = _new_template_volume(session, template, version, domain, layout)
    template.status = "locked"
    params = {"template_id": template.id, "version_id": version.id, "volume_id": volume.id,
              "source": source_path, "source_format": source_format or info.format,
              "created_version": created, "delete_source": delete_source}
    job = _enqueue(session, "image.import", params, actor=actor, target_kind="template", target_id=template.id,
                   description=f"import {os.path.basename(source_path)} as version {version.number} of "
                               f"template {template.name}")
    emit(session, "template.import_started", f"{actor} started importing {source_path} as version {version.number} "
         f"of template {template.name}", actor=actor, template_id=template.id, job_id=job.id)
    return job


def upload_path(session: Session, template: Template, storage_domain_id: str | None) -> Path:
    """Where an HTTP upload for `template` is written before its import job converts it: a temporary name
    in the template's directory, so reconcile removes it if the manager dies before the import ends."""
    _domain, layout = storage_layout(session, storage_domain_id or template.storage_domain_id,
                                     what=f"uploading an image for template {template.name}")
    target = layout.template_dir(template.id) / "upload.img"
    fileops.ensure_dir(target.parent)
    return fileops.tmp_path_for(target, "upload" + new_id().replace("-", "")[:16])


def finish_import(session: Session, params: dict[str, Any], *, virtual_size: int, actual_size: int,
                  job_id: str | None, actor: str) -> None:
    """Mark an imported (or flattened) version's image ready and make it the template's latest version."""
    template = session.get(Template, params["template_id"])
    version = session.get(TemplateVersion, params["version_id"])
    volume = session.get(Volume, params["volume_id"])
    if template is None or version is None or volume is None:
        return
    volume.status, volume.virtual_size, volume.actual_size = VOLUME_OK, virtual_size, actual_size
    latest = session.get(TemplateVersion, template.latest_version_id) if template.latest_version_id else None
    if latest is None or latest.volume_id is None or latest.number <= version.number:
        template.latest_version_id = version.id
    template.status = "ok"
    emit(session, "template.version_ready", f"version {version.number} of template {template.name} is ready "
         f"({virtual_size // (1 << 20)} MiB virtual, {actual_size // (1 << 20)} MiB on disk)", actor=actor,
         template_id=template.id, job_id=job_id)


def abandon_version_build(session: Session, params: dict[str, Any], *, reason: str, job_id: str | None,
                          actor: str = "system") -> list[str]:
    """Undo the rows of a failed or interrupted import / new-version job (its temporary file is removed by the
    job itself or by reconcile). Returns what was cleaned, for the caller's events."""
    cleaned: list[str] = []
    template = session.get(Template, params.get("template_id"))
    version = session.get(TemplateVersion, params.get("version_id"))
    volume = session.get(Volume, params.get("volume_id"))
    if version is not None and volume is not None and version.volume_id == volume.id and volume.status != VOLUME_OK:
        version.volume_id = None
        session.flush()
    if volume is not None and volume.status != VOLUME_OK:
        if os.path.lexists(volume.path):
            fileops.remove(volume.path)
            cleaned.append(f"file {volume.path}")
        session.delete(volume)
        cleaned.append(f"volume row {volume.id}")
        session.flush()
        if version is not None and params.get("created_version") and version.volume_id is None:
            if template is not None and template.latest_version_id == version.id:
                template.latest_version_id = None
                session.flush()
            session.delete(version)
            cleaned.append(f"template version row {version.number}")
            session.flush()
            if template is not None and template.latest_version_id is None:
                template.latest_version_id = _best_version_id(session, template.id)
    if template is not None and template.status == "locked":
        template.status = "ok"
    if params.get("delete_source") and params.get("source") and os.path.lexists(params["source"]):
        fileops.remove(params["source"])
        cleaned.append(f"upload {params['source']}")
    if params.get("desktop_id"):
        release_desktop(session, params["desktop_id"], TaskState.SNAPSHOTTING)
    if template is not None:
        emit(session, "template.version_failed", f"building a version of template {template.name} failed: {reason}",
             severity=_warning(), actor=actor, template_id=template.id, job_id=job_id)
    return cleaned


def _best_version_id(session: Session, template_id: str) -> str | None:
    return session.scalar(select(TemplateVersion.id).where(TemplateVersion.template_id == template_id)
                          .order_by(TemplateVersion.volume_id.is_(None), TemplateVersion.number.desc()).limit(1))


def _warning():
    from core.enums import Severity

    return Severity.WARNING


# ---- templates: new version from a desktop ------------------------------------------------------------------
def create_version_from_desktop(session: Session, desktop: Desktop, *, template: Template | None = None,
                                name: str = "", actor: str = "system") -> Job:
    """Flatten a powered-off desktop's disk (its whole chain) into a new standalone version of its template
    (or of `template`), as a job. The new version becomes the latest when the job ends; the desktop keeps
    its disk. Raises DesktopBusy unless the desktop is down and idle, Invalid if it has no disk/template."""
    active = active_volume(session, desktop)
    if template is None:
        version = session.get(TemplateVersion, desktop.template_version_id) if desktop.template_version_id else None
        if version is None:
            raise Invalid(f"desktop {desktop.name} is not made from a template; give template_id")
        template = session.get(Template, version.template_id)
    if template.status == "locked":
        raise Conflict(f"template {template.name} is locked by another import or version job; wait for it")
    domain, layout = storage_layout(session, template.storage_domain_id or active.storage_domain_id,
                                    what=f"a new version of template {template.name}")
    _claim(session, desktop, TaskState.SNAPSHOTTING, "make a template version from it")
    version, created = _next_version(session, template, name, created_from_desktop_id=desktop.id)
    volume = _new_template_volume(session, template, version, domain, layout)
    template.status = "locked"
    params = {"template_id": template.id, "version_id": version.id, "volume_id": volume.id,
              "source": active.path, "created_version": created, "desktop_id": desktop.id}
    job = _enqueue(session, "image.new_version", params, actor=actor, target_kind="template", target_id=template.id,
                   description=f"version {version.number} of template {template.name} from desktop {desktop.name}")
    emit(session, "template.version_started", f"{actor} started version {version.number} of template "
         f"{template.name} from desktop {desktop.name}", actor=actor, template_id=template.id,
         desktop_id=desktop.id, job_id=job.id)
    return job


# ---- templates: delete a version ----------------------------------------------------------------------------
def version_dependents(session: Session, version: TemplateVersion) -> dict[str, list[str]]:
    """Everything that needs this version's image: desktops on it (or moving to it), pools pinned to it,
    and volumes built on its file (desktop overlays, snapshots)."""
    desktops = list(session.scalars(select(Desktop.name).where(or_(
        Desktop.template_version_id == version.id, Desktop.pending_template_version_id == version.id))
        .order_by(Desktop.name)))
    pools = list(session.scalars(select(Pool.name).where(Pool.template_version_id == version.id).order_by(Pool.name)))
    volumes: list[str] = []
    if version.volume_id:
        rows = session.execute(select(Volume.path, Desktop.name).outerjoin(Desktop, Desktop.id == Volume.desktop_id)
                               .where(Volume.parent_id == version.volume_id).order_by(Volume.path)).all()
        volumes = [f"{path} (desktop {name})" if name else path for path, name in rows]
    return {"desktops": desktops, "pools": pools, "volumes": volumes}


def delete_template_version(session: Session, template: Template, version: TemplateVersion, *,
                            actor: str = "system") -> None:
    """Delete a version and its image file. Raises InUse (409) naming the desktops, pools and volumes that
    depend on it. The file is removed after the commit (reconcile removes it if the manager dies first)."""
    users = version_dependents(session, version)
    parts = [f"{label} {_names(names)}" for label, names in users.items() if names]
    if parts:
        raise InUse(kind="template version", name=f"{template.name} v{version.number}", users="; ".join(parts))
    volume = session.get(Volume, version.volume_id) if version.volume_id else None
    if volume is not None and volume.status == VOLUME_LOCKED:
        raise Conflict(f"version {version.number} of template {template.name} is being built; wait for its job")
    path = volume.path if volume is not None else None
    if template.latest_version_id == version.id:
        template.latest_version_id = None
    version.volume_id = None
    session.flush()
    if volume is not None:
        session.delete(volume)
    session.delete(version)
    session.flush()
    if template.latest_version_id is None:
        template.latest_version_id = _best_version_id(session, template.id)
    emit(session, "template.version_deleted", f"{actor} deleted version {version.number} of template {template.name}",
         actor=actor, template_id=template.id)
    if path is not None:
        db.after_commit(session, lambda: fileops.remove(path))


def _names(items: list[str], limit: int = 10) -> str:
    shown = ", ".join(items[:limit])
    return shown + (f" and {len(items) - limit} more" if len(items) > limit else "")


# ---- desktop disks ------------------------------------------------------------------------------------------
def desktop_dir_for(active_path: str | os.PathLike[str], desktop_id: str) -> Path:
    """The directory holding a desktop's snapshot files: its own directory in the storage layout
    (<root>/desktops/<desktop_id>/), whichever layout its active disk follows."""
    active = Path(active_path)
    if active.parent.name == desktop_id:
        return active.parent
    return active.parent / fileops.check_name("desktop id", desktop_id)


def create_desktop_disks(session: Session, desktops: Sequence[Desktop], *, full_clone: bool = False,
                         job_id: str | None = None,
                         progress: Callable[[int, int], None] | None = None) -> list[Volume]:
    """Give each desktop (rows with template_version_id set, no disk yet) its disk: a thin qcow2 overlay on
    its template version (default) or, with full_clone, an independent standalone copy.

    Overlays are written in one batch per template version (no qemu-img process; 1,000 take well under a
    second); full clones are qemu-img copies (slow: call this from a job). The Volume rows are added and
    each Desktop.volume_id set in the caller's transaction; files are made before it commits, so a rollback
    leaves unreferenced files that reconcile removes. Idempotent per desktop: one that already has its disk
    file is kept. Raises Invalid when a desktop has no template version or the version has no image.
    """
    groups: dict[tuple[str, int | None], list[tuple[Desktop, Volume]]] = {}
    template_paths: dict[str, str] = {}
    out: list[Volume] = []
    new_volumes: list[Volume] = []
    for desktop in desktops:
        if desktop.template_version_id is None:
            raise Invalid(f"desktop {desktop.name} has no template_version_id; set it before creating its disk")
        version = session.get(TemplateVersion, desktop.template_version_id)
        if version is None:
            raise Invalid(f"desktop {desktop.name}: template version {desktop.template_version_id} does not exist")
        base = version_volume(session, version)
        template_paths[base.id] = base.path
        if desktop.volume_id is not None:
            existing = session.get(Volume, desktop.volume_id)
            if existing is not None:
                out.append(existing)
                if not os.path.lexists(existing.path):
                    size = _disk_size(desktop, base)
                    groups.setdefault((base.id, size), []).append((desktop, existing))
                continue
        layout_root = _storage_root_of(session, base)
        volume_id = new_id()
        path = fileops.StorageLayout(layout_root).desktop_volume_path(desktop.id, volume_id)
        size = _disk_size(desktop, base)
        volume = Volume(id=volume_id, storage_domain_id=base.storage_domain_id, path=str(path), format="qcow2",
                        role=ROLE_CLONE if full_clone else ROLE_DESKTOP,
                        parent_id=None if full_clone else base.id, desktop_id=desktop.id,
                        virtual_size=size or base.virtual_size, status=VOLUME_OK)
        new_volumes.append(volume)
        out.append(volume)
        groups.setdefault((base.id, size), []).append((desktop, volume))
    session.add_all(new_volumes)
    session.flush()
    for volumes in groups.values():
        for desktop, volume in volumes:
            desktop.volume_id = volume.id
    session.flush()
    total = sum(len(v) for v in groups.values())
    done = 0
    for (base_id, size), items in groups.items():
        template_path = template_paths[base_id]
        if full_clone:
            for _desktop, volume in items:
                chain.full_clone(template_path, volume.path, job_id=job_id)
                if size:
                    qemu_img.resize(volume.path, size)
                done += 1
                if progress is not None:
                    progress(done, total)
        else:
            qcow2.create_overlays(template_path, [v.path for _d, v in items], virtual_size=size, job_id=job_id)
            done += len(items)
            if progress is not None:
                progress(done, total)
    return out


def _disk_size(desktop: Desktop, base: Volume) -> int | None:
    """A desktop asking for a bigger disk than its template gets it; otherwise the template's size."""
    wanted = desktop.disk_size_gib * GiB if desktop.disk_size_gib else 0
    return wanted if wanted > (base.virtual_size or 0) else None


def _storage_root_of(session: Session, volume: Volume) -> Path:
    if volume.storage_domain_id:
        domain = session.get(StorageDomain, volume.storage_domain_id)
        if domain is not None:
            return Path(domain.path)
    # <root>/templates/<template_id>/<n>.qcow2
    return Path(volume.path).parent.parent.parent


# ---- snapshots ----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class SnapshotInfo:
    id: str
    name: str
    description: str
    status: str
    volume_id: str
    path: str
    parent_path: str | None
    in_active_chain: bool
    actual_size: int
    created_at: Any


def list_snapshots(session: Session, desktop: Desktop) -> list[SnapshotInfo]:
    """The desktop's snapshots, oldest first, with whether each is in its current disk's chain."""
    vols = _desktop_volumes(session, desktop)
    by_id = {v.id: v for v in vols}
    chain_ids = set()
    current = by_id.get(desktop.volume_id) if desktop.volume_id else None
    while current is not None:
        chain_ids.add(current.id)
        current = by_id.get(current.parent_id) if current.parent_id else None
    out = []
    for snap in session.scalars(select(Snapshot).where(Snapshot.desktop_id == desktop.id)
                                .order_by(Snapshot.created_at, Snapshot.name)):
        vol = by_id.get(snap.volume_id) or session.get(Volume, snap.volume_id)
        parent = session.get(Volume, vol.parent_id) if vol is not None and vol.parent_id else None
        size = fileops.allocated_bytes(vol.path) if vol is not None and os.path.lexists(vol.path) else 0
        out.append(SnapshotInfo(snap.id, snap.name, snap.description, snap.status, snap.volume_id,
                                vol.path if vol else "", parent.path if parent else None, snap.volume_id in chain_ids,
                                size, snap.created_at))
    return out


def _desktop_volumes(session: Session, desktop: Desktop) -> list[Volume]:
    return list(session.scalars(select(Volume).where(Volume.desktop_id == desktop.id)))


def _preview_of(session: Session, desktop: Desktop) -> Snapshot | None:
    return session.scalar(select(Snapshot).where(Snapshot.desktop_id == desktop.id,
                                                 Snapshot.status == SNAPSHOT_IN_PREVIEW))


def create_snapshot(session: Session, desktop: Desktop, name: str, *, description: str = "",
                    actor: str = "system") -> tuple[Snapshot, Job]:
    """Freeze the desktop's disk as snapshot `name` and give it a fresh overlay on top (a job). A powered-off
    desktop's snapshot is made on files (the active path stays); a running (up or paused) one's is taken live
    by its node, and the desktop continues in a new active file (see the module docstring). Raises
    DuplicateName, DesktopBusy (starting, stopping, migrating..., or another action holds it), Unavailable /
    NodeUnreachable when a running desktop's host cannot be used, Conflict while a snapshot is in preview."""
    name = (name or "").strip()
    if not name or len(name) > 255:
        raise Invalid("a snapshot needs a name of 1-255 characters")
    if session.scalar(select(Snapshot.id).where(Snapshot.desktop_id == desktop.id, Snapshot.name == name)):
        raise DuplicateName(kind="snapshot", name=name)
    if _preview_of(session, desktop) is not None:
        raise Conflict(f"desktop {desktop.name} is previewing a snapshot; commit or undo the preview first")
    active = active_volume(session, desktop)
    if desktop.power_state != PowerState.DOWN:
        return _create_live_snapshot(session, desktop, active, name, description, actor)
    _claim(session, desktop, TaskState.SNAPSHOTTING, "take a snapshot")
    frozen_id = new_id()
    frozen_path = desktop_dir_for(active.path, desktop.id) / f"{frozen_id}{fileops.IMAGE_SUFFIX}"
    frozen = Volume(id=frozen_id, storage_domain_id=active.storage_domain_id, path=str(frozen_path),
                    format=active.format, role=ROLE_SNAPSHOT, parent_id=active.parent_id, desktop_id=desktop.id,
                    virtual_size=active.virtual_size, status=VOLUME_LOCKED)
    session.add(frozen)
    session.flush()
    snap = Snapshot(id=new_id(), desktop_id=desktop.id, volume_id=frozen.id, name=name, description=description,
                    status="locked")
    session.add(snap)
    session.flush()
    params = {"desktop_id": desktop.id, "snapshot_id": snap.id, "active_path": active.path,
              "frozen_id": frozen.id, "frozen_path": str(frozen_path)}
    job = _enqueue(session, "image.snapshot", params, actor=actor, target_kind="desktop", target_id=desktop.id,
                   description=f"snapshot {name} of desktop {desktop.name}")
    return snap, job


def _require_running_on_a_node(session: Session, desktop: Desktop, action: str) -> None:
    """For a live operation: the desktop is up or paused on a usable host (else DesktopBusy / Unavailable)."""
    if desktop.power_state not in RUNNING_STATES:
        raise DesktopBusy(desktop_id=desktop.name, state=desktop.power_state.value,
                          action=f"{action}: wait until it is up, or power it off")
    from manager.provisioning import nodes  # the provisioning side's one adapter to NodeClient

    nodes.target_of_desktop(session, desktop)  # fails early and clearly when the host cannot be used


def _create_live_snapshot(session: Session, desktop: Desktop, active: Volume, name: str, description: str,
                          actor: str) -> tuple[Snapshot, Job]:
    _require_running_on_a_node(session, desktop, "take a live snapshot")
    if active.status != VOLUME_OK:
        raise Conflict(f"the disk of desktop {desktop.name} is {active.status}; wait for its job or run a reconcile")
    _claim(session, desktop, TaskState.SNAPSHOTTING, "take a snapshot", require_down=False)
    new_active_id = new_id()
    new_active_path = desktop_dir_for(active.path, desktop.id) / f"{new_active_id}{fileops.IMAGE_SUFFIX}"
    # The overlay the node will create; it becomes the active volume when the job has taken the snapshot.
    session.add(Volume(id=new_active_id, storage_domain_id=active.storage_domain_id, path=str(new_active_path),
                       format="qcow2", role=active.role, parent_id=active.id, desktop_id=desktop.id,
                       virtual_size=active.virtual_size, status=VOLUME_LOCKED))
    session.flush()
    snap = Snapshot(id=new_id(), desktop_id=desktop.id, volume_id=active.id, name=name, description=description,
                    status="locked")
    session.add(snap)
    session.flush()
    # frozen_*: the file written until now, frozen in place; active_path / volume_id: where the desktop goes on.
    params = {"desktop_id": desktop.id, "snapshot_id": snap.id, "live": True, "frozen_id": active.id,
              "frozen_path": active.path, "volume_id": new_active_id, "active_path": str(new_active_path)}
    job = _enqueue(session, "image.snapshot", params, actor=actor, target_kind="desktop", target_id=desktop.id,
                   description=f"live snapshot {name} of running desktop {desktop.name}")
    return snap, job


def take_live_snapshot(target: Any, params: dict[str, Any]) -> list[str]:
    """The node side of a live snapshot (no database): the desktop's domain continues in params["active_path"].
    Idempotent (the node answers a re-run from the domain's current disk). Returns the disk chain, top first."""
    from manager.provisioning import nodes

    return nodes.client(target).snapshot_disk(params["desktop_id"], params["active_path"])


def live_snapshot_target(session: Session, params: dict[str, Any]) -> Any:
    """The node of the desktop a live snapshot job works on (read when the job runs: the desktop may have moved)."""
    from manager.provisioning import nodes

    return nodes.target_of_desktop(session, get_desktop(session, params["desktop_id"]))


def finish_live_snapshot(session: Session, params: dict[str, Any], *, job_id: str | None, actor: str) -> None:
    """Record a live snapshot the node has taken: the old active volume is the snapshot, the new overlay is
    the desktop's active volume (the domain's definitions already point at it)."""
    desktop = session.get(Desktop, params["desktop_id"])
    frozen = session.get(Volume, params["frozen_id"])
    new_active = session.get(Volume, params["volume_id"])
    snap = session.get(Snapshot, params["snapshot_id"])
    if desktop is None or frozen is None or new_active is None or snap is None:
        return
    frozen.role = ROLE_SNAPSHOT
    frozen.actual_size = fileops.allocated_bytes(frozen.path)
    new_active.status = VOLUME_OK
    new_active.actual_size = fileops.allocated_bytes(new_active.path)
    snap.status = SNAPSHOT_OK
    session.flush()
    session.execute(update(Desktop).where(Desktop.id == desktop.id, Desktop.task_state == TaskState.SNAPSHOTTING)
                    .values(task_state=None, volume_id=new_active.id).execution_options(synchronize_session=False))
    session.refresh(desktop)
    emit(session, "desktop.snapshot_created", f"{actor} took live snapshot {snap.name} of running desktop "
         f"{desktop.name}; it now writes {new_active.path}", actor=actor, desktop_id=desktop.id, job_id=job_id)


def abandon_live_snapshot(session: Session, params: dict[str, Any], *, reason: str, job_id: str | None,
                          actor: str = "system") -> list[str]:
    """Undo the rows of a live snapshot the node could not take. If the new overlay exists on top of the frozen
    file, the node did take it (libvirt's atomic snapshot deletes the file it made when it fails) and the
    snapshot is recorded instead: the domain writes that file now, so it must never be deleted."""
    active, frozen = Path(params["active_path"]), Path(params["frozen_path"])
    if _is_overlay_of(active, frozen):
        finish_live_snapshot(session, params, job_id=job_id, actor=actor)
        return ["completed the snapshot (the node had taken it)"]
    cleaned: list[str] = []
    snap = session.get(Snapshot, params["snapshot_id"])
    if snap is not None:
        session.delete(snap)
        session.flush()
    vol = session.get(Volume, params["volume_id"])
    if vol is not None:
        session.delete(vol)
        cleaned.append(f"volume row {vol.id}")
    session.flush()
    release_desktop(session, params["desktop_id"], TaskState.SNAPSHOTTING)
    emit(session, "desktop.snapshot_failed", f"live snapshot of desktop {params['desktop_id']} failed: {reason}",
         severity=_warning(), actor=actor, desktop_id=params["desktop_id"], job_id=job_id)
    return cleaned


def freeze_active(active_path: str | os.PathLike[str], frozen_path: str | os.PathLike[str], *,
                  job_id: str | None) -> None:
    """Keep the desktop's current disk as `frozen_path` and put a fresh empty overlay of it under the
    unchanged active path. Idempotent and crash-safe: the content gets its second name by a hard link
    (durable), then the new overlay replaces the active name by one rename."""
    active, frozen = Path(active_path), Path(frozen_path)
    if _is_overlay_of(active, frozen) and not _same_inode(active, frozen):
        return  # done by an earlier run
    if os.path.lexists(frozen):
        if not _same_inode(active, frozen):
            raise ImageExists(path=str(frozen), actual="another file", expected=f"a second name of {active}")
    else:
        fileops.ensure_dir(frozen.parent)
        os.link(active, frozen)
        fileops.fsync_dir(frozen.parent)
    qcow2.create_overlay(active, frozen, replace=True, job_id=job_id)


def _same_inode(a: Path, b: Path) -> bool:
    try:
        return os.path.samefile(a, b)
    except FileNotFoundError:
        return False


def _is_overlay_of(path: Path, backing: Path) -> bool:
    try:
        header = qcow2.read_header(path)
    except (ImageNotFound, ImageInvalid):
        return False
    if header.backing_file is None:
        return False
    return os.path.realpath(qcow2.resolve_backing(path, header.backing_file)) == os.path.realpath(backing)


def finish_snapshot(session: Session, params: dict[str, Any], *, job_id: str | None, actor: str) -> None:
    desktop = session.get(Desktop, params["desktop_id"])
    frozen = session.get(Volume, params["frozen_id"])
    snap = session.get(Snapshot, params["snapshot_id"])
    if desktop is None or frozen is None or snap is None:
        return
    active = session.get(Volume, desktop.volume_id)
    frozen.status = VOLUME_OK
    frozen.actual_size = fileops.allocated_bytes(frozen.path)
    active.parent_id = frozen.id
    snap.status = SNAPSHOT_OK
    release_desktop(session, desktop.id, TaskState.SNAPSHOTTING)
    emit(session, "desktop.snapshot_created", f"{actor} took snapshot {snap.name} of desktop {desktop.name}",
         actor=actor, desktop_id=desktop.id, job_id=job_id)


def abandon_snapshot(session: Session, params: dict[str, Any], *, reason: str, job_id: str | None,
                     actor: str = "system") -> list[str]:
    """Undo a snapshot that could not be taken (the disk is left as it was, or as the finished state when the
    files already moved: then the snapshot is kept)."""
    cleaned: list[str] = []
    active, frozen = Path(params["active_path"]), Path(params["frozen_path"])
    if _is_overlay_of(active, frozen) and not _same_inode(active, frozen):
        finish_snapshot(session, params, job_id=job_id, actor=actor)  # the files are done: keep it
        return ["completed the snapshot"]
    if os.path.lexists(frozen) and _same_inode(active, frozen):
        fileops.remove(frozen)  # only a second name of the untouched disk
        cleaned.append(f"file {frozen}")
    snap = session.get(Snapshot, params["snapshot_id"])
    if snap is not None:
        session.delete(snap)
        session.flush()
    vol = session.get(Volume, params["frozen_id"])
    if vol is not None:
        session.delete(vol)
        cleaned.append(f"volume row {vol.id}")
    session.flush()
    release_desktop(session, params["desktop_id"], TaskState.SNAPSHOTTING)
    emit(session, "desktop.snapshot_failed", f"snapshot of desktop {params['desktop_id']} failed: {reason}",
         severity=_warning(), actor=actor, desktop_id=params["desktop_id"], job_id=job_id)
    return cleaned


def revert_to_snapshot(session: Session, desktop: Desktop, snap: Snapshot, *, actor: str = "system") -> Job:
    """Throw away the desktop's current disk and continue from the snapshot (a job; offline). The snapshot and
    any other snapshots are kept. Raises DesktopBusy, Conflict during a preview."""
    return _simple_disk_job(session, desktop, snap, "image.revert", "revert to snapshot", actor,
                            refuse_during_preview=True)


def preview_snapshot(session: Session, desktop: Desktop, snap: Snapshot, *, actor: str = "system") -> Job:
    """Boot from the snapshot for a while: the current disk is stashed, a fresh overlay of the snapshot takes
    its place. Then commit_preview (keep what the preview shows: a revert) or undo_preview (back to the
    stashed disk). A job; offline."""
    return _simple_disk_job(session, desktop, snap, "image.preview", "preview a snapshot", actor,
                            refuse_during_preview=True)


def undo_preview(session: Session, desktop: Desktop, *, actor: str = "system") -> Job:
    """Return to the disk as it was before the preview (whatever was written during the preview is lost)."""
    snap = _preview_of(session, desktop)
    if snap is None:
        raise Conflict(f"desktop {desktop.name} is not previewing a snapshot")
    return _simple_disk_job(session, desktop, snap, "image.undo_preview", "undo a snapshot preview", actor)


def commit_preview(session: Session, desktop: Desktop, *, actor: str = "system") -> Job:
    """Keep the previewed state: the stashed disk is deleted (a revert to the previewed snapshot)."""
    snap = _preview_of(session, desktop)
    if snap is None:
        raise Conflict(f"desktop {desktop.name} is not previewing a snapshot")
    return _simple_disk_job(session, desktop, snap, "image.commit_preview", "commit a snapshot preview", actor)


def delete_snapshot(session: Session, desktop: Desktop, snap: Snapshot, *, actor: str = "system") -> Job:
    """Delete a snapshot without changing what any volume reads, as a job. Powered off: its data is merged into
    every volume built on it (qemu-img rebase), then its file is deleted. Running (up or paused): a live block
    commit through the node (see the module docstring; the chain gets one file shorter, the guest keeps running).
    Raises Conflict while it is previewed, DesktopBusy while another action holds the desktop, or when it runs and
    the snapshot cannot be merged live (power it off first), Unavailable / NodeUnreachable for an unusable host."""
    if snap.status == SNAPSHOT_IN_PREVIEW:
        raise Conflict(f"snapshot {snap.name} is being previewed; commit or undo the preview first")
    if desktop.power_state != PowerState.DOWN:
        return _delete_snapshot_live(session, desktop, snap, actor)
    return _simple_disk_job(session, desktop, snap, "image.delete_snapshot", "delete a snapshot", actor)


@dataclass(frozen=True)
class LiveMerge:
    """What a live delete of a snapshot commits: `top` (the snapshot's only child) into `base` (the snapshot's
    own file). `active` when top is the file the domain writes (an active commit with a pivot)."""

    top_id: str
    top_path: str
    base_id: str
    base_path: str
    active: bool


def plan_live_merge(session: Session, desktop: Desktop, snap: Snapshot) -> LiveMerge | None:
    """How to delete `snap` while `desktop` runs: a LiveMerge, or None when nothing reads the snapshot's file
    (no volume is built on it: deleting the file is enough). Raises DesktopBusy when only an offline delete
    can do it (the snapshot is outside the running chain or has several children)."""
    vol = session.get(Volume, snap.volume_id)
    active = active_volume(session, desktop)
    if vol is None or vol.role != ROLE_SNAPSHOT:
        raise Invalid(f"snapshot {snap.name} has no snapshot volume; run a reconcile")
    children = list(session.scalars(select(Volume).where(Volume.parent_id == vol.id)))
    if not children:
        return None
    running_chain = []
    current: Volume | None = active
    while current is not None:
        running_chain.append(current)
        current = session.get(Volume, current.parent_id) if current.parent_id else None
    ids = [v.id for v in running_chain]
    offline = "delete it: power the desktop off first (the offline delete rebases every volume built on it)"
    if vol.id not in ids:
        raise DesktopBusy(desktop_id=desktop.name, state=f"{desktop.power_state.value} (snapshot {snap.name} is "
                          "not in the running disk chain)", action=offline)
    top = running_chain[ids.index(vol.id) - 1]
    if len(children) != 1:
        raise DesktopBusy(desktop_id=desktop.name, state=f"{desktop.power_state.value} ({len(children)} volumes are "
                          f"built on snapshot {snap.name})", action=offline)
    if top.id != active.id:
        grandchildren = session.scalar(select(func.count()).select_from(Volume).where(Volume.parent_id == top.id))
        if grandchildren != 1:
            raise DesktopBusy(desktop_id=desktop.name, state=f"{desktop.power_state.value} (the snapshot above "
                              f"{snap.name} has {grandchildren} volumes built on it)", action=offline)
    return LiveMerge(top.id, top.path, vol.id, vol.path, top.id == active.id)


def _delete_snapshot_live(session: Session, desktop: Desktop, snap: Snapshot, actor: str) -> Job:
    _require_running_on_a_node(session, desktop, "delete a snapshot live")
    if snap.status not in (SNAPSHOT_OK, SNAPSHOT_MERGE_FAILED):
        raise Conflict(f"snapshot {snap.name} is {snap.status}; wait for its job")
    merge = plan_live_merge(session, desktop, snap)
    _claim(session, desktop, TaskState.SNAPSHOTTING, "delete a snapshot", require_down=False)
    params: dict[str, Any] = {"desktop_id": desktop.id, "snapshot_id": snap.id, "live": True}
    how = "live block commit" if merge is not None else "file removal (nothing reads it)"
    return _enqueue(session, "image.delete_snapshot", params, actor=actor, target_kind="desktop",
                    target_id=desktop.id, description=f"delete snapshot {snap.name} of running desktop "
                                                      f"{desktop.name} ({how})")


def _simple_disk_job(session: Session, desktop: Desktop, snap: Snapshot, kind: str, action: str, actor: str, *,
                     refuse_during_preview: bool = False) -> Job:
    if refuse_during_preview and _preview_of(session, desktop) is not None:
        raise Conflict(f"desktop {desktop.name} is previewing a snapshot; commit or undo the preview first")
    if snap.status == SNAPSHOT_MERGE_FAILED and kind != "image.delete_snapshot":
        raise Conflict(f"snapshot {snap.name} was partly merged by a live delete that failed: it no longer holds "
                       "its point in time; delete it again")
    if snap.status not in (SNAPSHOT_OK, SNAPSHOT_IN_PREVIEW, SNAPSHOT_MERGE_FAILED):
        raise Conflict(f"snapshot {snap.name} is {snap.status}; wait for its job")
    active_volume(session, desktop)
    _claim(session, desktop, TaskState.SNAPSHOTTING, action)
    params: dict[str, Any] = {"desktop_id": desktop.id, "snapshot_id": snap.id}
    if kind == "image.preview":
        active = active_volume(session, desktop)
        stash_id = new_id()
        params.update(stash_id=stash_id, stash_path=str(desktop_dir_for(active.path, desktop.id)
                                                        / f"{stash_id}{fileops.IMAGE_SUFFIX}"))
    return _enqueue(session, kind, params, actor=actor, target_kind="desktop", target_id=desktop.id,
                    description=f"{action} ({snap.name}) on desktop {desktop.name}")


@dataclass
class DiskPlan:
    """Paths and ids a desktop disk job works with, read from the rows before the file work starts."""

    desktop_id: str
    desktop_name: str
    active_id: str
    active_path: str
    snapshot_id: str | None = None
    snapshot_name: str = ""
    snapshot_volume_id: str | None = None
    snapshot_path: str | None = None
    snapshot_parent_id: str | None = None
    snapshot_parent_path: str | None = None
    children: list[tuple[str, str]] = field(default_factory=list)  # (volume id, path) built on the snapshot
    stash_id: str | None = None
    stash_path: str | None = None
    discard: list[tuple[str, str]] = field(default_factory=list)  # (volume id, path) to delete
    template_volume_id: str | None = None
    template_path: str | None = None
    version_id: str | None = None
    virtual_size: int | None = None
    power_off: Any = None  # a node target when a running desktop must be powered off first
    live_merge: LiveMerge | None = None  # a live delete: what the node commits
    node: Any = None  # a live delete: the desktop's node target
    live: bool = False


def plan_disk_job(session: Session, kind: str, params: dict[str, Any]) -> DiskPlan | None:
    """Read what a desktop disk job must do; None if the desktop or snapshot is gone (nothing to do)."""
    desktop = session.get(Desktop, params["desktop_id"])
    if desktop is None or desktop.volume_id is None:
        return None
    active = session.get(Volume, desktop.volume_id)
    plan = DiskPlan(desktop.id, desktop.name, active.id, active.path)
    if params.get("snapshot_id"):
        snap = session.get(Snapshot, params["snapshot_id"])
        if snap is None:
            return None
        vol = session.get(Volume, snap.volume_id)
        parent = session.get(Volume, vol.parent_id) if vol.parent_id else None
        plan.snapshot_id, plan.snapshot_name = snap.id, snap.name
        plan.snapshot_volume_id, plan.snapshot_path = vol.id, vol.path
        plan.snapshot_parent_id = parent.id if parent else None
        plan.snapshot_parent_path = parent.path if parent else None
        plan.children = [(v.id, v.path) for v in session.scalars(select(Volume).where(Volume.parent_id == vol.id)
                                                                   .order_by(Volume.role, Volume.path))]
    if kind == "image.delete_snapshot" and params.get("live"):
        from manager.provisioning import nodes

        plan.live = True
        plan.node = nodes.target_of_desktop(session, desktop)
        plan.live_merge = plan_live_merge(session, desktop, snap)
    if kind == "image.preview":
        plan.stash_id, plan.stash_path = params["stash_id"], params["stash_path"]
    if kind in ("image.undo_preview", "image.commit_preview"):
        stash = session.scalar(select(Volume).where(Volume.desktop_id == desktop.id, Volume.role == ROLE_STASH))
        if stash is not None:
            plan.stash_id, plan.stash_path = stash.id, stash.path
    return plan


def finish_disk_job(session: Session, kind: str, plan: DiskPlan, params: dict[str, Any], *, job_id: str | None,
                    actor: str) -> None:
    """Record in the rows what the file work of a desktop disk job did, release the desktop, emit an event."""
    desktop = session.get(Desktop, plan.desktop_id)
    active = session.get(Volume, plan.active_id)
    snap = session.get(Snapshot, plan.snapshot_id) if plan.snapshot_id else None
    if kind == "image.revert":
        active.parent_id = plan.snapshot_volume_id
        message = f"{actor} reverted desktop {plan.desktop_name} to snapshot {plan.snapshot_name}"
    elif kind == "image.preview":
        stash = Volume(id=plan.stash_id, storage_domain_id=active.storage_domain_id, path=plan.stash_path,
                       format=active.format, role=ROLE_STASH, parent_id=active.parent_id, desktop_id=desktop.id,
                       virtual_size=active.virtual_size, status=VOLUME_OK)
        session.add(stash)
        active.parent_id = plan.snapshot_volume_id
        snap.status = SNAPSHOT_IN_PREVIEW
        message = f"{actor} started a preview of snapshot {plan.snapshot_name} on desktop {plan.desktop_name}"
    elif kind == "image.undo_preview":
        stash = session.get(Volume, plan.stash_id) if plan.stash_id else None
        if stash is not None:
            active.parent_id = stash.parent_id
            session.delete(stash)
        if snap is not None:
            snap.status = SNAPSHOT_OK
        message = f"{actor} undid the preview of snapshot {plan.snapshot_name} on desktop {plan.desktop_name}"
    elif kind == "image.commit_preview":
        stash = session.get(Volume, plan.stash_id) if plan.stash_id else None
        if stash is not None:
            session.delete(stash)
        if snap is not None:
            snap.status = SNAPSHOT_OK
        message = (f"{actor} kept the preview of snapshot {plan.snapshot_name} on desktop {plan.desktop_name} "
                   "(reverted to it)")
    elif kind == "image.delete_snapshot" and plan.live_merge is not None:
        _record_live_merge(session, desktop, snap, plan.live_merge)
        message = (f"{actor} deleted snapshot {plan.snapshot_name} of running desktop {plan.desktop_name} "
                   f"(block commit of {plan.live_merge.top_path} into {plan.live_merge.base_path})")
    elif kind == "image.delete_snapshot":
        for child_id, _path in plan.children:
            child = session.get(Volume, child_id)
            if child is not None:
                child.parent_id = plan.snapshot_parent_id
        session.flush()
        if snap is not None:
            session.delete(snap)
            session.flush()
        vol = session.get(Volume, plan.snapshot_volume_id)
        if vol is not None:
            session.delete(vol)
        message = f"{actor} deleted snapshot {plan.snapshot_name} of desktop {plan.desktop_name} (merged)"
    elif kind == "image.reimage":
        finish_reimage(session, plan, params, job_id=job_id, actor=actor)
        return
    else:
        raise ValueError(kind)
    session.flush()
    release_desktop(session, plan.desktop_id, TaskState.SNAPSHOTTING)
    emit(session, f"desktop.{kind.removeprefix('image.')}", message, actor=actor, desktop_id=plan.desktop_id,
         job_id=job_id)


def _record_live_merge(session: Session, desktop: Desktop, snap: Snapshot | None, merge: LiveMerge) -> None:
    """The rows after the node committed merge.top into merge.base: base's file holds what top read and takes
    top's place in the chain; top's row goes (its file was deleted by the job)."""
    top = session.get(Volume, merge.top_id)
    base = session.get(Volume, merge.base_id)
    if snap is not None:
        session.delete(snap)
        session.flush()
    if merge.active:
        base.role = top.role  # desktop (or clone): the domain writes it now
        desktop.volume_id = base.id
    else:
        for other in session.scalars(select(Snapshot).where(Snapshot.volume_id == top.id)):
            other.volume_id = base.id  # the newer snapshot's content now lives in base's file
    for child in session.scalars(select(Volume).where(Volume.parent_id == top.id)):
        child.parent_id = base.id
    session.flush()
    session.delete(top)
    session.flush()
    base.actual_size = fileops.allocated_bytes(base.path)


def live_merge(plan: DiskPlan, *, timeout: float = qemu_img.COPY_TIMEOUT) -> None:
    """The node side of a live snapshot delete (no database), idempotent: block commit, then delete the file that
    left the chain. A re-run after the commit (the top file gone, or no longer in the domain's chain) only
    finishes the file removal."""
    from manager.provisioning import nodes

    merge = plan.live_merge
    if merge is None:  # nothing was built on the snapshot: its file is read by nobody
        fileops.remove(plan.snapshot_path)
        return
    if os.path.lexists(merge.top_path):
        try:
            nodes.client(plan.node).block_commit(plan.desktop_id, top=merge.top_path, base=merge.base_path,
                                                 timeout=min(timeout, 6 * 3600.0))
        except Invalid as exc:
            if "is not in the disk chain" not in exc.message:
                raise
            # an earlier run committed it; the domain no longer reads the file
        fileops.remove(merge.top_path)


def record_failed_live_merge(session: Session, plan: DiskPlan, error: BaseException) -> bool:
    """After a live delete failed: when the commit may have started (it was not refused up front), the snapshot's
    file may hold some of the newer layer's data, so the snapshot is marked merge_failed: it can only be deleted
    (again), never reverted to or previewed. What every volume reads is unchanged either way. Returns whether
    it was marked."""
    from core.errors import DomainNotFound

    if plan.live_merge is None or plan.snapshot_id is None:
        return False
    refused_up_front = isinstance(error, (Invalid, DomainNotFound)) or (
        isinstance(error, Conflict) and "stopped during" not in str(error))
    if refused_up_front:
        return False
    snap = session.get(Snapshot, plan.snapshot_id)
    if snap is None:
        return False
    snap.status = SNAPSHOT_MERGE_FAILED
    session.flush()
    return True


def do_disk_work(kind: str, plan: DiskPlan, *, job_id: str | None,
                 progress: Callable[[float], None] | None = None) -> None:
    """The file side of a desktop disk job (no database). Each branch is idempotent: a re-run with the same job
    id after a crash at any point completes it."""
    if kind == "image.revert":
        chain.revert_to_snapshot(plan.snapshot_path, plan.active_path, discard=[plan.active_path], job_id=job_id)
    elif kind == "image.preview":
        active, stash, snap_path = Path(plan.active_path), Path(plan.stash_path), Path(plan.snapshot_path)
        if _is_overlay_of(active, snap_path) and os.path.lexists(stash) and not _same_inode(active, stash):
            return
        if not os.path.lexists(stash):
            os.link(active, stash)
            fileops.fsync_dir(stash.parent)
        elif not _same_inode(active, stash):
            raise ImageExists(path=str(stash), actual="another file", expected=f"a second name of {active}")
        qcow2.create_overlay(active, snap_path, replace=True, job_id=job_id)
    elif kind == "image.undo_preview":
        if plan.stash_path and os.path.lexists(plan.stash_path):
            fileops.publish(plan.stash_path, plan.active_path, replace=True)
    elif kind == "image.commit_preview":
        if plan.stash_path:
            fileops.remove(plan.stash_path)
    elif kind == "image.delete_snapshot" and plan.live:
        live_merge(plan)
    elif kind == "image.delete_snapshot":
        base = plan.snapshot_parent_path
        children = [path for _id, path in plan.children]
        for path in children[:-1]:
            if chain.backing_of(path) is not None and os.path.realpath(chain.backing_of(path)) == \
                    os.path.realpath(plan.snapshot_path):
                qemu_img.rebase(path, base, unsafe=False, progress=progress)
        if children:
            chain.delete_snapshot(plan.snapshot_path, children[-1], progress=progress)
        else:
            fileops.remove(plan.snapshot_path)
    elif kind == "image.reimage":
        chain.reimage(plan.active_path, plan.template_path, discard=[p for _i, p in plan.discard],
                      virtual_size=plan.virtual_size, job_id=job_id)
    else:
        raise ValueError(kind)


# ---- re-image and rolling updates ---------------------------------------------------------------------------
def reimage_desktop(session: Session, desktop: Desktop, *, version: TemplateVersion | None = None,
                    keep_snapshots: bool = False, actor: str = "system", already_claimed: bool = False,
                    power_off: bool = False) -> Job:
    """Drop the desktop's changes: a fresh overlay on `version` (default: its pending version, else its current
    one) becomes its disk, under the same path. Snapshots are deleted unless keep_snapshots (they stay
    revertible: they keep their own chain). A job. Raises DesktopBusy while it runs (unless power_off, which
    pulls the plug first through its host) or another action holds it, and never while a user is on it."""
    if desktop_in_use(session, desktop):
        raise DesktopBusy(desktop_id=desktop.name, state="in use by a logged-in user", action="re-image it")
    target_version = version
    if target_version is None:
        version_id = desktop.pending_template_version_id or desktop.template_version_id
        target_version = session.get(TemplateVersion, version_id) if version_id else None
    if target_version is None:
        raise Invalid(f"desktop {desktop.name} has no template version to re-image from")
    base = version_volume(session, target_version)
    active_volume(session, desktop)
    if _preview_of(session, desktop) is not None and keep_snapshots:
        raise Conflict(f"desktop {desktop.name} is previewing a snapshot; commit or undo the preview first")
    if not already_claimed:
        _claim(session, desktop, TaskState.REIMAGING, "re-image it", require_down=not power_off)
    elif desktop.task_state != TaskState.REIMAGING:
        raise DesktopBusy(desktop_id=desktop.name, state=str(desktop.task_state or "idle"), action="re-image it")
    params = {"desktop_id": desktop.id, "version_id": target_version.id, "template_volume_id": base.id,
              "keep_snapshots": keep_snapshots, "power_off": power_off}
    return _enqueue(session, "image.reimage", params, actor=actor, target_kind="desktop", target_id=desktop.id,
                    description=f"re-image desktop {desktop.name} from template version {target_version.number}")


def plan_reimage(session: Session, params: dict[str, Any]) -> DiskPlan | None:
    desktop = session.get(Desktop, params["desktop_id"])
    if desktop is None or desktop.volume_id is None or desktop.task_state != TaskState.REIMAGING:
        return None
    active = session.get(Volume, desktop.volume_id)
    base = session.get(Volume, params["template_volume_id"])
    plan = DiskPlan(desktop.id, desktop.name, active.id, active.path, template_volume_id=base.id,
                    template_path=base.path, version_id=params["version_id"])
    if active.virtual_size and active.virtual_size > (base.virtual_size or 0):
        plan.virtual_size = active.virtual_size
    for vol in _desktop_volumes(session, desktop):
        if vol.id == active.id:
            continue
        if vol.role == ROLE_STASH or (vol.role == ROLE_SNAPSHOT and not params.get("keep_snapshots")):
            plan.discard.append((vol.id, vol.path))
    if params.get("power_off") and desktop.power_state != PowerState.DOWN and desktop.host_id:
        from manager.provisioning import nodes  # the provisioning side's one adapter to NodeClient

        plan.power_off = nodes.target_of_desktop(session, desktop)
    return plan


def power_off_for_disk_work(plan: DiskPlan) -> None:
    if plan.power_off is not None:
        from manager.provisioning import nodes

        nodes.power_off_if_defined(plan.power_off, plan.desktop_id)


def finish_reimage(session: Session, plan: DiskPlan, params: dict[str, Any], *, job_id: str | None,
                   actor: str) -> None:
    desktop = session.get(Desktop, plan.desktop_id)
    active = session.get(Volume, plan.active_id)
    discarded = {vid for vid, _p in plan.discard}
    active.parent_id = plan.template_volume_id
    session.flush()
    if discarded:
        for snap in session.scalars(select(Snapshot).where(Snapshot.volume_id.in_(discarded))):
            session.delete(snap)
        session.flush()
        # children first: a discarded volume may be the parent of another discarded one
        for vol in sorted((session.get(Volume, v) for v in discarded), key=lambda v: -_depth(session, v)):
            if vol is not None:
                session.delete(vol)
                session.flush()
    active.role = ROLE_DESKTOP
    active.actual_size = fileops.allocated_bytes(active.path)
    if plan.virtual_size:
        active.virtual_size = plan.virtual_size
    was = desktop.template_version_id
    session.execute(update(Desktop).where(Desktop.id == desktop.id, Desktop.task_state == TaskState.REIMAGING)
                    .values(task_state=None, power_state=PowerState.DOWN, template_version_id=plan.version_id,
                            pending_template_version_id=None).execution_options(synchronize_session=False))
    session.refresh(desktop)
    version = session.get(TemplateVersion, plan.version_id)
    moved = "" if was == plan.version_id else " (moved to a new template version)"
    emit(session, "desktop.reimaged", f"{actor} re-imaged desktop {plan.desktop_name} from template version "
         f"{version.number if version else '?'}{moved}", actor=actor, desktop_id=plan.desktop_id,
         template_id=version.template_id if version else None, job_id=job_id)


def _depth(session: Session, vol: Volume | None) -> int:
    depth = 0
    while vol is not None and vol.parent_id:
        depth += 1
        vol = session.get(Volume, vol.parent_id)
    return depth


def apply_pending_version(session: Session, desktop: Desktop, *, actor: str = "system") -> Job | None:
    """For the broker at logoff: if the desktop waits for a new template version (rolling update) and nobody
    is on it any more, re-image it onto that version now. Returns the job, or None when there is nothing to do
    (no pending version, a user is still on it, or a reset already holds the desktop: the reset applies the
    pending version). Call it after ending the user's sessions, in the same transaction."""
    if desktop.pending_template_version_id is None:
        return None
    if desktop.task_state is not None or desktop_in_use(session, desktop):
        return None
    version = session.get(TemplateVersion, desktop.pending_template_version_id)
    return reimage_desktop(session, desktop, version=version, actor=actor,
                           power_off=desktop.power_state != PowerState.DOWN)


@dataclass
class RolloutResult:
    version_id: str
    moved_now: list[str] = field(default_factory=list)  # desktop names re-imaged by a job now
    pending: list[str] = field(default_factory=list)  # in use: they move at logoff/reset
    unchanged: list[str] = field(default_factory=list)  # already on the version
    job_ids: list[str] = field(default_factory=list)


def roll_out_version(session: Session, pool: Pool, version: TemplateVersion, *, actor: str = "system") -> RolloutResult:
    """Move a pool to a template version: idle desktops are re-imaged onto it at once (running idle ones are
    powered off first), desktops with a user on them (or busy with another action) get it as their pending
    version, applied at their next logoff or reset — never under a logged-in user."""
    if version.template_id != pool.template_id:
        raise Invalid(f"template version {version.id} belongs to another template than pool {pool.name}'s")
    version_volume(session, version)
    template = session.get(Template, pool.template_id)
    if pool.template_version_id is not None or template.latest_version_id != version.id:
        pool.template_version_id = version.id
    result = RolloutResult(version.id)
    desktops = list(session.scalars(select(Desktop).where(Desktop.pool_id == pool.id).order_by(Desktop.name)))
    for desktop in desktops:
        if desktop.template_version_id == version.id and desktop.pending_template_version_id in (None, version.id):
            desktop.pending_template_version_id = None
            result.unchanged.append(desktop.name)
            continue
        desktop.pending_template_version_id = version.id
        if desktop.task_state is None and not desktop_in_use(session, desktop):
            job = reimage_desktop(session, desktop, version=version, actor=actor,
                                  power_off=desktop.power_state != PowerState.DOWN)
            result.moved_now.append(desktop.name)
            result.job_ids.append(job.id)
        else:
            result.pending.append(desktop.name)
    session.flush()
    emit(session, "pool.template_rollout", f"{actor} moved pool {pool.name} to template version {version.number}: "
         f"{len(result.moved_now)} desktop(s) now, {len(result.pending)} at their next logoff",
         actor=actor, pool_id=pool.id, template_id=pool.template_id)
    return result


# ---- integrity and backup -------------------------------------------------------------------------------------
def check_images(session: Session, volumes: Iterable[Volume], *, what: str, actor: str = "system",
                 target_kind: str = "", target_id: str = "") -> Job:
    """qemu-img check the volumes (each file alone) as a job; results are in the job's result and as events."""
    ids = [v.id for v in volumes]
    if not ids:
        raise Invalid(f"{what} has no disk image to check")
    return _enqueue(session, "image.check", {"volume_ids": ids}, actor=actor, target_kind=target_kind,
                    target_id=target_id, description=f"check the images of {what}")


def desktop_chain_volumes(session: Session, desktop: Desktop) -> list[Volume]:
    """The desktop's active volume and its own snapshots (the template is checked on its own)."""
    return [v for v in _desktop_volumes(session, desktop) if v.role != ROLE_TEMPLATE]


def export_image(session: Session, volume: Volume, target_dir: str, *, label: str, out_format: str = "qcow2",
                 compress: bool = False, actor: str = "system", desktop: Desktop | None = None,
                 template_id: str | None = None) -> Job:
    """Archive what `volume` reads (its whole chain) as one standalone file <target_dir>/<label>.<format>, as a
    job with progress (qemu-img convert). A desktop must be down (it is locked for the copy). Raises Invalid
    for a bad target directory or format, ImageExists if the target file exists."""
    if out_format not in IMPORT_FORMATS:
        raise Invalid(f"format must be one of {', '.join(IMPORT_FORMATS)}, not {out_format!r}")
    if compress and out_format != "qcow2":
        raise Invalid("only qcow2 exports can be compressed")
    if not target_dir or not os.path.isabs(target_dir):
        raise Invalid(f"target_dir must be an absolute directory path on the manager host, not {target_dir!r}")
    if not os.path.isdir(target_dir):
        raise Invalid(f"target_dir {target_dir} is not an existing directory")
    dest = Path(target_dir) / f"{fileops.check_name('export name', label)}.{out_format}"
    if os.path.lexists(dest):
        raise ImageExists(path=str(dest), actual="an existing file", expected="a new export; remove it or choose "
                          "another directory")
    if volume.status != VOLUME_OK:
        raise Conflict(f"{volume.path} is {volume.status}; wait for its job")
    if desktop is not None:
        _claim(session, desktop, TaskState.SNAPSHOTTING, "export its disk")
    params = {"volume_id": volume.id, "source": volume.path, "dest": str(dest), "format": out_format,
              "compress": compress, "desktop_id": desktop.id if desktop else None}
    return _enqueue(session, "image.export", params, actor=actor,
                    target_kind="desktop" if desktop else "template",
                    target_id=desktop.id if desktop else (template_id or ""),
                    description=f"export {label} to {dest}")


# ---- lineage and accounting -------------------------------------------------------------------------------------
def _usage(path: str) -> tuple[int, int]:
    """(virtual, allocated) bytes of one file from its header and st_blocks; zeros if missing."""
    try:
        allocated = fileops.allocated_bytes(path)
    except FileNotFoundError:
        return 0, 0
    try:
        header = qcow2.read_header(path)
        return header.virtual_size, allocated
    except (ImageInvalid, ImageNotFound):
        return os.stat(path).st_size, allocated


def template_lineage(session: Session, template: Template) -> dict[str, Any]:
    """Each version of the template with its image and every volume that depends on it (desktop overlays,
    snapshots, stashes), each with its chain depth (files in its chain, itself included), virtual and actual
    sizes; the desktops on or moving to each version; and the savings report of the template's desktops."""
    versions = template_versions(session, template.id)
    roots = {v.volume_id: v for v in versions if v.volume_id}
    all_vols = list(session.scalars(select(Volume).where(Volume.parent_id.is_not(None))))
    children: dict[str, list[Volume]] = {}
    for vol in all_vols:
        children.setdefault(vol.parent_id, []).append(vol)
    names = dict(session.execute(select(Desktop.id, Desktop.name)).all())
    out_versions = []
    active_paths: list[str] = []
    active_ids = set(session.scalars(select(Desktop.volume_id).where(Desktop.volume_id.is_not(None))))
    for version in versions:
        entry: dict[str, Any] = {"id": version.id, "number": version.number, "name": version.name,
                                 "latest": template.latest_version_id == version.id,
                                 "created_from_desktop_id": version.created_from_desktop_id, "volume": None,
                                 "dependents": []}
        if version.volume_id and version.volume_id in roots:
            vol = session.get(Volume, version.volume_id)
            virtual, actual = _usage(vol.path)
            entry["volume"] = {"id": vol.id, "path": vol.path, "status": vol.status, "virtual_size": virtual,
                               "actual_size": actual, "chain_depth": 1}
            stack = [(c, 2) for c in children.get(vol.id, [])]
            while stack:
                dep, depth = stack.pop()
                virtual, actual = _usage(dep.path)
                entry["dependents"].append({
                    "volume_id": dep.id, "path": dep.path, "role": dep.role, "status": dep.status,
                    "desktop_id": dep.desktop_id, "desktop_name": names.get(dep.desktop_id),
                    "active": dep.id in active_ids, "chain_depth": depth, "virtual_size": virtual,
                    "actual_size": actual})
                if dep.id in active_ids and os.path.lexists(dep.path):
                    active_paths.append(dep.path)
                stack.extend((c, depth + 1) for c in children.get(dep.id, []))
            entry["dependents"].sort(key=lambda d: (d["desktop_name"] or "", d["chain_depth"]))
        entry["desktops"] = list(session.scalars(select(Desktop.name).where(Desktop.template_version_id == version.id)
                                                 .order_by(Desktop.name)))
        entry["pending_desktops"] = list(session.scalars(
            select(Desktop.name).where(Desktop.pending_template_version_id == version.id).order_by(Desktop.name)))
        out_versions.append(entry)
    report = chain.savings_report(active_paths).to_dict() if active_paths else None
    return {"template_id": template.id, "name": template.name, "latest_version_id": template.latest_version_id,
            "versions": out_versions, "savings": report}


def savings_report(session: Session, template: Template | None = None) -> dict[str, Any]:
    """Disk used by desktops (template + their diffs) vs. the same desktops as full copies, for one template's
    desktops or for all desktops."""
    stmt = select(Volume.path).join(Desktop, Desktop.volume_id == Volume.id)
    if template is not None:
        versions = select(TemplateVersion.id).where(TemplateVersion.template_id == template.id)
        stmt = stmt.where(Desktop.template_version_id.in_(versions))
    paths = [p for p in session.scalars(stmt) if os.path.lexists(p)]
    return chain.savings_report(paths).to_dict()
