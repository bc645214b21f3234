"""Image routes: template import/upload and versions, desktop snapshots, re-image, rolling updates, lineage,
savings, checks, exports and reconcile. Long work answers 202 with the job (GET /jobs/{id} to follow it)."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Query, Request, Response
from pydantic import Field

from core.errors import Invalid, TooLarge
from image_manager.errors import StorageFull
from image_manager import fileops, service
from manager.api import schemas as s
from manager.api.common import DbSession
from manager.api.openapi import error_responses
from manager.api.system import _job_out
from manager.auth import Principal, require
from manager.config import Settings, ensure_data_dir, get_settings
from manager.jobs import enqueue
from manager.models import Pool, Volume

router = APIRouter(tags=["images"])
TemplatesWrite = Annotated[Principal, Depends(require("templates:write"))]
TemplatesRead = Annotated[Principal, Depends(require("templates:read"))]
DesktopsWrite = Annotated[Principal, Depends(require("desktops:write"))]
DesktopsRead = Annotated[Principal, Depends(require("desktops:read"))]
PoolsWrite = Annotated[Principal, Depends(require("pools:write"))]
StorageWrite = Annotated[Principal, Depends(require("storage:write"))]
ImageFormat = Literal["qcow2", "raw"]
MAX_UPLOAD_CHUNK = 1 << 20


class ImportIn(s.In):
    source_path: Annotated[str, Field(min_length=1, max_length=4096, description="a file name (or a path relative "
                                      "to it) in one of the import directories, VDI_IMPORT_DIRS")]
    format: ImageFormat | None = Field(default=None, description="source format; probed when omitted")
    storage_domain_id: s.Id | None = Field(default=None, description="default: the template's storage domain")
    version_name: Annotated[str, Field(max_length=255)] = ""


class VersionFromDesktopIn(s.In):
    desktop_id: s.Id
    name: Annotated[str, Field(max_length=255)] = ""


class SnapshotIn(s.In):
    name: s.Name
    description: s.Text = ""


# The fields of image_manager.service.SnapshotInfo (listed there only), validated from its attributes.
SnapshotOut = s.out_of("SnapshotOut", service.SnapshotInfo)


class SnapshotCreated(s.Out):
    snapshot_id: str
    job: s.JobOut


class ReimageIn(s.In):
    template_version_id: s.Id | None = Field(default=None, description="default: pending, else current version")
    keep_snapshots: bool = False
    power_off: bool = Field(default=False, description="pull the plug first if the desktop runs (idle only)")


class RolloutIn(s.In):
    template_version_id: s.Id


class RolloutOut(s.Out):
    version_id: str
    moved_now: list[str]
    pending: list[str]
    unchanged: list[str]
    job_ids: list[str]


class ExportIn(s.In):
    target_dir: Annotated[str, Field(max_length=4096, description="an existing directory inside one of the export "
                                     "directories (VDI_EXPORT_DIRS), relative to it; empty = the first of them")] = ""
    format: ImageFormat = "qcow2"
    compress: bool = False


class ReconcileIn(s.In):
    dead_after_seconds: float | None = Field(default=None, ge=0, le=7 * 86400, description="a running image job whose lease was not renewed this long is taken as dead; empty = the job lease (VDI_JOB_LEASE_SECONDS)")
    min_age_seconds: float = Field(default=3600.0, ge=0, le=30 * 86400)


def _job(job) -> s.JobOut:
    return _job_out(job)


def transfer_dirs(kind: Literal["import", "export"], settings: Settings | None = None) -> list[Path]:
    """The import or export directories (VDI_IMPORT_DIRS / VDI_EXPORT_DIRS). The default one, under the data
    directory, is created when missing: the import directory 0700 (only the manager reads what is put there),
    the export directory 0750 (its files are 0640)."""
    settings = settings or get_settings()
    configured = settings.import_dirs if kind == "import" else settings.export_dirs
    dirs = settings.effective_import_dirs if kind == "import" else settings.effective_export_dirs
    if not configured.strip():
        mode = 0o700 if kind == "import" else 0o750
        ensure_data_dir(settings.data_dir)
        try:
            dirs[0].mkdir(mode=mode)
        except FileExistsError:
            pass  # an operator's own mode is kept
        else:
            dirs[0].chmod(mode)  # the umask may have taken bits the mode asked for; it never adds any
    return dirs


def _import_source(name: str) -> str:
    return str(fileops.resolve_inside(name, transfer_dirs("import"), what="source_path", where="import directories"))


def _export_target(name: str) -> str:
    return str(fileops.resolve_inside(name or ".", transfer_dirs("export"), what="target_dir",
                                      where="export directories", kind="dir"))


# ---- templates ---------------------------------------------------------------------------------------------
@router.post("/templates/{template_id}/import", response_model=s.JobOut, status_code=202)
def import_template(template_id: str, payload: ImportIn, session: DbSession, who: TemplatesWrite) -> Any:
    """Import a qcow2/raw file from an import directory (VDI_IMPORT_DIRS), named relative to it, as the
    template's next version (a job with progress)."""
    template = service.get_template(session, template_id)
    return _job(service.import_template_image(
        session, template, source_path=_import_source(payload.source_path), source_format=payload.format,
        storage_domain_id=payload.storage_domain_id, version_name=payload.version_name, actor=who.name))


