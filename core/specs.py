"""Plain data passed between the manager and the hypervisor nodes (JSON-serialisable dataclasses)."""
from __future__ import annotations

import dataclasses
import functools
from dataclasses import dataclass, field
from typing import Any

from core.enums import OsType, PowerState

# The fencing token on the wire (docs/ha.md): a leader manager's singleton loops send their epoch with each call to a
# node agent, and heartbeat replies tell the agent the latest epoch; the agent refuses commands of an older one.
LEADER_EPOCH_HEADER = "X-VDI-Leader-Epoch"


@functools.cache
def _field_names(cls: type) -> frozenset[str]:
    """The fields a from_dict accepts (unknown keys from a newer peer are ignored); computed once per class."""
    return frozenset(f.name for f in dataclasses.fields(cls))


@dataclass
class DesktopSpec:
    """Everything a node needs to define a desktop's domain. The designer decides the XML policy."""

    uuid: str
    name: str
    vcpus: int
    memory_mib: int
    disk_path: str  # the desktop's qcow2 overlay on shared storage
    os_type: str = OsType.OTHER_LINUX.value
    monitors: int = 1  # QXL heads, 1-4
    usb_redirect_channels: int = 2
    sound: bool = True
    kernel: str | None = None  # direct kernel boot (the demo image); None boots from the disk
    initrd: str | None = None
    cmdline: str | None = None
    serial_log: str | None = None  # file the serial console is written to
    spice_listen: str = "127.0.0.1"
    spice_password: str | None = None
    spice_password_valid_to: str | None = None  # ISO-8601 UTC, e.g. 2026-11-22T10:00:00
    vnc_fallback: bool = True
    # The desktop's network interface: a libvirt network's name, or None for QEMU's user-mode network (NAT and
    # DHCP inside QEMU: works on any host without set-up, but the guest is not reachable from outside).
    network: str | None = None
    domain_type: str | None = None  # None: the designer picks from the host's capabilities
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "DesktopSpec":
        names = _field_names(cls)
        return cls(**{k: v for k, v in data.items() if k in names})


@dataclass
class HostCaps:
    """What a host can run, from libvirt's capabilities and /proc, /sys."""

    hostname: str
    domain_types: list[str]  # e.g. ["qemu"] under TCG, ["kvm", "qemu"] with working KVM
    cpus: int
    memory_mib: int
    free_memory_mib: int
    arch: str = "x86_64"
    cpu_model: str = ""
    libvirt_version: str = ""
    ksm_pages_sharing: int = 0
    ksm_pages_shared: int = 0
    ksm_running: bool = False
    ksm_saved_mib: int = 0  # pages_sharing x page size

    @property
    def best_domain_type(self) -> str:
        return "kvm" if "kvm" in self.domain_types else "qemu"

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "HostCaps":
        names = _field_names(cls)
        return cls(**{k: v for k, v in data.items() if k in names})


@dataclass
class DomainStats:
    """One domain's figures from a bulk stats call."""

    uuid: str
    name: str
    state: str = PowerState.UNKNOWN.value
    cpu_usage: int = 0  # percent of its vCPUs, 0-100, over the last interval
    mem_usage: int = 0  # percent of its memory in use (balloon), 0-100
    cpu_time_ns: int = 0
    memory_kib: int = 0
    vcpus: int = 0

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "DomainStats":
        names = _field_names(cls)
        return cls(**{k: v for k, v in data.items() if k in names})
