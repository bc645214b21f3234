"""qcow2 headers in pure Python: write thin overlays without a qemu-img process, read headers fast.

An overlay written here is a complete, empty qcow2 (version 3) image: one header cluster holding the
header, a "backing file format" extension and the backing file name; a refcount table and refcount
block(s) that count every metadata cluster exactly once; and an all-zero L1 table (no L2 tables, no
data), so every read falls through to the backing file and the first guest write allocates. The
layout follows QEMU's docs/interop/qcow2.txt; `qemu-img check` finds neither errors nor leaks.

Cluster order in the file: header | refcount table | refcount block(s) | L1 table. The L1 table is
all zeros and last, so it is never written: the file is extended with ftruncate and stays sparse.
"""
from __future__ import annotations

import errno
import os
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from core.errors import Invalid
from image_manager import fileops
from image_manager.errors import ImageExists, ImageInvalid, ImageNotFound, StorageFull

MAGIC = b"QFI\xfb"
DEFAULT_CLUSTER_SIZE = 64 * 1024
MIN_CLUSTER_BITS = 9  # 512 B, the format's minimum
MAX_CLUSTER_BITS = 21  # 2 MiB, QEMU's implementation limit
MAX_BACKING_NAME_BYTES = 1023
MAX_L1_TABLE_BYTES = 32 * 1024 * 1024  # QEMU refuses larger L1 tables
MAX_REFCOUNT_TABLE_BYTES = 8 * 1024 * 1024
SECTOR = 512
_FSYNC_BATCH = 256  # open descriptors held at once while a batch is written
_SYNCFS_BATCH = 32  # from this many new overlays on, one syncfs replaces per-file and per-dir fsyncs

_HEADER_V2 = struct.Struct(">4sIQIIQIIQQIIQ")  # 72 bytes
_HEADER_V3_TAIL = struct.Struct(">QQQII")  # 32 bytes: features, refcount_order, header_length
_HEADER_V3_LENGTH = _HEADER_V2.size + _HEADER_V3_TAIL.size  # 104
_EXT = struct.Struct(">II")
EXT_END = 0x00000000
EXT_BACKING_FORMAT = 0xE2792ACA
EXT_DATA_FILE = 0x44415441
REFCOUNT_ORDER = 4  # 16-bit refcounts, QEMU's default
INCOMPAT_DIRTY = 1 << 0
INCOMPAT_CORRUPT = 1 << 1
INCOMPAT_DATA_FILE = 1 << 2
BACKING_FORMATS = ("qcow2", "raw")


@dataclass(frozen=True)
class Qcow2Header:
    """The fields of a qcow2 header that the manager needs, as stored in the file."""

    version: int
    cluster_bits: int
    virtual_size: int
    backing_file: str | None  # exactly as stored: absolute, or relative to the image's directory
    backing_format: str | None
    l1_size: int
    l1_table_offset: int
    refcount_table_offset: int
    refcount_table_clusters: int
    nb_snapshots: int
    incompatible_features: int
    compatible_features: int
    autoclear_features: int
    refcount_order: int
    header_length: int
    data_file: str | None

    @property
    def cluster_size(self) -> int:
        return 1 << self.cluster_bits

    @property
    def dirty(self) -> bool:
        return bool(self.incompatible_features & INCOMPAT_DIRTY)

    @property
    def corrupt(self) -> bool:
        return bool(self.incompatible_features & INCOMPAT_CORRUPT)


# ---- reading --------------------------------------------------------------------------------------
def read_header(path: str | os.PathLike[str]) -> Qcow2Header:
    """Parse the qcow2 header of `path` (no qemu-img involved).

    Raises ImageNotFound if the file is missing, ImageInvalid if it is not a qcow2 image.
    """
    path = Path(path)
    try:
        with open(path, "rb") as fh:
            head = fh.read(4096)
            if len(head) < _HEADER_V2.size or head[:4] != MAGIC:
                raise ImageInvalid(path=str(path), reason="it is not a qcow2 image (no QFI\\xfb magic)")
            fields = _HEADER_V2.unpack_from(head)
            cluster_bits = fields[4]
            if not MIN_CLUSTER_BITS <= cluster_bits <= MAX_CLUSTER_BITS:
                raise ImageInvalid(path=str(path), reason=f"unsupported cluster_bits {cluster_bits}")
            cluster_size = 1 << cluster_bits
            if cluster_size > len(head):
                head += fh.read(cluster_size - len(head))
    except FileNotFoundError:
        raise ImageNotFound(path=str(path)) from None
    except IsADirectoryError:
        raise ImageInvalid(path=str(path), reason="it is a directory") from None
    return parse_header(head, path)