# The app's body limit (settings.max_body_bytes, manager.api.guard) is for JSON; an image streams to disk under
# its own limit, settings.max_upload_bytes, which the route checks itself: declaring a max_body_size of its own
# takes the route out of the guard's limit.
@router.post("/templates/{template_id}/upload", response_model=s.JobOut, status_code=202,
             max_body_size=1 << 62, openapi_extra={"requestBody": {"required": True, "content": {
                 "application/octet-stream": {"schema": {"type": "string", "format": "binary"}}}}})
async def upload_template(template_id: str, request: Request, session: DbSession, who: TemplatesWrite,
                          format: Annotated[ImageFormat | None, Query(description="probed when omitted")] = None,
                          storage_domain_id: Annotated[str | None, Query(max_length=36)] = None,
                          version_name: Annotated[str, Query(max_length=255)] = "") -> Any:
    """Upload an image as the request body (application/octet-stream); it is imported like a file by a job."""
    limit = get_settings().max_upload_bytes
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise TooLarge(limit=limit)
    template = service.get_template(session, template_id)
    path = service.upload_path(session, template, storage_domain_id)
    size = 0
    try:
        with open(path, "wb") as fh:
            async for chunk in request.stream():
                size += len(chunk)
                if size > limit:
                    raise TooLarge(limit=limit)
                fh.write(chunk)
            fh.flush()
            os.fsync(fh.fileno())
        if size == 0:
            raise Invalid("the upload is empty: send the image file as the request body")
        return _job(service.import_template_image(
            session, template, source_path=str(path), source_format=format, storage_domain_id=storage_domain_id,
            version_name=version_name, actor=who.name, delete_source=True))
    except OSError as exc:
        fileops.remove(path, sync_dir=False)
        if exc.errno == 28:
            raise StorageFull(path=str(path)) from exc
        raise
    except BaseException:
        fileops.remove(path, sync_dir=False)
        raise


@router.post("/templates/{template_id}/versions", response_model=s.JobOut, status_code=202)
def new_version_from_desktop(template_id: str, payload: VersionFromDesktopIn, session: DbSession,
                             who: TemplatesWrite) -> Any:
    """A new version of the template from a powered-off desktop (its disk flattened; a job)."""
    template = service.get_template(session, template_id)
    desktop = service.get_desktop(session, payload.desktop_id)
    return _job(service.create_version_from_desktop(session, desktop, template=template, name=payload.name,
                                                    actor=who.name))


@router.delete("/templates/{template_id}/versions/{version_id}", status_code=204)
def delete_version(template_id: str, version_id: str, session: DbSession, who: TemplatesWrite) -> Response:
    """Delete a version and its image; 409 naming the desktops, pools and volumes that still use it."""
    template = service.get_template(session, template_id)
    service.delete_template_version(session, template, service.get_version(session, template, version_id),
                                    actor=who.name)
    return Response(status_code=204)


