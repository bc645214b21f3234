"""Operations on a desktop's chain of qcow2 files, at the file level (no database).

A desktop disk is a chain, top first: active overlay -> snapshot volumes ... -> template version.
Templates are never written. Every operation here works on a powered-off desktop, is idempotent and
crash-safe: new files are built under `.tmp-<job_id>-` names and published by one rename/link, files
are removed only after their replacement is durable, and a re-run after a crash at any point finishes
the job (or finds it done) without leaving orphans. The service layer records which file is active.
"""
from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from core.errors import Invalid
from image_manager import fileops, qcow2, qemu_img
from image_manager.errors import ImageCorrupt, ImageExists, ImageInvalid, ImageNotFound

PathLike = str | os.PathLike[str]


def chain_paths(path: PathLike) -> list[Path]:
    """The image and all its backing files, top first (headers only: fast, no qemu-img)."""
    return [link.path for link in qcow2.backing_chain(path)]


def backing_of(path: PathLike) -> Path | None:
    """The resolved backing file of a qcow2 image, or None for a standalone one."""
    header = qcow2.read_header(path)
    return None if header.backing_file is None else qcow2.resolve_backing(path, header.backing_file)


# ---- snapshots ---------------------------------------------------------------------------------------
def create_snapshot(active: PathLike, new_active: PathLike, *, relative_backing: bool = False,
                    job_id: str | None = None) -> Path:
    """Take an offline external snapshot: `active` becomes read-only history and a new empty overlay
    `new_active` on top of it becomes the disk the guest writes to. Returns `new_active`.

    Idempotent (an existing new_active already backed by active is kept). Raises ImageNotFound if
    `active` is missing, ImageExists if `new_active` exists with another backing file.
    """
    _same_file_guard(active, new_active, "the new active volume must be a new file")
    return qcow2.create_overlay(new_active, active, relative_backing=relative_backing, job_id=job_id)


def revert_to_snapshot(snapshot: PathLike, new_active: PathLike, *, discard: Iterable[PathLike] = (),
                       relative_backing: bool = False, job_id: str | None = None) -> Path:
    """Throw away everything written after `snapshot`: a fresh empty overlay `new_active` on top of it
    becomes the disk, then the volumes in `discard` (the old active one and later snapshots) are deleted.

    If `new_active` is listed in `discard` it is replaced in place (atomically). Raises Invalid if a
    discarded file is `snapshot` or below it.
    """
    snapshot, new_active = Path(snapshot), Path(new_active)
    discard_set = _check_discard(discard, keep=chain_paths(snapshot))
    replace = _real(new_active) in {_real(p) for p in discard_set}
    if replace and _is_fresh_overlay_of(new_active, snapshot):
        replace = False  # a re-run after the replacement already happened
    qcow2.create_overlay(new_active, snapshot, relative_backing=relative_backing, replace=replace,
                         job_id=job_id)
    _remove_all(p for p in discard_set if _real(p) != _real(new_active))
    return new_active


def delete_snapshot(snapshot: PathLike, child: PathLike, *, commit_into_backing: bool = False,
                    protected: Iterable[PathLike] = (),
                    progress: qemu_img.ProgressCallback | None = None,
                    timeout: float | None = None) -> Path | None:
    """Remove the snapshot volume `snapshot` from the chain without changing what `child` reads.

    commit_into_backing=True writes snapshot's data down into its own backing file (cost ∝ snapshot's
    data) and points child at that file; allowed only when that backing file belongs to this desktop and
    has no other child — never for a template. Otherwise child is safely rebased onto snapshot's backing
    file (qemu-img copies into child whatever differs). Then `snapshot` is deleted.
    Files under <root>/templates/ and those in `protected` are never written or deleted (Invalid).
    Returns child's new backing file (None if child became standalone).
    Re-running after a crash at any point completes the job; once done it is a no-op.
    """
    snapshot, child = Path(snapshot), Path(child)
    if fileops.is_template_path(snapshot) or _real(snapshot) in {_real(p) for p in protected}:
        raise Invalid(f"{snapshot} is a template version, not a snapshot: templates are never merged or deleted here")
    child_backing = backing_of(child)
    if child_backing is None or _real(child_backing) != _real(snapshot):
        return _finish_earlier_delete(snapshot, child, child_backing)
    base = backing_of(snapshot)
    if commit_into_backing:
        if base is None:
            raise Invalid(f"{snapshot} has no backing file to commit into")
        if fileops.is_template_path(base) or _real(base) in {_real(p) for p in protected}:
            raise Invalid(f"cannot commit {snapshot} into {base}: it is a template version, which is never written")
        qemu_img.commit(snapshot, keep_top=True, progress=progress, timeout=timeout or qemu_img.COPY_TIMEOUT)
        # base now reads exactly like snapshot did, so only child's header needs to change.
        qemu_img.rebase(child, base, unsafe=True)
    else:
        qemu_img.rebase(child, base, unsafe=False, progress=progress, timeout=timeout)
    fileops.remove(snapshot)
    return base


