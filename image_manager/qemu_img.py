"""The only place that runs qemu-img.

Each function builds one command line, runs it with a deadline, parses its JSON or progress output,
and turns a failure into a typed error carrying qemu-img's own message: a missing file is
ImageNotFound, a locked image ImageInUse, a wrong format ImageInvalid, a full disk StorageFull,
a run past the deadline ImageToolTimeout. No CalledProcessError ever leaves this module.
"""
from __future__ import annotations

import json
import os
import re
import selectors
import signal
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from core.errors import Invalid, VdiError
from image_manager.errors import (
    ImageCorrupt,
    ImageInUse,
    ImageInvalid,
    ImageNotFound,
    ImageToolError,
    ImageToolMissing,
    ImageToolTimeout,
    StorageFull,
)

QEMU_IMG = os.environ.get("VDI_QEMU_IMG", "qemu-img")
QUICK_TIMEOUT = 60.0  # info, check, create, rebase -u, resize, measure
COPY_TIMEOUT = 6 * 3600.0  # convert, commit, safe rebase: proportional to the data

ProgressCallback = Callable[[float], None]
PathLike = str | os.PathLike[str]
ImageFormat = Literal["qcow2", "raw"]
FORMATS: tuple[str, ...] = ("qcow2", "raw")

_PROGRESS = re.compile(rb"\((\d+(?:\.\d+)?)/100%\)")


# ---- results ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ImageInfo:
    filename: str
    format: str
    virtual_size: int
    actual_size: int
    cluster_size: int | None
    backing_filename: str | None  # as stored in the image
    full_backing_filename: str | None  # resolved by qemu-img
    backing_format: str | None
    dirty: bool
    corrupt: bool
    raw: dict[str, Any] = field(repr=False, compare=False)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ImageInfo:
        specific = (data.get("format-specific") or {}).get("data") or {}
        return cls(
            filename=data["filename"],
            format=data["format"],
            virtual_size=int(data["virtual-size"]),
            actual_size=int(data.get("actual-size", 0)),
            cluster_size=data.get("cluster-size"),
            backing_filename=data.get("backing-filename"),
            full_backing_filename=data.get("full-backing-filename"),
            backing_format=data.get("backing-filename-format"),
            dirty=bool(data.get("dirty-flag", False)),
            corrupt=bool(specific.get("corrupt", False)),
            raw=data,
        )


CheckStatus = Literal["ok", "leaks", "corrupt", "error"]


@dataclass(frozen=True)
class CheckResult:
    """What `qemu-img check` found. `status`: ok, leaks (harmless wasted clusters), corrupt, error."""

    filename: str
    status: CheckStatus
    corruptions: int
    leaks: int
    check_errors: int
    corruptions_fixed: int
    leaks_fixed: int
    image_end_offset: int | None
    total_clusters: int | None
    allocated_clusters: int | None

    @property
    def ok(self) -> bool:
        return self.status == "ok"


@dataclass(frozen=True)
class Measurement:
    required: int  # bytes the converted image needs
    fully_allocated: int  # bytes it needs with every cluster allocated
    bitmaps: int = 0


# ---- running ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class _Run:
    stdout: bytes
    stderr: bytes
    returncode: int