@router.get("/templates/{template_id}/lineage")
def template_lineage(template_id: str, session: DbSession, who: TemplatesRead) -> dict[str, Any]:
    """Versions, the volumes built on each (chain depth, virtual/actual sizes) and the savings report."""
    return service.template_lineage(session, service.get_template(session, template_id))


@router.get("/templates/{template_id}/savings")
def template_savings(template_id: str, session: DbSession, who: TemplatesRead) -> dict[str, Any]:
    """Disk used by this template's desktops (template + diffs) vs. as full copies."""
    return service.savings_report(session, service.get_template(session, template_id))


@router.get("/images/savings")
def all_savings(session: DbSession, who: TemplatesRead) -> dict[str, Any]:
    """Disk used by all desktops (templates + diffs) vs. as full copies."""
    return service.savings_report(session)


@router.post("/templates/{template_id}/versions/{version_id}/check", response_model=s.JobOut, status_code=202)
def check_version(template_id: str, version_id: str, session: DbSession, who: TemplatesWrite) -> Any:
    """qemu-img check the version's image (a job)."""
    template = service.get_template(session, template_id)
    version = service.get_version(session, template, version_id)
    volume = session.get(Volume, version.volume_id) if version.volume_id else None
    return _job(service.check_images(session, [volume] if volume else [], what=f"{template.name} v{version.number}",
                                     actor=who.name, target_kind="template", target_id=template.id))


@router.post("/templates/{template_id}/versions/{version_id}/export", response_model=s.JobOut, status_code=202)
def export_version(template_id: str, version_id: str, payload: ExportIn, session: DbSession,
                   who: TemplatesWrite) -> Any:
    """Archive the version's image into an export directory (VDI_EXPORT_DIRS) as a 0640 file (a job)."""
    template = service.get_template(session, template_id)
    version = service.get_version(session, template, version_id)
    volume = service.version_volume(session, version)
    return _job(service.export_image(session, volume, _export_target(payload.target_dir),
                                     label=f"{template.name}-v{version.number}",
                                     out_format=payload.format, compress=payload.compress, actor=who.name,
                                     template_id=template.id))


# ---- desktops ---------------------------------------------------------------------------------------------------
# These check at once that the desktop's host can be reached (a 503 when it cannot), then work in a job.
HOST_CHECKED = error_responses(503)


@router.get("/desktops/{desktop_id}/snapshots", response_model=list[SnapshotOut])
def list_snapshots(desktop_id: str, session: DbSession, who: DesktopsRead) -> Any:
    """The desktop's snapshots, oldest first."""
    desktop = service.get_desktop(session, desktop_id)
    return [SnapshotOut.model_validate(info) for info in service.list_snapshots(session, desktop)]


@router.post("/desktops/{desktop_id}/snapshots", response_model=SnapshotCreated, status_code=202,
             responses=HOST_CHECKED)
def create_snapshot(desktop_id: str, payload: SnapshotIn, session: DbSession, who: DesktopsWrite) -> Any:
    """Take a disk snapshot of a powered-off desktop (a job)."""
    desktop = service.get_desktop(session, desktop_id)
    snap, job = service.create_snapshot(session, desktop, payload.name, description=payload.description,
                                        actor=who.name)
    return SnapshotCreated(snapshot_id=snap.id, job=_job(job))


def _snapshot_action(action):
    def endpoint(desktop_id: str, snapshot_id: str, session: DbSession, who: DesktopsWrite) -> Any:
        desktop = service.get_desktop(session, desktop_id)
        snap = service.get_snapshot(session, desktop, snapshot_id)
        return _job(action(session, desktop, snap, actor=who.name))

    return endpoint


router.add_api_route("/desktops/{desktop_id}/snapshots/{snapshot_id}/revert", _snapshot_action(service.revert_to_snapshot),
                     methods=["POST"], response_model=s.JobOut, status_code=202, responses=HOST_CHECKED,
                     summary="Revert the desktop's disk to the snapshot (a job)")
