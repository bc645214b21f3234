"""The shape of libvirt domain XML as plain dataclasses, to and from ElementTree.

Shape only: every choice about WHAT a desktop's domain contains lives in designer.py. Parsing is
lenient (elements and attributes this model does not know are skipped), so the live XML libvirt
returns, full of aliases and PCI addresses, parses into the same objects the designer builds.
"""
from __future__ import annotations

import xml.etree.ElementTree as ET
from dataclasses import dataclass, field

VDI_NS = "https://vdi.example.org/xmlns/domain/1"
VDI_PREFIX = "vdi"
ET.register_namespace(VDI_PREFIX, VDI_NS)

_MEMORY_UNIT_KIB = {
    "b": 1 / 1024, "bytes": 1 / 1024,
    "k": 1, "kib": 1, "kb": 1000 / 1024,
    "m": 1024, "mib": 1024, "mb": 1000_000 / 1024,
    "g": 1024**2, "gib": 1024**2, "gb": 1000_000_000 / 1024,
    "t": 1024**3, "tib": 1024**3, "tb": 1000_000_000_000 / 1024,
}


def _memory_kib(el: ET.Element | None) -> int | None:
    if el is None or el.text is None:
        return None
    unit = el.get("unit", "KiB").lower()
    return int(int(el.text.strip()) * _MEMORY_UNIT_KIB[unit])


def _int_or_none(value: str | None) -> int | None:
    return None if value is None else int(value)


def _yes(value: bool) -> str:
    return "yes" if value else "no"


def _set(el: ET.Element, name: str, value: object) -> None:
    """Set an attribute only when it has a value, so optional fields stay out of the XML."""
    if value is None:
        return
    el.set(name, str(value))


def _local(tag: str) -> str:
    return tag.rsplit("}", 1)[-1]


@dataclass
class Owner:
    """Our stamp in the domain's <metadata>: which manager and which desktop this domain belongs to."""

    manager_id: str
    desktop_id: str

    def to_element(self) -> ET.Element:
        root = ET.Element(f"{{{VDI_NS}}}desktop")
        ET.SubElement(root, f"{{{VDI_NS}}}owner", manager=self.manager_id, desktop=self.desktop_id)
        return root

    def to_metadata_xml(self) -> str:
        """The stamp as libvirt's setMetadata() wants it (no namespace prefix: libvirt adds its own)."""
        root = ET.Element("desktop")
        ET.SubElement(root, "owner", manager=self.manager_id, desktop=self.desktop_id)
        return ET.tostring(root, encoding="unicode")

    @classmethod
    def from_element(cls, el: ET.Element) -> "Owner | None":
        """Read the stamp from our <desktop> element, namespaced or as libvirt's metadata() returns it."""
        if _local(el.tag) != "desktop":
            return None
        for child in el:
            if _local(child.tag) == "owner":
                return cls(manager_id=child.get("manager", ""), desktop_id=child.get("desktop", ""))
        return None

    @classmethod
    def from_metadata_xml(cls, text: str) -> "Owner | None":
        return cls.from_element(ET.fromstring(text))


@dataclass
class OsBoot:
    arch: str = "x86_64"
    machine: str = "pc"
    os_type: str = "hvm"
    kernel: str | None = None
    initrd: str | None = None
    cmdline: str | None = None
    boot_devices: list[str] = field(default_factory=list)

    def to_element(self) -> ET.Element:
        el = ET.Element("os")
        type_el = ET.SubElement(el, "type", arch=self.arch, machine=self.machine)
        type_el.text = self.os_type
        for tag in ("kernel", "initrd", "cmdline"):
            value = getattr(self, tag)
            if value is not None:
                ET.SubElement(el, tag).text = value
        for dev in self.boot_devices:
            ET.SubElement(el, "boot", dev=dev)
        return el

    @classmethod
    def from_element(cls, el: ET.Element) -> "OsBoot":
        type_el = el.find("type")
        return cls(
            arch=type_el.get("arch", "x86_64") if type_el is not None else "x86_64",
            machine=type_el.get("machine", "pc") if type_el is not None else "pc",
            os_type=(type_el.text or "hvm").strip() if type_el is not None else "hvm",
            kernel=el.findtext("kernel"),
            initrd=el.findtext("initrd"),
            cmdline=el.findtext("cmdline"),
            boot_devices=[b.get("dev", "") for b in el.findall("boot")],
        )