def _finish_earlier_delete(snapshot: Path, child: Path, child_backing: Path | None) -> Path | None:
    """child no longer reads from snapshot: a previous run got past the rebase, or this is a mistake."""
    if not os.path.lexists(snapshot):
        qcow2.backing_chain(child)  # the chain must be whole; raises naming a missing backing file
        return child_backing
    snapshot_base = backing_of(snapshot)
    same = (snapshot_base is None and child_backing is None) or (
        snapshot_base is not None and child_backing is not None and _real(snapshot_base) == _real(child_backing))
    if not same:
        raise Invalid(f"{child} is not backed by {snapshot} (its backing file is {child_backing})")
    fileops.remove(snapshot)
    return child_backing


# ---- re-image ----------------------------------------------------------------------------------------
def reimage(active: PathLike, template: PathLike, *, new_active: PathLike | None = None,
            discard: Iterable[PathLike] = (), virtual_size: int | None = None,
            relative_backing: bool = False, job_id: str | None = None) -> Path:
    """Drop a desktop's changes: a fresh empty overlay on `template` becomes its disk.

    With new_active None (or equal to active) `active` is replaced in place, atomically; otherwise
    `new_active` is created and `active` is deleted. Volumes in `discard` (old snapshots) are deleted
    after the new disk is durable. Returns the new disk's path.
    """
    active, template = Path(active), Path(template)
    target = active if new_active is None else Path(new_active)
    keep = chain_paths(template)
    to_remove = _check_discard([*discard, *([] if _real(target) == _real(active) else [active])], keep=keep)
    in_place = _real(target) == _real(active)
    replace = in_place and os.path.lexists(target) and not _is_fresh_overlay_of(target, template)
    qcow2.create_overlay(target, template, virtual_size=virtual_size, relative_backing=relative_backing,
                         replace=replace, job_id=job_id)
    _remove_all(p for p in to_remove if _real(p) != _real(target))
    return target


# ---- full copies ---------------------------------------------------------------------------------------
def flatten(top: PathLike, dest: PathLike, *, out_fmt: str = "qcow2", compress: bool = False,
            progress: qemu_img.ProgressCallback | None = None, job_id: str | None = None,
            timeout: float = qemu_img.COPY_TIMEOUT, mode: int | None = None) -> Path:
    """Copy what `top` reads (its whole chain) into a new standalone image `dest`, e.g. a desktop's
    disk into a new template version, or an export. Returns `dest`. `mode` (e.g. 0o640 for an export) is
    set on the file before it gets its final name, so it is never visible with qemu-img's default mode.

    Built as a temporary, checked with qemu-img check, then published without clobbering. Idempotent:
    an existing standalone `dest` is kept (a published file is always complete). Raises ImageExists if
    `dest` exists with a backing file, ImageCorrupt if the copy fails its check.
    """
    top, dest = Path(top), Path(dest)
    _same_file_guard(top, dest, "the copy must be a new file")
    if os.path.lexists(dest):
        if out_fmt == "qcow2":
            header = qcow2.read_header(dest)
            if header.backing_file is not None:
                raise ImageExists(path=str(dest), actual=f"backing file {header.backing_file}",
                                  expected="a standalone copy")
        return dest
    qcow2.backing_chain(top)  # a clear ImageNotFound naming the missing link, before any copying
    with fileops.atomic_output(dest, job_id=job_id, replace=False) as tmp:
        qemu_img.convert(top, tmp, out_fmt=out_fmt, compress=compress, progress=progress, timeout=timeout)
        if mode is not None:
            os.chmod(tmp, mode)
        if out_fmt == "qcow2":
            result = qemu_img.check(tmp)
            if result.status in ("corrupt", "error"):
                raise ImageCorrupt(path=str(dest), reason=f"the copy failed qemu-img check: {result}")
    return dest