router.add_api_route("/desktops/{desktop_id}/snapshots/{snapshot_id}/preview", _snapshot_action(service.preview_snapshot),
                     methods=["POST"], response_model=s.JobOut, status_code=202, responses=HOST_CHECKED,
                     summary="Preview the snapshot; then commit or undo the preview (a job)")
router.add_api_route("/desktops/{desktop_id}/snapshots/{snapshot_id}", _snapshot_action(service.delete_snapshot),
                     methods=["DELETE"], response_model=s.JobOut, status_code=202, responses=HOST_CHECKED,
                     summary="Delete the snapshot, merging its data into what is built on it (a job)")


@router.post("/desktops/{desktop_id}/preview/commit", response_model=s.JobOut, status_code=202)
def commit_preview(desktop_id: str, session: DbSession, who: DesktopsWrite) -> Any:
    """Keep the previewed snapshot's state (the pre-preview disk is deleted)."""
    return _job(service.commit_preview(session, service.get_desktop(session, desktop_id), actor=who.name))


@router.post("/desktops/{desktop_id}/preview/undo", response_model=s.JobOut, status_code=202)
def undo_preview(desktop_id: str, session: DbSession, who: DesktopsWrite) -> Any:
    """Return to the disk as it was before the preview."""
    return _job(service.undo_preview(session, service.get_desktop(session, desktop_id), actor=who.name))


@router.post("/desktops/{desktop_id}/reimage", response_model=s.JobOut, status_code=202, responses=HOST_CHECKED)
def reimage(desktop_id: str, payload: ReimageIn, session: DbSession, who: DesktopsWrite) -> Any:
    """Give the desktop a fresh overlay on its template version (or the given one); never under a user."""
    desktop = service.get_desktop(session, desktop_id)
    version = service.version_by_id(session, payload.template_version_id) if payload.template_version_id else None
    return _job(service.reimage_desktop(session, desktop, version=version, keep_snapshots=payload.keep_snapshots,
                                        power_off=payload.power_off, actor=who.name))


@router.post("/desktops/{desktop_id}/check", response_model=s.JobOut, status_code=202)
def check_desktop(desktop_id: str, session: DbSession, who: DesktopsWrite) -> Any:
    """qemu-img check the desktop's disk and snapshots (a job)."""
    desktop = service.get_desktop(session, desktop_id)
    return _job(service.check_images(session, service.desktop_chain_volumes(session, desktop),
                                     what=f"desktop {desktop.name}", actor=who.name, target_kind="desktop",
                                     target_id=desktop.id))


@router.post("/desktops/{desktop_id}/export", response_model=s.JobOut, status_code=202)
def export_desktop(desktop_id: str, payload: ExportIn, session: DbSession, who: DesktopsWrite) -> Any:
    """Archive what the powered-off desktop's disk reads as one standalone 0640 file in an export directory
    (VDI_EXPORT_DIRS; a job)."""
    desktop = service.get_desktop(session, desktop_id)
    volume = service.active_volume(session, desktop)
    return _job(service.export_image(session, volume, _export_target(payload.target_dir), label=desktop.name,
                                     out_format=payload.format, compress=payload.compress, actor=who.name,
                                     desktop=desktop))


# ---- pools and maintenance -----------------------------------------------------------------------------------------
@router.post("/pools/{pool_id}/template-version", response_model=RolloutOut)
def roll_out(pool_id: str, payload: RolloutIn, session: DbSession, who: PoolsWrite) -> Any:
    """Move the pool to a template version: idle desktops now, desktops in use at their next logoff."""
    pool = session.get(Pool, pool_id)
    if pool is None:
        raise service.NotFound(kind="pool", id=pool_id)
    version = service.version_by_id(session, payload.template_version_id)
    return RolloutOut.model_validate(service.roll_out_version(session, pool, version, actor=who.name))


@router.post("/images/reconcile", response_model=s.JobOut, status_code=202)
def reconcile(payload: ReconcileIn, session: DbSession, who: StorageWrite) -> Any:
    """Find and clean what crashed image jobs left behind (a job; what it cleans is reported as events)."""
    return _job(enqueue(session, "image.reconcile", params=payload.model_dump(), description="image reconcile",
                        created_by=who.name, total=1))