@dataclass
class Disk:
    source_file: str
    target_dev: str = "vda"
    target_bus: str = "virtio"
    driver_name: str = "qemu"
    driver_type: str = "qcow2"
    driver_cache: str | None = None
    driver_discard: str | None = None
    device: str = "disk"
    readonly: bool = False

    def to_element(self) -> ET.Element:
        el = ET.Element("disk", type="file", device=self.device)
        driver = ET.SubElement(el, "driver", name=self.driver_name, type=self.driver_type)
        _set(driver, "cache", self.driver_cache)
        _set(driver, "discard", self.driver_discard)
        ET.SubElement(el, "source", file=self.source_file)
        ET.SubElement(el, "target", dev=self.target_dev, bus=self.target_bus)
        if self.readonly:
            ET.SubElement(el, "readonly")
        return el

    @classmethod
    def from_element(cls, el: ET.Element) -> "Disk":
        driver = el.find("driver")
        source = el.find("source")
        target = el.find("target")
        return cls(
            source_file=source.get("file", "") if source is not None else "",
            target_dev=target.get("dev", "") if target is not None else "",
            target_bus=target.get("bus", "") if target is not None else "",
            driver_name=driver.get("name", "qemu") if driver is not None else "qemu",
            driver_type=driver.get("type", "raw") if driver is not None else "raw",
            driver_cache=driver.get("cache") if driver is not None else None,
            driver_discard=driver.get("discard") if driver is not None else None,
            device=el.get("device", "disk"),
            readonly=el.find("readonly") is not None,
        )


@dataclass
class Controller:
    type: str
    index: int = 0
    model: str | None = None
    ports: int | None = None

    def to_element(self) -> ET.Element:
        el = ET.Element("controller", type=self.type, index=str(self.index))
        _set(el, "model", self.model)
        _set(el, "ports", self.ports)
        return el

    @classmethod
    def from_element(cls, el: ET.Element) -> "Controller":
        return cls(
            type=el.get("type", ""),
            index=int(el.get("index", "0")),
            model=el.get("model"),
            ports=_int_or_none(el.get("ports")),
        )


@dataclass
class Graphics:
    type: str  # "spice" | "vnc"
    listen: str | None = None
    autoport: bool = True
    port: int | None = None
    tls_port: int | None = None
    passwd: str | None = None
    passwd_valid_to: str | None = None  # "YYYY-MM-DDTHH:MM:SS", UTC

    def to_element(self) -> ET.Element:
        el = ET.Element("graphics", type=self.type, autoport=_yes(self.autoport))
        _set(el, "port", self.port)
        _set(el, "tlsPort", self.tls_port)
        _set(el, "listen", self.listen)
        _set(el, "passwd", self.passwd)
        _set(el, "passwdValidTo", self.passwd_valid_to)
        if self.listen is not None:
            ET.SubElement(el, "listen", type="address", address=self.listen)
        return el

    @classmethod
    def from_element(cls, el: ET.Element) -> "Graphics":
        listen = el.get("listen")
        if listen is None:
            listen_el = el.find("listen")
            if listen_el is not None:
                listen = listen_el.get("address")
        port = _int_or_none(el.get("port"))
        tls_port = _int_or_none(el.get("tlsPort"))
        return cls(
            type=el.get("type", ""),
            listen=listen,
            autoport=el.get("autoport", "no") == "yes",
            port=port if port is not None and port > 0 else None,  # libvirt writes -1 while unassigned
            tls_port=tls_port if tls_port is not None and tls_port > 0 else None,
            passwd=el.get("passwd"),
            passwd_valid_to=el.get("passwdValidTo"),
        )


