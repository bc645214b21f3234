"""The one place that decides what a desktop's libvirt domain looks like.

`design_domain(spec, host)` turns a DesktopSpec into a model.Domain. Every policy choice (disk bus
and format, console protocols and their passwords, monitors, USB redirection, audio, balloon, guest
agent channel, domain type) is made here and nowhere else; model.py only knows the XML shape.
"""
from __future__ import annotations

import datetime as dt
import ipaddress
import os
import re
import secrets
import uuid as uuid_mod

from core.enums import OsType
from core.errors import Invalid, NoHostAvailable
from core.specs import DesktopSpec, HostCaps
from hypervisor_node.domxml.model import (
    Audio,
    Channel,
    Controller,
    Devices,
    Disk,
    Domain,
    Graphics,
    Input,
    Interface,
    MemBalloon,
    OsBoot,
    Owner,
    RedirDev,
    Serial,
    Sound,
    Video,
)

GUEST_AGENT_CHANNEL = "org.vdi.guest_agent.0"
SPICE_AGENT_CHANNEL = "com.redhat.spice.0"
MAX_MONITORS = 4
MIN_USB_REDIRECT_CHANNELS = 2
# qemu-xhci with 15 ports; one port is the tablet, the rest may carry redirected USB devices.
USB_PORTS = 15
MAX_USB_REDIRECT_CHANNELS = USB_PORTS - 1
MAX_VCPUS = 64
MIN_MEMORY_MIB = 32
SPICE_MAX_PASSWORD = 60  # spice-server's limit on a ticket
VNC_PASSWORD_LENGTH = 8  # the RFB protocol's DES challenge uses at most 8 characters
BALLOON_STATS_PERIOD_S = 5
# A console without a ticket is locked: a random password that expired long ago. The broker unlocks it
# by setting a ticket on the running domain (driver.set_ticket).
LOCKED_CONSOLE_VALID_TO = "2000-01-01T00:00:00"
VALID_TO_FORMAT = "%Y-%m-%dT%H:%M:%S"

_LEGACY_WINDOWS = {OsType.WINDOWS_XP.value, OsType.WINDOWS_7.value}
_NAME_FORBIDDEN = re.compile(r"[/\x00-\x1f\x7f]")
_AUDIO_ID = 1


def design_domain(spec: DesktopSpec, host: HostCaps) -> Domain:
    """Design the domain for `spec` on a host with capabilities `host`.

    Raises core.errors.Invalid for a spec that no host could run (bad monitor count, relative paths,
    malformed uuid, ...) and NoHostAvailable when this host lacks what the spec asks (KVM, vCPUs).
    Pure: reads no files and calls no hypervisor. With a console password the result is deterministic.
    """
    validate_spec(spec)
    domain_type = _domain_type(spec, host)
    if spec.vcpus > host.cpus:
        raise NoHostAvailable(
            what=f"desktop {spec.name!r}",
            reason=f"it needs {spec.vcpus} vCPUs and host {host.hostname} has {host.cpus}",
        )
    windows = OsType(spec.os_type).is_windows
    legacy = spec.os_type in _LEGACY_WINDOWS
    memory_kib = spec.memory_mib * 1024
    return Domain(
        type=domain_type,
        name=spec.name,
        uuid=spec.uuid,
        memory_kib=memory_kib,
        current_memory_kib=memory_kib,
        vcpus=spec.vcpus,
        os=_os_boot(spec, host, legacy),
        features=["acpi", "apic"],  # ACPI lets a graceful shutdown reach the guest
        # host-model keeps guests migratable between slightly different hosts; TCG has no host CPU
        cpu_mode="host-model" if domain_type == "kvm" else None,
        clock_offset="localtime" if windows else "utc",
        on_crash="destroy",  # HA decides whether a crashed desktop restarts, not QEMU
        owner=Owner(
            manager_id=str(spec.extra.get("manager_id", "")),
            desktop_id=str(spec.extra.get("desktop_id", spec.uuid)),
        ),
        devices=_devices(spec, windows=windows, legacy=legacy),
    )