def _run(args: Sequence[str], *, command: str, path: PathLike, timeout: float,
         progress: ProgressCallback | None = None, ok_codes: Sequence[int] = (0,)) -> _Run:
    """Run qemu-img with a deadline; parse `-p` progress lines on the fly; translate failures."""
    argv = [QEMU_IMG, *args]
    try:
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, start_new_session=True)
    except FileNotFoundError:
        raise ImageToolMissing(what="qemu-img", reason="it is not installed; install the qemu-utils package") from None
    deadline = time.monotonic() + timeout
    out, err = bytearray(), bytearray()
    pending = b""
    last_reported = -1.0
    with selectors.DefaultSelector() as sel:
        assert proc.stdout is not None and proc.stderr is not None
        sel.register(proc.stdout, selectors.EVENT_READ, out)
        sel.register(proc.stderr, selectors.EVENT_READ, err)
        open_streams = 2
        while open_streams:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                _kill(proc)
                raise ImageToolTimeout(command=command, path=str(path), seconds=timeout)
            for key, _ in sel.select(timeout=min(remaining, 1.0)):
                chunk = os.read(key.fd, 65536)
                if not chunk:
                    sel.unregister(key.fileobj)
                    open_streams -= 1
                    continue
                key.data.extend(chunk)
                if progress is not None and key.data is out:
                    pending += chunk
                    *lines, pending = re.split(rb"[\r\n]", pending)
                    for line in lines:
                        match = _PROGRESS.search(line)
                        if match and float(match.group(1)) != last_reported:
                            last_reported = float(match.group(1))
                            try:
                                progress(last_reported)
                            except BaseException:  # e.g. the job was cancelled: qemu-img must not write on
                                _kill(proc)
                                raise
    try:
        returncode = proc.wait(timeout=max(deadline - time.monotonic(), 1.0))
    except subprocess.TimeoutExpired:
        _kill(proc)
        raise ImageToolTimeout(command=command, path=str(path), seconds=timeout) from None
    result = _Run(bytes(out), bytes(err), returncode)
    if returncode not in ok_codes:
        raise translate_error(command, path, result.stderr.decode("utf-8", "replace"), returncode)
    return result


def _kill(proc: subprocess.Popen[bytes]) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait()


_INVALID_HINTS = ("invalid", "expects a", "not supported", "is a directory", "regular file", "--shrink",
                  "unknown option", "could not parse")
_QUOTED_PATH = re.compile(r"Could not open '([^']+)'")


def translate_error(command: str, path: PathLike, stderr: str, returncode: int) -> VdiError:
    """Map qemu-img's message to a typed error; the message is kept so the operator sees the cause."""
    detail = "\n".join(line.removeprefix("qemu-img: ").strip() for line in stderr.strip().splitlines())
    detail = detail or f"exit status {returncode}"
    lowered = detail.lower()
    if "no such file or directory" in lowered:
        missing = _QUOTED_PATH.findall(detail)
        where = missing[-1] if missing else str(path)
        if "backing file" in lowered or "backing image" in lowered:
            return ImageNotFound(f"a backing file of {path} does not exist ({detail})")
        return ImageNotFound(f"image file {where} does not exist ({detail})")
    if "lock" in lowered and ("failed to get" in lowered or "another process" in lowered):
        return ImageInUse(path=str(path), reason=detail)
    if "no space left on device" in lowered:
        return StorageFull(f"no space left on the storage holding {path} ({detail}); free space or add storage")
    if "corrupt" in lowered:
        return ImageCorrupt(path=str(path), reason=detail)
    if ("not in" in lowered and "format" in lowered) or "unknown file format" in lowered \
            or "image is not in" in lowered or "unknown driver" in lowered:
        return ImageInvalid(path=str(path), reason=detail)
    if any(hint in lowered for hint in _INVALID_HINTS):
        return ImageInvalid(path=str(path), reason=detail)
    return ImageToolError(command=command, detail=detail)


def _json(result: _Run, command: str, path: PathLike) -> Any:
    try:
        return json.loads(result.stdout)
    except json.JSONDecodeError:
        raise ImageToolError(command=command, detail=f"unreadable output for {path}: {result.stdout[:200]!r}") from None


def _fmt_args(fmt: str | None, flag: str = "-f") -> list[str]:
    if fmt is None:
        return []
    if fmt not in FORMATS:
        raise Invalid(f"image format must be one of {', '.join(FORMATS)}, not {fmt!r}")
    return [flag, fmt]


def _require_exists(path: PathLike) -> None:
    if not os.path.lexists(path):
        raise ImageNotFound(path=str(path))


def _size_arg(size: int) -> str:
    if not isinstance(size, int) or size <= 0:
        raise Invalid(f"size must be a positive number of bytes, not {size!r}")
    return str(size)