def full_clone(source: PathLike, dest: PathLike, *, progress: qemu_img.ProgressCallback | None = None,
               job_id: str | None = None, timeout: float = qemu_img.COPY_TIMEOUT) -> Path:
    """A desktop disk that shares nothing with `source`'s chain (an uncompressed flatten)."""
    return flatten(source, dest, progress=progress, job_id=job_id, timeout=timeout)


# ---- accounting ----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class VolumeUsage:
    path: Path
    virtual_size: int  # bytes the guest sees
    actual_size: int  # bytes allocated on disk by this file alone (st_blocks)
    chain_depth: int  # files in the chain including this one (1 = standalone)
    backing: Path | None


def volume_usage(path: PathLike) -> VolumeUsage:
    """Sizes of one volume, from its header and st_blocks (no qemu-img)."""
    links = qcow2.backing_chain(path)
    top = links[0]
    virtual = top.header.virtual_size if top.header else os.stat(top.path).st_size
    return VolumeUsage(top.path, virtual, fileops.allocated_bytes(top.path), len(links),
                       links[1].path if len(links) > 1 else None)


@dataclass(frozen=True)
class SavingsReport:
    """Disk used by desktops sharing templates vs. the same desktops as standalone copies."""

    desktops: int
    shared_files: int  # files in the chains of two or more desktops (templates, usually)
    shared_bytes: int  # their allocated bytes, counted once
    private_bytes: int  # allocated bytes of files used by a single desktop (its diffs and snapshots)
    total_bytes: int  # shared + private: what is really on disk
    full_copies_bytes: int  # every desktop as a sparse standalone copy: Σ allocated bytes of its chain
    thick_copies_bytes: int  # every desktop as a preallocated copy: Σ virtual sizes
    saved_bytes: int  # full_copies_bytes - total_bytes
    saving_ratio: float  # full_copies_bytes / total_bytes (e.g. 9.1 means 9.1x less disk)

    def to_dict(self) -> dict[str, int | float]:
        return asdict(self)


def savings_report(desktop_disks: Iterable[PathLike]) -> SavingsReport:
    """Compare what the desktops' chains occupy with what standalone copies would (headers + st_blocks)."""
    users: dict[str, int] = {}
    sizes: dict[str, int] = {}
    full = thick = desktops = 0
    for disk in desktop_disks:
        desktops += 1
        links = qcow2.backing_chain(disk)
        chain_bytes = 0
        for link in links:
            key = _real(link.path)
            if key not in sizes:
                sizes[key] = fileops.allocated_bytes(link.path)
            users[key] = users.get(key, 0) + 1
            chain_bytes += sizes[key]
        full += chain_bytes
        top = links[0]
        thick += top.header.virtual_size if top.header else os.stat(top.path).st_size
    shared = [k for k, n in users.items() if n > 1]
    shared_bytes = sum(sizes[k] for k in shared)
    private_bytes = sum(sizes[k] for k, n in users.items() if n == 1)
    total = shared_bytes + private_bytes
    return SavingsReport(desktops, len(shared), shared_bytes, private_bytes, total, full, thick,
                         full - total, round(full / total, 3) if total else 0.0)


# ---- helpers ---------------------------------------------------------------------------------------------
def _real(path: PathLike) -> str:
    return os.path.realpath(path)


def _same_file_guard(a: PathLike, b: PathLike, why: str) -> None:
    if _real(a) == _real(b):
        raise Invalid(f"{b} is the same file as {a}: {why}")


def _check_discard(discard: Iterable[PathLike], *, keep: Sequence[Path]) -> list[Path]:
    kept = {_real(p) for p in keep}
    out = []
    for path in discard:
        if _real(path) in kept:
            raise Invalid(f"{path} cannot be deleted: the new disk reads from it")
        out.append(Path(path))
    return out


def _remove_all(paths: Iterable[Path]) -> None:
    for path in paths:
        fileops.remove(path)


def _is_fresh_overlay_of(path: Path, backing: Path) -> bool:
    """Whether `path` is an overlay of `backing` holding no data (e.g. published by an earlier run).

    Lets a re-run skip a replace that already happened instead of redoing it over a disk in use since.
    """
    try:
        header = qcow2.read_header(path)
    except (ImageNotFound, ImageInvalid):
        return False
    if header.backing_file is None or _real(qcow2.resolve_backing(path, header.backing_file)) != _real(backing):
        return False
    return qcow2.is_empty(path)
