"""Host figures read from /proc and /sys: CPU usage between calls, memory usage, KSM.

Linux only, no hypervisor involved. Every reader takes the root it reads from so tests can point it
at a directory of their own files.
"""
from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path


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