@dataclass
class Video:
    model: str = "qxl"
    heads: int = 1
    ram_kib: int | None = None
    vram_kib: int | None = None
    vgamem_kib: int | None = None
    primary: bool = False

    def to_element(self) -> ET.Element:
        el = ET.Element("video")
        model = ET.SubElement(el, "model", type=self.model)
        _set(model, "ram", self.ram_kib)
        _set(model, "vram", self.vram_kib)
        _set(model, "vgamem", self.vgamem_kib)
        model.set("heads", str(self.heads))
        if self.primary:
            model.set("primary", "yes")
        return el

    @classmethod
    def from_element(cls, el: ET.Element) -> "Video":
        model = el.find("model")
        if model is None:
            return cls()
        return cls(
            model=model.get("type", ""),
            heads=int(model.get("heads", "1")),
            ram_kib=_int_or_none(model.get("ram")),
            vram_kib=_int_or_none(model.get("vram")),
            vgamem_kib=_int_or_none(model.get("vgamem")),
            primary=model.get("primary") == "yes",
        )


@dataclass
class Channel:
    type: str  # "spicevmc" | "unix" | "pty"
    target_name: str
    target_type: str = "virtio"
    source_mode: str | None = None  # "bind" for a unix socket the host side listens on
    source_path: str | None = None  # None with mode=bind: libvirt chooses a per-domain path

    def to_element(self) -> ET.Element:
        el = ET.Element("channel", type=self.type)
        if self.source_mode is not None or self.source_path is not None:
            source = ET.SubElement(el, "source")
            _set(source, "mode", self.source_mode)
            _set(source, "path", self.source_path)
        ET.SubElement(el, "target", type=self.target_type, name=self.target_name)
        return el

    @classmethod
    def from_element(cls, el: ET.Element) -> "Channel":
        source = el.find("source")
        target = el.find("target")
        return cls(
            type=el.get("type", ""),
            target_name=target.get("name", "") if target is not None else "",
            target_type=target.get("type", "") if target is not None else "",
            source_mode=source.get("mode") if source is not None else None,
            source_path=source.get("path") if source is not None else None,
        )


@dataclass
class RedirDev:
    type: str = "spicevmc"
    bus: str = "usb"

    def to_element(self) -> ET.Element:
        return ET.Element("redirdev", bus=self.bus, type=self.type)

    @classmethod
    def from_element(cls, el: ET.Element) -> "RedirDev":
        return cls(type=el.get("type", ""), bus=el.get("bus", ""))


@dataclass
class Audio:
    id: int
    type: str  # "spice" | "none" | ...

    def to_element(self) -> ET.Element:
        return ET.Element("audio", id=str(self.id), type=self.type)

    @classmethod
    def from_element(cls, el: ET.Element) -> "Audio":
        return cls(id=int(el.get("id", "0")), type=el.get("type", ""))


@dataclass
class Sound:
    model: str = "ich9"
    codecs: list[str] = field(default_factory=list)
    audio_id: int | None = None

    def to_element(self) -> ET.Element:
        el = ET.Element("sound", model=self.model)
        for codec in self.codecs:
            ET.SubElement(el, "codec", type=codec)
        if self.audio_id is not None:
            ET.SubElement(el, "audio", id=str(self.audio_id))
        return el

    @classmethod
    def from_element(cls, el: ET.Element) -> "Sound":
        audio = el.find("audio")
        return cls(
            model=el.get("model", ""),
            codecs=[c.get("type", "") for c in el.findall("codec")],
            audio_id=_int_or_none(audio.get("id")) if audio is not None else None,
        )


@dataclass
class MemBalloon:
    model: str = "virtio"
    stats_period_s: int | None = None

    def to_element(self) -> ET.Element:
        el = ET.Element("memballoon", model=self.model)
        if self.stats_period_s is not None:
            ET.SubElement(el, "stats", period=str(self.stats_period_s))
        return el

    @classmethod
    def from_element(cls, el: ET.Element) -> "MemBalloon":
        stats = el.find("stats")
        return cls(
            model=el.get("model", ""),
            stats_period_s=_int_or_none(stats.get("period")) if stats is not None else None,
        )