def parse_header(first_cluster: bytes, path: str | os.PathLike[str] = "<image>") -> Qcow2Header:
    """Parse a header from the bytes of an image's first cluster."""
    (magic, version, backing_offset, backing_size, cluster_bits, size, _crypt, l1_size, l1_offset,
     rt_offset, rt_clusters, nb_snapshots, _snap_offset) = _HEADER_V2.unpack_from(first_cluster)
    if magic != MAGIC:
        raise ImageInvalid(path=str(path), reason="it is not a qcow2 image (no QFI\\xfb magic)")
    if version not in (2, 3):
        raise ImageInvalid(path=str(path), reason=f"unsupported qcow2 version {version}")
    incompatible = compatible = autoclear = 0
    refcount_order = REFCOUNT_ORDER
    header_length = _HEADER_V2.size
    if version >= 3:
        if len(first_cluster) < _HEADER_V3_LENGTH:
            raise ImageInvalid(path=str(path), reason="truncated version 3 header")
        incompatible, compatible, autoclear, refcount_order, header_length = _HEADER_V3_TAIL.unpack_from(
            first_cluster, _HEADER_V2.size)
        if header_length < _HEADER_V3_LENGTH or header_length > len(first_cluster):
            raise ImageInvalid(path=str(path), reason=f"bad header_length {header_length}")
    backing_format = data_file = None
    offset = header_length
    while offset + _EXT.size <= len(first_cluster):
        ext_type, ext_len = _EXT.unpack_from(first_cluster, offset)
        if ext_type == EXT_END:
            break
        body = first_cluster[offset + _EXT.size: offset + _EXT.size + ext_len]
        if len(body) != ext_len:
            raise ImageInvalid(path=str(path), reason="header extension runs past the first cluster")
        if ext_type == EXT_BACKING_FORMAT:
            backing_format = body.decode("utf-8", "replace")
        elif ext_type == EXT_DATA_FILE:
            data_file = body.decode("utf-8", "replace")
        offset += _EXT.size + _round_up(ext_len, 8)
    backing_file = None
    if backing_offset:
        if backing_size > MAX_BACKING_NAME_BYTES or backing_offset + backing_size > len(first_cluster):
            raise ImageInvalid(path=str(path), reason="backing file name is outside the first cluster")
        backing_file = first_cluster[backing_offset: backing_offset + backing_size].decode("utf-8")
    return Qcow2Header(
        version=version, cluster_bits=cluster_bits, virtual_size=size, backing_file=backing_file,
        backing_format=backing_format, l1_size=l1_size, l1_table_offset=l1_offset,
        refcount_table_offset=rt_offset, refcount_table_clusters=rt_clusters, nb_snapshots=nb_snapshots,
        incompatible_features=incompatible, compatible_features=compatible, autoclear_features=autoclear,
        refcount_order=refcount_order, header_length=header_length, data_file=data_file,
    )


def is_qcow2(path: str | os.PathLike[str]) -> bool:
    """Whether the file starts with the qcow2 magic (False for a missing file)."""
    try:
        with open(path, "rb") as fh:
            return fh.read(4) == MAGIC
    except (FileNotFoundError, IsADirectoryError):
        return False


def is_empty(path: str | os.PathLike[str]) -> bool:
    """Whether no guest cluster of this image is allocated (its whole L1 table is zero).

    True for a fresh overlay: every read falls through to the backing file.
    """
    header = read_header(path)
    remaining = header.l1_size * 8
    with open(path, "rb") as fh:
        fh.seek(header.l1_table_offset)
        while remaining:
            chunk = fh.read(min(remaining, 1 << 20))
            if not chunk:
                return True  # past the end of file: sparse zeros
            if chunk.count(0) != len(chunk):
                return False
            remaining -= len(chunk)
    return True


def resolve_backing(image: str | os.PathLike[str], backing_file: str) -> Path:
    """Where a stored backing file name points: relative names are relative to the image's directory."""
    if os.path.isabs(backing_file):
        return Path(backing_file)
    return Path(os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(image)), backing_file)))


@dataclass(frozen=True)
class ChainLink:
    path: Path
    format: str  # "qcow2" or "raw"
    header: Qcow2Header | None  # None for a raw file


