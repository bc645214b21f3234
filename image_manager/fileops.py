"""Crash-safe file operations on a storage domain, and where each file lives in it.

Every image file is produced under a temporary name in its final directory and published by one
rename (or hard link, when an existing file must not be clobbered) after the data and the directory
are fsynced. A crash therefore leaves either the old state or the new one, plus at worst a
`.tmp-<job_id>-<name>` file that a re-run of the same job removes and `find_orphans` reports.

Layout of a storage domain (a directory shared by every host):

    <root>/templates/<template_id>/<version>.qcow2
    <root>/desktops/<desktop_id>/<volume_id>.qcow2
    <root>/**/.tmp-<job_id>-<final name>             work in progress of job <job_id>
"""
from __future__ import annotations

import contextlib
import errno
import os
import re
import time
import uuid
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from core.errors import Invalid
from image_manager.errors import ImageExists, StorageFull

TMP_PREFIX = ".tmp-"
IMAGE_SUFFIX = ".qcow2"
TEMPLATES_DIR = "templates"
DESKTOPS_DIR = "desktops"

# Ids become path components: keep them to a safe alphabet so no id can escape its directory.
_SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")


def check_name(kind: str, value: object) -> str:
    """Return `value` as a path component, or raise Invalid if it could escape or hide in a directory."""
    text = str(value)
    if not _SAFE_NAME.match(text) or ".." in text:
        raise Invalid(
            f"{kind} {text!r} cannot be used in a file name: use 1-128 letters, digits, '_', '-' or '.',"
            " starting with a letter or digit"
        )
    return text


def resolve_inside(name: str, roots: Sequence[str | os.PathLike[str]], *, what: str, where: str,
                   kind: str = "file") -> Path:
    """The real path a client-given `name` names inside one of `roots`: a path relative to a root (the first
    root holding it wins) or an absolute path inside one. Every symlink is followed before the check, so none
    leads out; '..' may not climb out either. `kind` is "file" (a regular file) or "dir" (a directory).
    Raises Invalid, naming `where` (e.g. "import directories") and the roots, when it is outside them, missing
    or of the wrong kind."""
    real_roots = [Path(os.path.realpath(root)) for root in roots]
    listed = ", ".join(str(root) for root in real_roots)
    if "\x00" in name:
        raise Invalid(f"{what} must not contain a NUL character")
    candidates = [Path(name)] if os.path.isabs(name) else [root / name for root in real_roots]
    inside: list[Path] = []
    for candidate in candidates:
        real = Path(os.path.realpath(candidate))
        if any(real.is_relative_to(root) for root in real_roots):
            inside.append(real)
    if not inside:
        raise Invalid(f"{what} {name!r} is outside the {where} ({listed}): give a name inside one of them")
    try:
        for real in inside:
            if kind == "dir" and real.is_dir() or kind == "file" and real.is_file():
                return real
    except OSError as exc:  # a name too long for the file system (ENAMETOOLONG), a loop of links...
        raise Invalid(f"{what} {name!r} cannot be used in the {where}: {exc.strerror}") from None
    if any(os.path.lexists(real) for real in inside):
        wanted = "a directory" if kind == "dir" else "a regular file"
        raise Invalid(f"{what} {name!r} in the {where} ({listed}) is not {wanted}")
    raise Invalid(f"{what} {name!r} does not exist in the {where} ({listed})")


@dataclass(frozen=True)
class StorageLayout:
    """Where each file of one storage domain lives."""

    root: Path

    def __post_init__(self) -> None:
        object.__setattr__(self, "root", Path(self.root))

    def template_dir(self, template_id: str) -> Path:
        return self.root / TEMPLATES_DIR / check_name("template id", template_id)

    def template_path(self, template_id: str, version: int | str) -> Path:
        return self.template_dir(template_id) / f"{check_name('template version', version)}{IMAGE_SUFFIX}"

    def desktop_dir(self, desktop_id: str) -> Path:
        return self.root / DESKTOPS_DIR / check_name("desktop id", desktop_id)

    def desktop_volume_path(self, desktop_id: str, volume_id: str) -> Path:
        return self.desktop_dir(desktop_id) / f"{check_name('volume id', volume_id)}{IMAGE_SUFFIX}"