@dataclass
class Serial:
    type: str = "pty"  # "file" writes the console to source_path
    source_path: str | None = None
    target_port: int = 0

    def to_element(self) -> ET.Element:
        el = ET.Element("serial", type=self.type)
        if self.source_path is not None:
            ET.SubElement(el, "source", path=self.source_path)
        ET.SubElement(el, "target", port=str(self.target_port))
        return el

    @classmethod
    def from_element(cls, el: ET.Element) -> "Serial":
        source = el.find("source")
        target = el.find("target")
        return cls(
            type=el.get("type", ""),
            source_path=source.get("path") if source is not None else None,
            target_port=int(target.get("port", "0")) if target is not None else 0,
        )


@dataclass
class Interface:
    type: str = "user"  # "user": QEMU's own NAT and DHCP; "network": the libvirt network source_network
    model: str = "virtio"
    source_network: str | None = None
    mac: str | None = None  # None: libvirt picks one when the domain is defined

    def to_element(self) -> ET.Element:
        el = ET.Element("interface", type=self.type)
        if self.mac is not None:
            ET.SubElement(el, "mac", address=self.mac)
        if self.source_network is not None:
            ET.SubElement(el, "source", network=self.source_network)
        ET.SubElement(el, "model", type=self.model)
        return el

    @classmethod
    def from_element(cls, el: ET.Element) -> "Interface":
        mac = el.find("mac")
        source = el.find("source")
        model = el.find("model")
        return cls(
            type=el.get("type", ""),
            model=model.get("type", "") if model is not None else "",
            source_network=source.get("network") if source is not None else None,
            mac=mac.get("address") if mac is not None else None,
        )


@dataclass
class Input:
    type: str = "tablet"
    bus: str = "usb"

    def to_element(self) -> ET.Element:
        return ET.Element("input", type=self.type, bus=self.bus)

    @classmethod
    def from_element(cls, el: ET.Element) -> "Input":
        return cls(type=el.get("type", ""), bus=el.get("bus", ""))


@dataclass
class Devices:
    emulator: str | None = None
    disks: list[Disk] = field(default_factory=list)
    interfaces: list[Interface] = field(default_factory=list)
    controllers: list[Controller] = field(default_factory=list)
    inputs: list[Input] = field(default_factory=list)
    graphics: list[Graphics] = field(default_factory=list)
    videos: list[Video] = field(default_factory=list)
    channels: list[Channel] = field(default_factory=list)
    redirdevs: list[RedirDev] = field(default_factory=list)
    sounds: list[Sound] = field(default_factory=list)
    audios: list[Audio] = field(default_factory=list)
    serials: list[Serial] = field(default_factory=list)
    memballoon: MemBalloon | None = None

    # (XML tag, attribute, class) in the order they are written
    _LISTS = (
        ("disk", "disks", Disk),
        ("interface", "interfaces", Interface),
        ("controller", "controllers", Controller),
        ("input", "inputs", Input),
        ("graphics", "graphics", Graphics),
        ("video", "videos", Video),
        ("channel", "channels", Channel),
        ("redirdev", "redirdevs", RedirDev),
        ("sound", "sounds", Sound),
        ("audio", "audios", Audio),
        ("serial", "serials", Serial),
    )

    def to_element(self) -> ET.Element:
        el = ET.Element("devices")
        if self.emulator is not None:
            ET.SubElement(el, "emulator").text = self.emulator
        for _tag, attr, _cls in self._LISTS:
            for item in getattr(self, attr):
                el.append(item.to_element())
        if self.memballoon is not None:
            el.append(self.memballoon.to_element())
        return el

    @classmethod
    def from_element(cls, el: ET.Element) -> "Devices":
        devices = cls(emulator=el.findtext("emulator"))
        for tag, attr, item_cls in cls._LISTS:
            setattr(devices, attr, [item_cls.from_element(child) for child in el.findall(tag)])
        balloon = el.find("memballoon")
        if balloon is not None:
            devices.memballoon = MemBalloon.from_element(balloon)
        return devices

    def graphics_of_type(self, graphics_type: str) -> Graphics | None:
        return next((g for g in self.graphics if g.type == graphics_type), None)

    def channel_named(self, target_name: str) -> Channel | None:
        return next((c for c in self.channels if c.target_name == target_name), None)


