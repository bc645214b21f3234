"""The designer's policy, pinned by golden XML files that libvirt itself validates.

Regenerate the golden files after a deliberate policy change with
    VDI_UPDATE_GOLDEN=1 .venv/bin/python -m pytest tests/unit/node/test_designer.py
and review the diff: it IS the policy change.
"""
from __future__ import annotations

import os
import re
from pathlib import Path

import libvirt
import pytest

from core.errors import Invalid, NoHostAvailable
from core.specs import DesktopSpec, HostCaps
from hypervisor_node.domxml.designer import (
    GUEST_AGENT_CHANNEL,
    LOCKED_CONSOLE_VALID_TO,
    SPICE_AGENT_CHANNEL,
    design_domain,
    normalise_valid_to,
)
from hypervisor_node.domxml.model import Domain

from .conftest import desktop_spec, private_test_uri

GOLDEN_DIR = Path(__file__).resolve().parents[2] / "data" / "domxml"
UPDATE = os.environ.get("VDI_UPDATE_GOLDEN") == "1"

TCG_HOST = HostCaps(hostname="node-a", domain_types=["qemu"], cpus=4, memory_mib=8192, free_memory_mib=6000)
KVM_HOST = HostCaps(hostname="node-b", domain_types=["kvm", "qemu"], cpus=16, memory_mib=65536,
                    free_memory_mib=60000)

GOLDEN_CASES: dict[str, tuple[DesktopSpec, HostCaps]] = {
    "linux_disk_boot": (
        DesktopSpec(uuid="6f1c2f7a-3b1e-4d8a-9c55-0a8f2d9e1b01", name="linux-desk-01", vcpus=2,
                    memory_mib=2048, disk_path="/srv/vdi/desktops/linux-desk-01.qcow2",
                    os_type="debian_12", spice_password="t1cket-linux",
                    spice_password_valid_to="2026-11-22T10:00:00"),
        TCG_HOST,
    ),
    "linux_direct_kernel_four_heads_kvm": (
        DesktopSpec(uuid="6f1c2f7a-3b1e-4d8a-9c55-0a8f2d9e1b02", name="demo-desk-02", vcpus=1,
                    memory_mib=192, disk_path="/srv/vdi/desktops/demo-desk-02.qcow2",
                    kernel="/srv/vdi/images/vmlinuz", initrd="/srv/vdi/images/initrd.img",
                    cmdline="console=ttyS0 quiet", serial_log="/var/log/vdi/demo-desk-02.log",
                    monitors=4, usb_redirect_channels=3, spice_listen="0.0.0.0",
                    spice_password="four-heads", spice_password_valid_to="2026-11-22T10:00:00+01:00"),
        KVM_HOST,
    ),
    "windows10_two_monitors": (
        DesktopSpec(uuid="6f1c2f7a-3b1e-4d8a-9c55-0a8f2d9e1b03", name="win10-desk-03", vcpus=2,
                    memory_mib=4096, disk_path="/srv/vdi/desktops/win10-desk-03.qcow2",
                    os_type="windows_10", monitors=2, spice_password="w1ndows-ticket",
                    domain_type="qemu"),
        KVM_HOST,
    ),
    "windows_xp_legacy_no_vnc": (
        DesktopSpec(uuid="6f1c2f7a-3b1e-4d8a-9c55-0a8f2d9e1b04", name="xp-desk-04", vcpus=1,
                    memory_mib=512, disk_path="/srv/vdi/desktops/xp-desk-04.qcow2",
                    os_type="windows_xp", vnc_fallback=False, spice_password="xp-ticket"),
        TCG_HOST,
    ),
    "minimal_no_sound": (
        DesktopSpec(uuid="6f1c2f7a-3b1e-4d8a-9c55-0a8f2d9e1b05", name="kiosk-05", vcpus=1, memory_mib=256,
                    disk_path="/srv/vdi/desktops/kiosk-05.qcow2", sound=False, vnc_fallback=False,
                    spice_password="kiosk", extra={"manager_id": "mgr-1", "desktop_id": "desk-05"}),
        TCG_HOST,
    ),
}