def backing_chain(path: str | os.PathLike[str]) -> list[ChainLink]:
    """The image and every backing file below it, top first, read from headers only.

    Raises ImageNotFound naming the image whose backing file is missing, ImageInvalid on a loop.
    """
    links: list[ChainLink] = []
    seen: set[str] = set()
    current, fmt = Path(os.path.abspath(path)), "qcow2"
    referrer: Path | None = None
    while True:
        real = os.path.realpath(current)
        if real in seen:
            raise ImageInvalid(path=str(path), reason=f"its backing chain loops back to {current}")
        seen.add(real)
        if fmt == "raw" or (fmt != "qcow2" and not is_qcow2(current)):
            if not current.exists():
                raise ImageNotFound(f"backing file {current} of {referrer} does not exist")
            links.append(ChainLink(current, "raw", None))
            return links
        try:
            header = read_header(current)
        except ImageNotFound:
            if referrer is None:
                raise
            raise ImageNotFound(f"backing file {current} of {referrer} does not exist") from None
        links.append(ChainLink(current, "qcow2", header))
        if header.backing_file is None:
            return links
        referrer = current
        current = resolve_backing(current, header.backing_file)
        fmt = header.backing_format or "probe"


# ---- writing --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class OverlayLayout:
    """What to write for one empty overlay: (offset, bytes) pieces and the final file length."""

    pieces: tuple[tuple[int, bytes], ...]
    file_size: int
    virtual_size: int
    cluster_size: int
    metadata_clusters: int