def validate_spec(spec: DesktopSpec) -> None:
    """Raise core.errors.Invalid naming the first field of `spec` that no host could accept."""
    _check_type(spec, "uuid", str)
    try:
        uuid_mod.UUID(spec.uuid)
    except ValueError:
        raise Invalid(f"uuid {spec.uuid!r} is not a UUID (expected e.g. {uuid_mod.UUID(int=0)})") from None
    _check_type(spec, "name", str)
    if not spec.name or len(spec.name) > 128 or _NAME_FORBIDDEN.search(spec.name):
        raise Invalid(f"name {spec.name!r} must be 1-128 characters without '/' or control characters")
    _check_int(spec, "vcpus", 1, MAX_VCPUS)
    _check_int(spec, "memory_mib", MIN_MEMORY_MIB, 16 * 1024 * 1024)
    _check_int(spec, "monitors", 1, MAX_MONITORS)
    _check_int(spec, "usb_redirect_channels", MIN_USB_REDIRECT_CHANNELS, MAX_USB_REDIRECT_CHANNELS)
    _check_type(spec, "sound", bool)
    _check_type(spec, "vnc_fallback", bool)
    _check_abs_path(spec, "disk_path", required=True)
    for name in ("kernel", "initrd", "serial_log"):
        _check_abs_path(spec, name, required=False)
    if spec.initrd is not None and spec.kernel is None:
        raise Invalid("initrd is set without kernel: direct kernel boot needs both kernel and initrd")
    if spec.cmdline is not None:
        _check_type(spec, "cmdline", str)
    if spec.os_type not in {t.value for t in OsType}:
        raise Invalid(f"os_type {spec.os_type!r} is unknown; use one of {', '.join(t.value for t in OsType)}")
    _check_type(spec, "spice_listen", str)
    try:
        ipaddress.ip_address(spec.spice_listen)
    except ValueError:
        raise Invalid(f"spice_listen {spec.spice_listen!r} is not an IP address") from None
    if spec.spice_password is not None:
        _check_type(spec, "spice_password", str)
        if not 1 <= len(spec.spice_password) <= SPICE_MAX_PASSWORD:
            raise Invalid(f"spice_password must be 1-{SPICE_MAX_PASSWORD} characters")
    if spec.spice_password_valid_to is not None:
        normalise_valid_to(spec.spice_password_valid_to)
    if spec.network is not None:
        _check_type(spec, "network", str)
        if not spec.network or _NAME_FORBIDDEN.search(spec.network) or len(spec.network) > 128:
            raise Invalid(f"network {spec.network!r} must be a libvirt network's name (1-128 characters without "
                          "'/' or control characters), or null for QEMU's user-mode network")
    if spec.domain_type is not None and spec.domain_type not in ("kvm", "qemu"):
        raise Invalid(f"domain_type {spec.domain_type!r} must be 'kvm', 'qemu' or null (host decides)")
    if not isinstance(spec.extra, dict):
        raise Invalid("extra must be a JSON object")


def normalise_valid_to(value: str) -> str:
    """ISO-8601 (naive = UTC, or with an offset) -> libvirt's passwdValidTo form, in UTC."""
    if not isinstance(value, str):
        raise Invalid(f"spice_password_valid_to {value!r} must be an ISO-8601 string")
    try:
        moment = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise Invalid(
            f"spice_password_valid_to {value!r} is not ISO-8601 (expected e.g. 2026-11-22T10:00:00)"
        ) from None
    if moment.tzinfo is not None:
        moment = moment.astimezone(dt.timezone.utc).replace(tzinfo=None)
    return moment.strftime(VALID_TO_FORMAT)


def valid_to_in(seconds: int) -> str:
    """passwdValidTo for a ticket that expires `seconds` from now."""
    moment = dt.datetime.now(dt.timezone.utc) + dt.timedelta(seconds=seconds)
    return moment.replace(tzinfo=None).strftime(VALID_TO_FORMAT)


def _check_type(spec: DesktopSpec, name: str, expected: type) -> None:
    value = getattr(spec, name)
    if not isinstance(value, expected) or (expected is not bool and isinstance(value, bool)):
        raise Invalid(f"{name} must be a {expected.__name__}, got {value!r}")


def _check_int(spec: DesktopSpec, name: str, low: int, high: int) -> None:
    _check_type(spec, name, int)
    value = getattr(spec, name)
    if not low <= value <= high:
        raise Invalid(f"{name} is {value}; it must be between {low} and {high}")


def _check_abs_path(spec: DesktopSpec, name: str, required: bool) -> None:
    value = getattr(spec, name)
    if value is None and not required:
        return
    if not isinstance(value, str) or not os.path.isabs(value):
        raise Invalid(f"{name} must be an absolute path on the host's shared storage, got {value!r}")