# ---- commands --------------------------------------------------------------------------------------
def info(path: PathLike, *, fmt: str | None = None, force_share: bool = False,
         timeout: float = QUICK_TIMEOUT) -> ImageInfo:
    """`qemu-img info --output=json` of one image. force_share reads an image a running guest has open."""
    args = ["info", "--output=json", *_fmt_args(fmt), *(["-U"] if force_share else []), str(path)]
    return ImageInfo.from_json(_json(_run(args, command="info", path=path, timeout=timeout), "info", path))


def info_chain(path: PathLike, *, fmt: str | None = None, force_share: bool = False,
               timeout: float = QUICK_TIMEOUT) -> list[ImageInfo]:
    """`qemu-img info --backing-chain`: the image and each backing file below it, top first."""
    args = ["info", "--output=json", "--backing-chain", *_fmt_args(fmt), *(["-U"] if force_share else []),
            str(path)]
    data = _json(_run(args, command="info", path=path, timeout=timeout), "info", path)
    return [ImageInfo.from_json(item) for item in data]


def check(path: PathLike, *, fmt: str = "qcow2", repair: Literal["leaks", "all"] | None = None,
          force_share: bool = False, timeout: float = QUICK_TIMEOUT * 10) -> CheckResult:
    """`qemu-img check`: consistency of one image's metadata (not of its backing files).

    Corruption and leaks are results, not exceptions; a missing or unreadable file raises.
    """
    if repair not in (None, "leaks", "all"):
        raise Invalid(f"repair must be 'leaks' or 'all', not {repair!r}")
    args = ["check", "--output=json", *_fmt_args(fmt), *(["-r", repair] if repair else []),
            *(["-U"] if force_share else []), str(path)]
    # Exit codes: 0 clean, 1 check could not run, 2 corruptions, 3 leaks only, 63 not supported.
    result = _run(args, command="check", path=path, timeout=timeout, ok_codes=(0, 2, 3))
    data = _json(result, "check", path)
    corruptions = int(data.get("corruptions", 0))
    leaks = int(data.get("leaks", 0))
    errors = int(data.get("check-errors", 0))
    if errors:
        status: CheckStatus = "error"
    elif corruptions:
        status = "corrupt"
    elif leaks:
        status = "leaks"
    else:
        status = "ok"
    return CheckResult(
        filename=data.get("filename", str(path)), status=status, corruptions=corruptions, leaks=leaks,
        check_errors=errors, corruptions_fixed=int(data.get("corruptions-fixed", 0)),
        leaks_fixed=int(data.get("leaks-fixed", 0)), image_end_offset=data.get("image-end-offset"),
        total_clusters=data.get("total-clusters"), allocated_clusters=data.get("allocated-clusters"),
    )


def create(path: PathLike, *, size: int | None = None, fmt: str = "qcow2", backing: PathLike | None = None,
           backing_fmt: str = "qcow2", cluster_size: int | None = None,
           preallocation: Literal["off", "metadata", "falloc", "full"] | None = None,
           timeout: float = QUICK_TIMEOUT) -> Path:
    """`qemu-img create`: a new empty image, or an overlay when `backing` is given (size then defaults
    to the backing file's). Overwrites `path`: callers publish through fileops for atomicity."""
    if backing is None and size is None:
        raise Invalid("a new image without a backing file needs a size")
    args = ["create", "-q", *_fmt_args(fmt)]
    options = []
    if cluster_size is not None:
        options.append(f"cluster_size={int(cluster_size)}")
    if preallocation is not None:
        options.append(f"preallocation={preallocation}")
    if options:
        args += ["-o", ",".join(options)]
    if backing is not None:
        args += ["-b", str(backing), *_fmt_args(backing_fmt, "-F")]
    args.append(str(path))
    if size is not None:
        args.append(_size_arg(size))
    _run(args, command="create", path=path, timeout=timeout)
    return Path(path)


