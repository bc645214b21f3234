"""Host figures read from /proc and /sys: CPU usage between calls, memory usage, KSM; and the KSM settings the
policy engine sets (write_ksm).

Linux only, no hypervisor involved. Every reader takes the root it reads from so tests can point it
at a directory of their own files.
"""
from __future__ import annotations

import os
import threading
from dataclasses import dataclass
from pathlib import Path

from core.errors import Conflict, Invalid


@dataclass
class KsmFigures:
    running: bool = False
    pages_shared: int = 0
    pages_sharing: int = 0


def read_ksm(sys_root: str | Path = "/sys") -> KsmFigures:
    """Kernel same-page merging counters; zeros when the kernel has no KSM."""
    base = Path(sys_root) / "kernel" / "mm" / "ksm"

    def number(name: str) -> int:
        try:
            return int((base / name).read_text().strip())
        except (OSError, ValueError):
            return 0

    return KsmFigures(
        running=number("run") == 1,
        pages_shared=number("pages_shared"),
        pages_sharing=number("pages_sharing"),
    )


def ksm_saved_mib(figures: KsmFigures) -> int:
    """Memory KSM saves: every page sharing another's frame is a page not held twice."""
    return figures.pages_sharing * PAGE_SIZE // (1024 * 1024)


PAGE_SIZE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096
# What the policy engine may set, with the values the kernel takes (Documentation/admin-guide/mm/ksm.rst).
KSM_SETTINGS = {"run": (0, 2), "pages_to_scan": (1, 1_000_000), "sleep_millisecs": (0, 60_000),
                "merge_across_nodes": (0, 1)}


def read_ksm_settings(sys_root: str | Path = "/sys") -> dict[str, int]:
    base = Path(sys_root) / "kernel" / "mm" / "ksm"
    out = {}
    for name in KSM_SETTINGS:
        try:
            out[name] = int((base / name).read_text().strip())
        except (OSError, ValueError):
            continue
    return out


def write_ksm(settings: dict[str, object], sys_root: str | Path = "/sys") -> dict[str, int]:
    """Write the KSM settings given (run, pages_to_scan, sleep_millisecs, merge_across_nodes) and return those in
    force. Only values that differ are written. merge_across_nodes can change only while no page is shared: when
    it must change, KSM is stopped with run=2 (unmerge every page) first, then set, then `run` as asked.
    Invalid for an unknown name or a value out of range; Conflict when the kernel refuses (no KSM)."""
    base = Path(sys_root) / "kernel" / "mm" / "ksm"
    wanted: dict[str, int] = {}
    for name, value in settings.items():
        if name not in KSM_SETTINGS:
            raise Invalid(f"KSM setting {name!r} is unknown; use {', '.join(KSM_SETTINGS)}")
        low, high = KSM_SETTINGS[name]
        if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
            raise Invalid(f"KSM setting {name} must be an integer from {low} to {high}, not {value!r}")
        wanted[name] = value
    if not (base / "run").exists():
        raise Conflict(f"this host's kernel has no KSM ({base} is missing)")
    current = read_ksm_settings(sys_root)

    def put(name: str, value: int) -> None:
        try:
            (base / name).write_text(f"{value}\n")
        except OSError as exc:
            raise Conflict(f"the kernel refused KSM {name}={value}: {exc.strerror or exc}") from exc

    merge = wanted.get("merge_across_nodes")
    if merge is not None and merge != current.get("merge_across_nodes") and (base / "merge_across_nodes").exists():
        if read_ksm(sys_root).pages_shared:
            put("run", 2)  # unmerge everything: the kernel takes merge_across_nodes only with no page shared
            current["run"] = 2
        put("merge_across_nodes", merge)
    for name in ("pages_to_scan", "sleep_millisecs", "run"):
        if name in wanted and wanted[name] != current.get(name):
            put(name, wanted[name])
    return read_ksm_settings(sys_root)


def read_mem_usage(proc_root: str | Path = "/proc") -> int:
    """Percent of the host's memory in use (MemTotal - MemAvailable), 0-100."""
    fields: dict[str, int] = {}
    for line in (Path(proc_root) / "meminfo").read_text().splitlines():
        name, _, rest = line.partition(":")
        parts = rest.split()
        if parts:
            fields[name] = int(parts[0])
    total = fields.get("MemTotal", 0)
    if total <= 0:
        return 0
    available = fields.get("MemAvailable", fields.get("MemFree", 0))
    return _percent(total - available, total)


class HostCpuMeter:
    """Host CPU usage in percent over the interval since the previous call (from /proc/stat).

    The first call measures since boot. Safe to call from several threads.
    """

    def __init__(self, proc_root: str | Path = "/proc") -> None:
        self._stat = Path(proc_root) / "stat"
        self._lock = threading.Lock()
        self._previous: tuple[int, int] = (0, 0)  # (busy jiffies, total jiffies)

    def usage(self) -> int:
        busy, total = self._read()
        with self._lock:
            prev_busy, prev_total = self._previous
            self._previous = (busy, total)
        return _percent(busy - prev_busy, total - prev_total)

    def _read(self) -> tuple[int, int]:
        for line in self._stat.read_text().splitlines():
            if line.startswith("cpu "):
                values = [int(v) for v in line.split()[1:]]
                # user nice system idle iowait irq softirq steal [guest guest_nice: already in user/nice]
                values = values[:8]
                idle = values[3] + (values[4] if len(values) > 4 else 0)
                total = sum(values)
                return total - idle, total
        raise OSError(f"{self._stat} has no aggregate 'cpu' line")


def _percent(part: int | float, whole: int | float) -> int:
    if whole <= 0:
        return 0
    return max(0, min(100, round(100 * part / whole)))