def _domain_type(spec: DesktopSpec, host: HostCaps) -> str:
    if spec.domain_type is None:
        return host.best_domain_type
    # TCG ('qemu') runs wherever QEMU does; only KVM depends on the host.
    if spec.domain_type == "kvm" and "kvm" not in host.domain_types:
        raise NoHostAvailable(
            what=f"desktop {spec.name!r}",
            reason=f"it asks for KVM and host {host.hostname} offers {', '.join(host.domain_types) or 'none'}",
        )
    return spec.domain_type


def _os_boot(spec: DesktopSpec, host: HostCaps, legacy: bool) -> OsBoot:
    # q35 (PCIe) for current guests; i440fx for Windows XP/7, whose drivers predate PCIe chipsets.
    boot = OsBoot(arch=host.arch or "x86_64", machine="pc" if legacy else "q35")
    if spec.kernel is not None:
        boot.kernel = spec.kernel
        boot.initrd = spec.initrd
        boot.cmdline = spec.cmdline
    else:
        boot.boot_devices = ["hd"]
    return boot


def _devices(spec: DesktopSpec, windows: bool, legacy: bool) -> Devices:
    password, valid_to = _console_password(spec)
    devices = Devices(
        disks=[
            # cache=none: no host page cache, so a live migration over shared storage is safe
            Disk(source_file=spec.disk_path, target_dev="vda", target_bus="virtio", driver_type="qcow2",
                 driver_cache="none", driver_discard="unmap"),
        ],
        interfaces=[_interface(spec)],
        controllers=[
            Controller(type="usb", index=0, model="qemu-xhci", ports=USB_PORTS),
            Controller(type="virtio-serial", index=0),
        ],
        inputs=[Input(type="tablet", bus="usb")],  # absolute pointer: the SPICE cursor follows the client
        graphics=[Graphics(type="spice", listen=spec.spice_listen, autoport=True,
                           passwd=password, passwd_valid_to=valid_to)],
        videos=_videos(spec.monitors, windows),
        channels=[
            Channel(type="spicevmc", target_name=SPICE_AGENT_CHANNEL),
            # no path: libvirt makes a per-domain socket under its channel directory on each host,
            # which keeps working after a migration; the driver reads the path from the live XML
            Channel(type="unix", target_name=GUEST_AGENT_CHANNEL, source_mode="bind"),
        ],
        redirdevs=[RedirDev(type="spicevmc", bus="usb") for _ in range(spec.usb_redirect_channels)],
        serials=[Serial(type="file", source_path=spec.serial_log) if spec.serial_log else Serial(type="pty")],
        memballoon=MemBalloon(model="virtio", stats_period_s=BALLOON_STATS_PERIOD_S),
    )
    if spec.vnc_fallback:
        devices.graphics.append(
            Graphics(type="vnc", listen=spec.spice_listen, autoport=True,
                     passwd=password[:VNC_PASSWORD_LENGTH], passwd_valid_to=valid_to)
        )
    if spec.sound:
        # duplex = line out + line in, micro = speaker + microphone: audio both ways over SPICE
        devices.sounds = [Sound(model="ich6" if legacy else "ich9", codecs=["duplex", "micro"],
                                audio_id=_AUDIO_ID)]
        devices.audios = [Audio(id=_AUDIO_ID, type="spice")]
    return devices


def _interface(spec: DesktopSpec) -> Interface:
    # virtio: the guest's DHCP client gets an address, which its agent reports (RDP connects to it)
    if spec.network is None:
        return Interface(type="user", model="virtio")
    return Interface(type="network", model="virtio", source_network=spec.network)


def _console_password(spec: DesktopSpec) -> tuple[str, str | None]:
    if spec.spice_password is None:
        return secrets.token_urlsafe(24), LOCKED_CONSOLE_VALID_TO
    valid_to = None
    if spec.spice_password_valid_to is not None:
        valid_to = normalise_valid_to(spec.spice_password_valid_to)
    return spec.spice_password, valid_to


def _videos(monitors: int, windows: bool) -> list[Video]:
    if windows:
        # The Windows QXL driver drives one head per device: one device per monitor.
        return [_qxl(heads=1, primary=(i == 0)) for i in range(monitors)]
    # Linux's QXL driver drives several heads on one device (one framebuffer, xrandr layouts).
    return [_qxl(heads=monitors, primary=True)]


def _qxl(heads: int, primary: bool) -> Video:
    # QXL memory bars must be powers of two; give each head a 16 MiB framebuffer.
    scale = 1 << (heads - 1).bit_length()
    return Video(model="qxl", heads=heads, ram_kib=65536 * scale, vram_kib=65536 * scale,
                 vgamem_kib=16384 * scale, primary=primary)