def convert(source: PathLike, dest: PathLike, *, out_fmt: str = "qcow2", src_fmt: str | None = None,
            compress: bool = False, cluster_size: int | None = None,
            progress: ProgressCallback | None = None, force_share: bool = False,
            timeout: float = COPY_TIMEOUT) -> Path:
    """`qemu-img convert`: copy the whole chain under `source` into one standalone image `dest`.

    Used for full clones, flattening and export. Zero regions stay sparse; compress=True writes
    zlib-compressed qcow2 clusters (smaller templates, slower first reads). progress(percent) is called
    as qemu-img reports it (0.0 … 100.0).
    """
    _require_exists(source)
    if compress and out_fmt != "qcow2":
        raise Invalid("only qcow2 output can be compressed")
    args = ["convert", *_fmt_args(src_fmt), *_fmt_args(out_fmt, "-O")]
    if progress is not None:
        args.append("-p")
    if compress:
        args.append("-c")
    if force_share:
        args.append("-U")
    if cluster_size is not None:
        args += ["-o", f"cluster_size={int(cluster_size)}"]
    args += [str(source), str(dest)]
    _run(args, command="convert", path=source, timeout=timeout, progress=progress)
    return Path(dest)


def commit(top: PathLike, *, base: PathLike | None = None, keep_top: bool = True,
           progress: ProgressCallback | None = None, timeout: float = COPY_TIMEOUT) -> None:
    """`qemu-img commit`: write the data of `top` into its backing file (or into `base`, further down).

    keep_top=True (-d) leaves `top` as it was (it is usually deleted next); False empties it.
    """
    _require_exists(top)
    args = ["commit", "-f", "qcow2", *(["-p"] if progress is not None else []),
            *(["-d"] if keep_top else []), *(["-b", str(base)] if base is not None else []), str(top)]
    _run(args, command="commit", path=top, timeout=timeout, progress=progress)


def rebase(path: PathLike, new_backing: PathLike | None, *, backing_fmt: str = "qcow2", unsafe: bool = False,
           progress: ProgressCallback | None = None, timeout: float | None = None) -> None:
    """`qemu-img rebase`: point `path` at `new_backing` (None: no backing file).

    Safe mode (default) first copies into `path` every cluster where the old and new backing chains
    differ, so the guest-visible content is unchanged; unsafe=True (-u) only rewrites the header and is
    for when the caller knows both chains read the same (after a commit, or a moved file).
    """
    _require_exists(path)
    target = "" if new_backing is None else str(new_backing)
    args = ["rebase", "-f", "qcow2", *(["-u"] if unsafe else []), *(["-p"] if progress is not None else []),
            "-b", target]
    if new_backing is not None:
        args += _fmt_args(backing_fmt, "-F")
    args.append(str(path))
    if timeout is None:
        timeout = QUICK_TIMEOUT if unsafe else COPY_TIMEOUT
    _run(args, command="rebase", path=path, timeout=timeout, progress=progress)


def measure(*, source: PathLike | None = None, size: int | None = None, out_fmt: str = "qcow2",
            src_fmt: str | None = None, force_share: bool = False,
            timeout: float = QUICK_TIMEOUT * 10) -> Measurement:
    """`qemu-img measure`: bytes a conversion of `source` (or a new image of `size`) would need."""
    if (source is None) == (size is None):
        raise Invalid("measure needs exactly one of source or size")
    args = ["measure", "--output=json", *_fmt_args(out_fmt, "-O")]
    if source is not None:
        _require_exists(source)
        args += [*_fmt_args(src_fmt), *(["-U"] if force_share else []), str(source)]
    else:
        args += ["--size", _size_arg(size)]  # type: ignore[arg-type]
    where = source if source is not None else f"a new {size}-byte image"
    data = _json(_run(args, command="measure", path=where, timeout=timeout), "measure", where)
    return Measurement(int(data["required"]), int(data["fully-allocated"]), int(data.get("bitmaps", 0)))


def resize(path: PathLike, size: int, *, fmt: str = "qcow2", shrink: bool = False,
           timeout: float = QUICK_TIMEOUT) -> None:
    """`qemu-img resize` to an absolute size; shrinking (which loses data) needs shrink=True."""
    _require_exists(path)
    args = ["resize", "-q", *_fmt_args(fmt), *(["--shrink"] if shrink else []), str(path), _size_arg(size)]
    _run(args, command="resize", path=path, timeout=timeout)