@dataclass
class Domain:
    type: str  # "kvm" | "qemu" (| "test" in libvirt's test driver)
    name: str
    uuid: str
    memory_kib: int
    vcpus: int
    os: OsBoot = field(default_factory=OsBoot)
    devices: Devices = field(default_factory=Devices)
    current_memory_kib: int | None = None
    features: list[str] = field(default_factory=list)  # empty flags such as "acpi", "apic"
    cpu_mode: str | None = None  # "host-model", "host-passthrough"; None: the hypervisor default
    clock_offset: str = "utc"
    on_poweroff: str = "destroy"
    on_reboot: str = "restart"
    on_crash: str = "destroy"
    owner: Owner | None = None
    domain_id: int | None = None  # only on a running domain's live XML

    def to_element(self) -> ET.Element:
        el = ET.Element("domain", type=self.type)
        _set(el, "id", self.domain_id)
        ET.SubElement(el, "name").text = self.name
        ET.SubElement(el, "uuid").text = self.uuid
        if self.owner is not None:
            ET.SubElement(el, "metadata").append(self.owner.to_element())
        ET.SubElement(el, "memory", unit="KiB").text = str(self.memory_kib)
        if self.current_memory_kib is not None:
            ET.SubElement(el, "currentMemory", unit="KiB").text = str(self.current_memory_kib)
        ET.SubElement(el, "vcpu").text = str(self.vcpus)
        el.append(self.os.to_element())
        if self.features:
            features = ET.SubElement(el, "features")
            for name in self.features:
                ET.SubElement(features, name)
        if self.cpu_mode is not None:
            ET.SubElement(el, "cpu", mode=self.cpu_mode)
        ET.SubElement(el, "clock", offset=self.clock_offset)
        ET.SubElement(el, "on_poweroff").text = self.on_poweroff
        ET.SubElement(el, "on_reboot").text = self.on_reboot
        ET.SubElement(el, "on_crash").text = self.on_crash
        el.append(self.devices.to_element())
        return el

    def to_xml(self) -> str:
        el = self.to_element()
        ET.indent(el, space="  ")
        return ET.tostring(el, encoding="unicode") + "\n"

    @classmethod
    def from_element(cls, el: ET.Element) -> "Domain":
        owner = None
        metadata = el.find("metadata")
        if metadata is not None:
            stamp = metadata.find(f"{{{VDI_NS}}}desktop")
            if stamp is not None:
                owner = Owner.from_element(stamp)
        features = el.find("features")
        cpu = el.find("cpu")
        clock = el.find("clock")
        os_el = el.find("os")
        devices_el = el.find("devices")
        return cls(
            type=el.get("type", ""),
            name=(el.findtext("name") or "").strip(),
            uuid=(el.findtext("uuid") or "").strip(),
            memory_kib=_memory_kib(el.find("memory")) or 0,
            current_memory_kib=_memory_kib(el.find("currentMemory")),
            vcpus=int((el.findtext("vcpu") or "1").strip()),
            os=OsBoot.from_element(os_el) if os_el is not None else OsBoot(),
            devices=Devices.from_element(devices_el) if devices_el is not None else Devices(),
            features=[_local(f.tag) for f in features] if features is not None else [],
            cpu_mode=cpu.get("mode") if cpu is not None else None,
            clock_offset=clock.get("offset", "utc") if clock is not None else "utc",
            on_poweroff=(el.findtext("on_poweroff") or "destroy").strip(),
            on_reboot=(el.findtext("on_reboot") or "restart").strip(),
            on_crash=(el.findtext("on_crash") or "destroy").strip(),
            owner=owner,
            domain_id=_int_or_none(el.get("id")),
        )

    @classmethod
    def from_xml(cls, text: str) -> "Domain":
        return cls.from_element(ET.fromstring(text))