def layout_overlay(backing_name: str, virtual_size: int, *, cluster_size: int = DEFAULT_CLUSTER_SIZE,
                   backing_format: str = "qcow2") -> OverlayLayout:
    """Compute the bytes of an empty qcow2 v3 overlay of `backing_name` (pure; nothing is written).

    `virtual_size` is rounded up to a whole 512-byte sector, as qemu-img does. Raises Invalid for a
    size, cluster size or name the format (or QEMU) cannot hold.
    """
    cluster_bits = _cluster_bits(cluster_size)
    if not isinstance(virtual_size, int) or virtual_size <= 0:
        raise Invalid(f"virtual size must be a positive number of bytes, not {virtual_size!r}")
    virtual_size = _round_up(virtual_size, SECTOR)
    if backing_format not in BACKING_FORMATS:
        raise Invalid(f"backing format must be one of {', '.join(BACKING_FORMATS)}, not {backing_format!r}")
    name = backing_name.encode("utf-8")
    if not name:
        raise Invalid("an overlay needs a backing file name")
    if len(name) > MAX_BACKING_NAME_BYTES:
        raise Invalid(f"backing file name is {len(name)} bytes; qcow2 allows at most {MAX_BACKING_NAME_BYTES}")
    fmt = backing_format.encode("ascii")

    l2_coverage = cluster_size * (cluster_size // 8)
    l1_entries = -(-virtual_size // l2_coverage)
    if l1_entries * 8 > MAX_L1_TABLE_BYTES:
        raise Invalid(f"virtual size {virtual_size} needs an L1 table over 32 MiB with {cluster_size}-byte"
                      " clusters; use a larger cluster size")
    l1_clusters = -(-l1_entries * 8 // cluster_size)
    refcounts_per_block = cluster_size * 8 // (1 << REFCOUNT_ORDER)
    # The refcount structures must count themselves: grow them until they cover every cluster.
    rt_clusters = rb_clusters = 1
    while True:
        total = 1 + rt_clusters + rb_clusters + l1_clusters
        need_rb = -(-total // refcounts_per_block)
        need_rt = -(-need_rb * 8 // cluster_size)
        if need_rb <= rb_clusters and need_rt <= rt_clusters:
            break
        rb_clusters, rt_clusters = max(rb_clusters, need_rb), max(rt_clusters, need_rt)
    if rt_clusters * cluster_size > MAX_REFCOUNT_TABLE_BYTES:
        raise Invalid("the refcount table would exceed QEMU's 8 MiB limit; use a larger cluster size")
    total = 1 + rt_clusters + rb_clusters + l1_clusters
    rt_offset = cluster_size
    rb_offset = rt_offset + rt_clusters * cluster_size
    l1_offset = rb_offset + rb_clusters * cluster_size

    extensions = _EXT.pack(EXT_BACKING_FORMAT, len(fmt)) + fmt.ljust(_round_up(len(fmt), 8), b"\0")
    extensions += _EXT.pack(EXT_END, 0)
    backing_offset = _HEADER_V3_LENGTH + len(extensions)
    if backing_offset + len(name) > cluster_size:
        raise Invalid(f"backing file name does not fit in one {cluster_size}-byte cluster; use a shorter"
                      " path or a larger cluster size")
    header = _HEADER_V2.pack(
        MAGIC, 3, backing_offset, len(name), cluster_bits, virtual_size, 0, l1_entries, l1_offset,
        rt_offset, rt_clusters, 0, 0,
    ) + _HEADER_V3_TAIL.pack(0, 0, 0, REFCOUNT_ORDER, _HEADER_V3_LENGTH)
    refcount_table = b"".join(struct.pack(">Q", rb_offset + i * cluster_size) for i in range(rb_clusters))
    refcounts = b"\x00\x01" * total  # one 16-bit big-endian "1" per metadata cluster, blocks contiguous
    pieces = ((0, header + extensions + name), (rt_offset, refcount_table), (rb_offset, refcounts))
    return OverlayLayout(pieces, total * cluster_size, virtual_size, cluster_size, total)


def create_overlay(path: str | os.PathLike[str], backing: str | os.PathLike[str], *,
                   virtual_size: int | None = None, cluster_size: int = DEFAULT_CLUSTER_SIZE,
                   backing_format: str = "qcow2", relative_backing: bool = False, replace: bool = False,
                   job_id: str | None = None) -> Path:
    """Create an empty qcow2 overlay at `path` whose backing file is `backing`; return `path`.

    The virtual size defaults to the backing image's. The backing name is stored absolute, or relative
    to the overlay's directory with relative_backing=True (a storage domain that can be mounted
    anywhere). The file is written under a temporary name, fsynced and linked into place.

    Idempotent: if `path` already is an overlay of the same backing file (and size, when given) nothing
    happens. Raises ImageExists if it exists with another backing (unless replace=True, which atomically
    replaces it), ImageNotFound if the backing file is missing, ImageInvalid if it is not in
    `backing_format`, Invalid for impossible sizes.
    """
    return create_overlays(backing, [path], virtual_size=virtual_size, cluster_size=cluster_size,
                           backing_format=backing_format, relative_backing=relative_backing,
                           replace=replace, job_id=job_id)[0]


def create_overlays(backing: str | os.PathLike[str], paths: Sequence[str | os.PathLike[str]], *,
                    virtual_size: int | None = None, cluster_size: int = DEFAULT_CLUSTER_SIZE,
                    backing_format: str = "qcow2", relative_backing: bool = False, replace: bool = False,
                    job_id: str | None = None) -> list[Path]:
    """Create many overlays of one backing file; same guarantees as `create_overlay` for each.

    Batched for speed: all temporaries are written, made durable (one syncfs per file system for a
    big batch, fsyncs for a small one), then linked into place and the links made durable the same way.
    A crash leaves every path either absent or a complete overlay.
    """
    backing_path = Path(os.path.abspath(backing))
    targets = [Path(os.path.abspath(p)) for p in paths]
    if len({str(t) for t in targets}) != len(targets):
        raise Invalid("the same overlay path is listed twice")
    if str(backing_path) in {str(t) for t in targets}:
        raise Invalid(f"{backing_path} cannot be its own backing file")
    size = _backing_virtual_size(backing_path, backing_format) if virtual_size is None else virtual_size
    layouts: dict[str, OverlayLayout] = {}

    todo: list[tuple[Path, Path, OverlayLayout]] = []
    for target in targets:
        # Lay out first: impossible input is refused whatever is on disk, even where an existing file
        # would make this a no-op.
        name = os.path.relpath(backing_path, target.parent) if relative_backing else str(backing_path)
        layout = layouts.get(name)
        if layout is None:
            layout = layouts[name] = layout_overlay(name, size, cluster_size=cluster_size,
                                                    backing_format=backing_format)
        if not replace and _existing_overlay_matches(target, backing_path, backing_format, virtual_size):
            continue
        todo.append((target, fileops.tmp_path_for(target, job_id), layout))
    if not todo:
        return targets
    # Durability either per file (fsync file, then its directory) or, for a big batch, by one syncfs
    # after the temporaries are written and one after they are linked into place.
    batch = len(todo) >= _SYNCFS_BATCH
    dirs = sorted({target.parent for target, _tmp, _layout in todo})
    for directory in dirs:
        fileops.ensure_dir(directory, sync=not batch)
    try:
        for start in range(0, len(todo), _FSYNC_BATCH):
            _write_layouts([(tmp, layout) for _t, tmp, layout in todo[start:start + _FSYNC_BATCH]],
                           fsync=not batch)
        if batch:
            fileops.sync_filesystems([dirs[0].parent, *dirs])
        for target, tmp, _layout in todo:
            if replace:
                fileops.publish(tmp, target, replace=True, sync_data=False, sync_dir=False)
            else:
                try:
                    fileops.publish(tmp, target, replace=False, sync_data=False, sync_dir=False)
                except ImageExists:
                    # Someone created it meanwhile: fine if it is the same overlay, else a conflict.
                    fileops.remove(tmp, sync_dir=False)
                    if not _existing_overlay_matches(target, backing_path, backing_format, virtual_size):
                        raise
    finally:
        for _target, tmp, _layout in todo:
            if os.path.lexists(tmp):
                fileops.remove(tmp, sync_dir=False)
    if batch:
        fileops.sync_filesystems(dirs)
    else:
        for directory in dirs:
            fileops.fsync_dir(directory)
    return targets


def _write_layouts(items: list[tuple[Path, OverlayLayout]], *, fsync: bool) -> None:
    """Write overlays under their temporary names, then (if asked) fsync them all.

    Writing a batch before the first fsync lets the file system commit their metadata in one journal
    transaction; fsyncing the still-open descriptors avoids reopening each file.
    """
    fds: list[int] = []
    try:
        for tmp, layout in items:
            try:
                fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
            except FileNotFoundError:
                raise ImageNotFound(f"directory {tmp.parent} does not exist") from None
            fds.append(fd)
            for offset, data in layout.pieces:
                os.pwrite(fd, data, offset)
            os.ftruncate(fd, layout.file_size)
        if fsync:
            for fd in fds:
                os.fsync(fd)
    except OSError as exc:
        if exc.errno == errno.ENOSPC:
            raise StorageFull(path=str(items[len(fds) - 1][0])) from exc
        raise
    finally:
        for fd in fds:
            os.close(fd)


def _backing_virtual_size(backing: Path, backing_format: str) -> int:
    if backing_format == "raw":
        try:
            return os.stat(backing).st_size
        except FileNotFoundError:
            raise ImageNotFound(path=str(backing)) from None
    header = read_header(backing)
    if header.corrupt:
        raise ImageInvalid(path=str(backing), reason="it is marked corrupt; repair it with qemu-img check -r all")
    return header.virtual_size


def _existing_overlay_matches(target: Path, backing: Path, backing_format: str,
                              virtual_size: int | None) -> bool:
    """False if target is absent; True if it already is this overlay; ImageExists if it is another."""
    if not os.path.lexists(target):
        return False
    expected = f"backing file {backing} ({backing_format})"
    try:
        header = read_header(target)
    except ImageInvalid:
        raise ImageExists(path=str(target), actual="a file that is not a qcow2 image", expected=expected) from None
    if header.backing_file is None:
        raise ImageExists(path=str(target), actual="no backing file", expected=expected)
    actual_backing = resolve_backing(target, header.backing_file)
    if os.path.realpath(actual_backing) != os.path.realpath(backing) or header.backing_format != backing_format:
        raise ImageExists(path=str(target), actual=f"backing file {actual_backing} ({header.backing_format})",
                          expected=expected)
    if virtual_size is not None and header.virtual_size != _round_up(virtual_size, SECTOR):
        raise ImageExists(path=str(target), actual=f"virtual size {header.virtual_size}",
                          expected=f"virtual size {virtual_size}")
    return True


def _cluster_bits(cluster_size: int) -> int:
    if not isinstance(cluster_size, int) or cluster_size <= 0 or cluster_size & (cluster_size - 1):
        raise Invalid(f"cluster size must be a power of two, not {cluster_size!r}")
    bits = cluster_size.bit_length() - 1
    if not MIN_CLUSTER_BITS <= bits <= MAX_CLUSTER_BITS:
        raise Invalid(f"cluster size must be between 512 bytes and 2 MiB, not {cluster_size}")
    return bits


def _round_up(value: int, multiple: int) -> int:
    return -(-value // multiple) * multiple