@pytest.mark.parametrize("case", sorted(GOLDEN_CASES))
def test_design_matches_golden_file(case):
    spec, host = GOLDEN_CASES[case]
    xml = design_domain(spec, host).to_xml()
    golden = GOLDEN_DIR / f"{case}.xml"
    if UPDATE:
        golden.write_text(xml)
    assert golden.exists(), f"{golden} is missing; run with VDI_UPDATE_GOLDEN=1 once and review it"
    assert xml == golden.read_text()


@pytest.mark.parametrize("case", sorted(GOLDEN_CASES))
def test_golden_file_is_valid_libvirt_domain_xml(case, tmp_path):
    """libvirt parses each golden file against its RNG schema (VALIDATE) and keeps what we designed."""
    xml = (GOLDEN_DIR / f"{case}.xml").read_text()
    conn = libvirt.open(private_test_uri(tmp_path))
    try:
        dom = conn.defineXMLFlags(xml, libvirt.VIR_DOMAIN_DEFINE_VALIDATE)
        ours = Domain.from_xml(xml)
        theirs = Domain.from_xml(dom.XMLDesc(libvirt.VIR_DOMAIN_XML_SECURE))
    finally:
        conn.close()
    assert theirs.uuid == ours.uuid and theirs.name == ours.name
    assert theirs.owner == ours.owner
    assert theirs.memory_kib == ours.memory_kib and theirs.vcpus == ours.vcpus
    assert theirs.os.kernel == ours.os.kernel and theirs.os.cmdline == ours.os.cmdline
    assert [d.source_file for d in theirs.devices.disks] == [d.source_file for d in ours.devices.disks]
    assert [(v.model, v.heads) for v in theirs.devices.videos] == [(v.model, v.heads) for v in ours.devices.videos]
    assert len(theirs.devices.redirdevs) == len(ours.devices.redirdevs)
    assert [c.target_name for c in theirs.devices.channels] == [c.target_name for c in ours.devices.channels]
    assert [(g.type, g.passwd, g.passwd_valid_to) for g in theirs.devices.graphics] == \
        [(g.type, g.passwd, g.passwd_valid_to) for g in ours.devices.graphics]
    assert [(s.model, s.codecs) for s in theirs.devices.sounds] == [(s.model, s.codecs) for s in ours.devices.sounds]


@pytest.mark.parametrize("case", sorted(GOLDEN_CASES))
def test_golden_file_round_trips_through_the_model(case):
    xml = (GOLDEN_DIR / f"{case}.xml").read_text()
    assert Domain.from_xml(xml).to_xml() == xml


def test_every_golden_file_has_a_case():
    assert sorted(p.stem for p in GOLDEN_DIR.glob("*.xml")) == sorted(GOLDEN_CASES)


# ---- policy, one decision at a time ------------------------------------------------------------------
def test_disk_is_a_virtio_qcow2_overlay_without_host_cache():
    disk = design_domain(desktop_spec(disk_path="/srv/d.qcow2"), TCG_HOST).devices.disks
    assert [(d.source_file, d.target_bus, d.driver_type, d.driver_cache) for d in disk] == \
        [("/srv/d.qcow2", "virtio", "qcow2", "none")]


@pytest.mark.parametrize("monitors", [1, 2, 3, 4])
def test_linux_gets_one_qxl_device_with_a_head_per_monitor(monitors):
    videos = design_domain(desktop_spec(monitors=monitors), TCG_HOST).devices.videos
    assert [(v.model, v.heads, v.primary) for v in videos] == [("qxl", monitors, True)]
    assert videos[0].vgamem_kib >= 16384 * monitors