def is_template_path(path: str | os.PathLike[str]) -> bool:
    """Whether `path` is laid out as a template version (<root>/templates/<id>/<version>.qcow2)."""
    return Path(path).parent.parent.name == TEMPLATES_DIR


def tmp_path_for(target: str | os.PathLike[str], job_id: str | None = None) -> Path:
    """The temporary name under which `target` is built: same directory (so rename is atomic).

    With a job id the name is deterministic, so a re-run of the job after a crash finds and replaces
    its own leftover; without one a random tag is used and `find_orphans` will report a leftover.
    """
    target = Path(target)
    tag = check_name("job id", job_id) if job_id is not None else uuid.uuid4().hex[:12]
    return target.with_name(f"{TMP_PREFIX}{tag}-{target.name}")


def fsync_dir(directory: str | os.PathLike[str]) -> None:
    """Make the directory's entries (a rename, a new or removed file) durable."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_file(path: str | os.PathLike[str]) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def sync_filesystems(paths: Iterable[str | os.PathLike[str]]) -> None:
    """Flush everything written to the file systems holding `paths` (one syncfs per file system).

    For large batches this replaces thousands of fsyncs by one journal commit; it also flushes other
    writers' dirty data on that file system, so single-file operations use fsync instead.
    """
    done: set[int] = set()
    for path in paths:
        device = os.stat(path).st_dev
        if device in done:
            continue
        done.add(device)
        fd = os.open(path, os.O_RDONLY)
        try:
            if _libc_syncfs is None or _libc_syncfs(fd) != 0:
                os.sync()
        finally:
            os.close(fd)


def _load_syncfs():  # noqa: ANN202 - a ctypes function or None
    try:
        import ctypes
        import ctypes.util

        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        func = libc.syncfs
        func.argtypes = [ctypes.c_int]
        return func
    except (OSError, AttributeError):
        return None


_libc_syncfs = _load_syncfs()


def ensure_dir(directory: str | os.PathLike[str], *, sync: bool = True) -> Path:
    """Create `directory` (and parents), durably unless sync=False; a no-op when it exists."""
    directory = Path(directory)
    if directory.is_dir():
        return directory
    missing = []
    probe = directory
    while not probe.exists():
        missing.append(probe)
        probe = probe.parent
    directory.mkdir(parents=True, exist_ok=True)
    if sync:
        for created in reversed(missing):
            fsync_dir(created.parent)
    return directory


def publish(tmp: str | os.PathLike[str], target: str | os.PathLike[str], *, replace: bool,
            sync_data: bool = True, sync_dir: bool = True) -> None:
    """Give the finished file `tmp` its final name `target` in one atomic step.

    replace=True renames over an existing target. replace=False never clobbers: it hard-links then
    unlinks the temporary name, raising ImageExists if the target appeared meanwhile.
    """
    tmp, target = Path(tmp), Path(target)
    if sync_data:
        fsync_file(tmp)
    try:
        if replace:
            os.replace(tmp, target)
        else:
            _link_exclusive(tmp, target)
    except OSError as exc:
        _raise_for_os_error(exc, target)
        raise
    if sync_dir:
        fsync_dir(target.parent)


def _link_exclusive(tmp: Path, target: Path) -> None:
    try:
        os.link(tmp, target)
    except FileExistsError:
        raise ImageExists(path=str(target), actual="another file", expected="a new file") from None
    except OSError as exc:
        # Some file systems have no hard links; fall back to a checked rename (not race-free).
        if exc.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EMLINK):
            raise
        if target.exists():
            raise ImageExists(path=str(target), actual="another file", expected="a new file") from None
        os.rename(tmp, target)
        return
    os.unlink(tmp)


def _raise_for_os_error(exc: OSError, path: Path) -> None:
    if exc.errno == errno.ENOSPC:
        raise StorageFull(path=str(path)) from exc


@contextlib.contextmanager
def atomic_output(target: str | os.PathLike[str], *, job_id: str | None = None,
                  replace: bool = False) -> Iterator[Path]:
    """Yield a temporary path in target's directory to fill; publish it as `target` on success.

    A leftover temporary of the same job is removed first. On an exception the temporary is removed and
    the target is untouched. See `publish` for `replace`.
    """
    target = Path(target)
    ensure_dir(target.parent)
    tmp = tmp_path_for(target, job_id)
    remove(tmp, sync_dir=False)
    try:
        yield tmp
        if not tmp.exists():
            raise FileNotFoundError(errno.ENOENT, "the temporary file was never written", str(tmp))
        publish(tmp, target, replace=replace)
    except BaseException:
        remove(tmp, sync_dir=False)
        raise


def atomic_write_bytes(target: str | os.PathLike[str], data: bytes, *, job_id: str | None = None,
                       replace: bool = True) -> Path:
    """Write `data` as the whole content of `target`, atomically and durably."""
    with atomic_output(target, job_id=job_id, replace=replace) as tmp:
        try:
            with open(tmp, "wb") as fh:
                fh.write(data)
        except OSError as exc:
            _raise_for_os_error(exc, Path(target))
            raise
    return Path(target)


def remove(path: str | os.PathLike[str], *, sync_dir: bool = True) -> bool:
    """Delete a file if it exists (idempotent); return whether something was removed."""
    path = Path(path)
    try:
        os.unlink(path)
    except FileNotFoundError:
        return False
    if sync_dir:
        fsync_dir(path.parent)
    return True


def remove_dir_if_empty(directory: str | os.PathLike[str]) -> bool:
    try:
        os.rmdir(directory)
    except (FileNotFoundError, OSError):
        return False
    fsync_dir(Path(directory).parent)
    return True


def allocated_bytes(path: str | os.PathLike[str]) -> int:
    """Bytes the file really occupies on disk (sparse regions excluded)."""
    return os.stat(path).st_blocks * 512


@dataclass(frozen=True)
class Orphan:
    path: Path
    reason: str  # "temporary" (work in progress of a dead job) or "unreferenced" (no record knows it)
    size_bytes: int
    age_seconds: float


def find_orphans(storage_dir: str | os.PathLike[str], known_paths: Iterable[str | os.PathLike[str]], *,
                 active_job_ids: Iterable[str] = (), min_age_seconds: float = 0.0) -> list[Orphan]:
    """Files under templates/ and desktops/ that no record knows, and temporaries of finished jobs.

    Temporaries whose name starts with `.tmp-<id>-` for an id in `active_job_ids` are in progress and
    skipped; so is anything younger than `min_age_seconds` (a job that has not been recorded yet).
    Nothing is deleted: the caller decides.
    """
    root = Path(storage_dir)
    known = {os.path.realpath(p) for p in known_paths}
    active_prefixes = tuple(f"{TMP_PREFIX}{job}-" for job in active_job_ids)
    now = time.time()
    orphans: list[Orphan] = []
    for area in (TEMPLATES_DIR, DESKTOPS_DIR):
        for dirpath, _dirnames, filenames in os.walk(root / area):
            for name in filenames:
                path = Path(dirpath) / name
                try:
                    st = os.lstat(path)
                except FileNotFoundError:
                    continue
                age = now - st.st_mtime
                if age < min_age_seconds:
                    continue
                if name.startswith(TMP_PREFIX):
                    if active_prefixes and name.startswith(active_prefixes):
                        continue
                    orphans.append(Orphan(path, "temporary", st.st_blocks * 512, age))
                elif os.path.realpath(path) not in known:
                    orphans.append(Orphan(path, "unreferenced", st.st_blocks * 512, age))
    orphans.sort(key=lambda o: str(o.path))
    return orphans