@pytest.mark.parametrize("monitors", [1, 3])
def test_windows_gets_one_qxl_device_per_monitor(monitors):
    videos = design_domain(desktop_spec(monitors=monitors, os_type="windows_11"), TCG_HOST).devices.videos
    assert [(v.model, v.heads) for v in videos] == [("qxl", 1)] * monitors
    assert [v.primary for v in videos] == [True] + [False] * (monitors - 1)


@pytest.mark.parametrize("monitors", [0, 5, -1])
def test_monitor_count_outside_one_to_four_is_refused(monitors):
    with pytest.raises(Invalid, match="monitors is .* between 1 and 4"):
        design_domain(desktop_spec(monitors=monitors), TCG_HOST)


@pytest.mark.parametrize("channels", [2, 5])
def test_usb_redirection_channels_follow_the_spec(channels):
    domain = design_domain(desktop_spec(usb_redirect_channels=channels), TCG_HOST)
    assert [(r.bus, r.type) for r in domain.devices.redirdevs] == [("usb", "spicevmc")] * channels
    assert any(c.type == "usb" and c.model == "qemu-xhci" for c in domain.devices.controllers)


def test_fewer_than_two_usb_redirection_channels_are_refused():
    with pytest.raises(Invalid, match="usb_redirect_channels"):
        design_domain(desktop_spec(usb_redirect_channels=1), TCG_HOST)


def test_spice_has_password_expiry_and_listen_address_and_vnc_falls_back_with_eight_characters():
    spec = desktop_spec(spice_password="a-long-ticket-1234", spice_password_valid_to="2026-01-02T03:04:05Z",
                        spice_listen="10.1.2.3")
    spice, vnc = design_domain(spec, TCG_HOST).devices.graphics
    assert (spice.type, spice.listen, spice.passwd, spice.passwd_valid_to) == \
        ("spice", "10.1.2.3", "a-long-ticket-1234", "2026-01-02T03:04:05")
    assert (vnc.type, vnc.listen, vnc.passwd, vnc.passwd_valid_to) == \
        ("vnc", "10.1.2.3", "a-long-t", "2026-01-02T03:04:05")


def test_a_desktop_without_a_ticket_gets_a_locked_console():
    first = design_domain(desktop_spec(spice_password=None), TCG_HOST).devices.graphics
    second = design_domain(desktop_spec(spice_password=None), TCG_HOST).devices.graphics
    assert {g.passwd_valid_to for g in first} == {LOCKED_CONSOLE_VALID_TO}
    assert first[0].passwd and len(first[0].passwd) >= 16
    assert first[0].passwd != second[0].passwd


def test_agent_channels_and_their_names():
    channels = design_domain(desktop_spec(), TCG_HOST).devices.channels
    assert [(c.type, c.target_type, c.target_name) for c in channels] == [
        ("spicevmc", "virtio", SPICE_AGENT_CHANNEL),
        ("unix", "virtio", GUEST_AGENT_CHANNEL),
    ]
    assert channels[1].source_mode == "bind"


@pytest.mark.parametrize("os_type,model", [("debian_12", "ich9"), ("windows_10", "ich9"),
                                           ("windows_7", "ich6"), ("windows_xp", "ich6")])
def test_sound_card_with_codecs_for_both_directions(os_type, model):
    sounds = design_domain(desktop_spec(os_type=os_type), TCG_HOST).devices.sounds
    assert [(s.model, s.codecs) for s in sounds] == [(model, ["duplex", "micro"])]


def test_no_sound_device_when_the_spec_turns_sound_off():
    devices = design_domain(desktop_spec(sound=False), TCG_HOST).devices
    assert devices.sounds == [] and devices.audios == []


def test_balloon_reports_stats_and_serial_console_goes_to_the_log_file():
    devices = design_domain(desktop_spec(serial_log="/var/log/vdi/x.log"), TCG_HOST).devices
    assert (devices.memballoon.model, devices.memballoon.stats_period_s) == ("virtio", 5)
    assert [(s.type, s.source_path) for s in devices.serials] == [("file", "/var/log/vdi/x.log")]


@pytest.mark.parametrize("spec_type,host,expected", [
    (None, TCG_HOST, "qemu"),
    (None, KVM_HOST, "kvm"),
    ("qemu", KVM_HOST, "qemu"),
    ("kvm", KVM_HOST, "kvm"),
])
def test_domain_type_comes_from_the_host_unless_the_spec_says(spec_type, host, expected):
    domain = design_domain(desktop_spec(domain_type=spec_type), host)
    assert domain.type == expected
    assert domain.cpu_mode == ("host-model" if expected == "kvm" else None)


def test_kvm_on_a_host_without_kvm_is_no_host_available():
    with pytest.raises(NoHostAvailable, match="KVM"):
        design_domain(desktop_spec(domain_type="kvm"), TCG_HOST)


def test_more_vcpus_than_the_host_has_is_no_host_available():
    with pytest.raises(NoHostAvailable, match="8 vCPUs"):
        design_domain(desktop_spec(vcpus=8), TCG_HOST)


def test_direct_kernel_boot_only_when_a_kernel_is_given():
    direct = design_domain(desktop_spec(kernel="/k", initrd="/i", cmdline="console=ttyS0"), TCG_HOST).os
    assert (direct.kernel, direct.initrd, direct.cmdline, direct.boot_devices) == ("/k", "/i", "console=ttyS0", [])
    disk = design_domain(desktop_spec(), TCG_HOST).os
    assert (disk.kernel, disk.boot_devices) == (None, ["hd"])


def test_every_desktop_has_one_virtio_nic_on_the_named_network_or_qemus_own():
    (own,) = design_domain(desktop_spec(), TCG_HOST).devices.interfaces
    assert (own.type, own.model, own.source_network) == ("user", "virtio", None)
    (named,) = design_domain(desktop_spec(network="default"), TCG_HOST).devices.interfaces
    assert (named.type, named.model, named.source_network) == ("network", "virtio", "default")


def test_owner_stamp_defaults_to_the_desktop_uuid():
    spec = desktop_spec()
    owner = design_domain(spec, TCG_HOST).owner
    assert (owner.manager_id, owner.desktop_id) == ("", spec.uuid)


@pytest.mark.parametrize("overrides,message", [
    ({"uuid": "not-a-uuid"}, "is not a UUID"),
    ({"name": ""}, "name"),
    ({"name": "a/b"}, "without '/'"),
    ({"vcpus": 0}, "vcpus is 0"),
    ({"vcpus": "2"}, "vcpus must be a int"),
    ({"memory_mib": 8}, "memory_mib is 8"),
    ({"disk_path": "relative.qcow2"}, "disk_path must be an absolute path"),
    ({"kernel": "vmlinuz"}, "kernel must be an absolute path"),
    ({"initrd": "/boot/initrd"}, "initrd is set without kernel"),
    ({"os_type": "beos"}, "os_type 'beos' is unknown"),
    ({"spice_listen": "localhost"}, "not an IP address"),
    ({"spice_password": "x" * 61}, "spice_password must be 1-60"),
    ({"spice_password_valid_to": "tomorrow"}, "not ISO-8601"),
    ({"domain_type": "xen"}, "domain_type 'xen'"),
    ({"sound": "yes"}, "sound must be a bool"),
    ({"network": ""}, "must be a libvirt network's name"),
    ({"network": "a/b"}, "must be a libvirt network's name"),
])
def test_bad_specs_are_refused_with_a_message_naming_the_field(overrides, message):
    with pytest.raises(Invalid, match=re.escape(message)):
        design_domain(desktop_spec(**overrides), TCG_HOST)


def test_valid_to_is_normalised_to_utc():
    assert normalise_valid_to("2026-11-22T10:00:00+01:00") == "2026-11-22T09:00:00"
    assert normalise_valid_to("2026-11-22T10:00:00") == "2026-11-22T10:00:00"
