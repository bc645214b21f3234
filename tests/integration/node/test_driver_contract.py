"""LibvirtDriver's contract, the same cases against libvirt's test driver and the real QEMU driver.

The test driver is what the manager's scale tests and benchmarks use; these cases show where it
behaves like the real thing and pin the places it does not (no device updates, no real ports or CPU
time). The QEMU guests here boot an empty disk and sit in the BIOS: cheap, and deaf to ACPI.
"""
from __future__ import annotations

import uuid
import xml.etree.ElementTree as ET
from pathlib import Path

import libvirt
import pytest

from core.errors import Conflict, DomainNotFound, GatewayTimeout, HypervisorError, Invalid
from hypervisor_node.domxml.designer import design_domain
from hypervisor_node.domxml.model import Owner
from hypervisor_node.driver import LibvirtDriver
from hypervisor_node.screenshot import PNG_SIGNATURE
from tests.unit.node.conftest import desktop_spec

from .conftest import make_blank_disk, remove_owned_domains, unique_manager_id

GOLDEN_DIR = Path(__file__).resolve().parents[2] / "data" / "domxml"


@pytest.fixture(params=["test", pytest.param("qemu", marks=pytest.mark.libvirt)])
def kind(request) -> str:
    return request.param


@pytest.fixture
def contract_driver(kind, request, tmp_path):
    if kind == "test":
        driver = LibvirtDriver(request.getfixturevalue("test_driver_uri"), manager_id=unique_manager_id())
    else:
        uri = request.getfixturevalue("system_libvirtd")
        driver = LibvirtDriver(uri, manager_id=unique_manager_id(), domain_types=["qemu"])
    yield driver
    remove_owned_domains(driver)
    driver.close()


@pytest.fixture
def spec_for(kind, request):
    """A spec that can really boot on this driver: a BIOS guest on a blank disk for QEMU."""

    def make(**overrides):
        disk = "/nonexistent/for-the-test-driver.qcow2"
        if kind == "qemu":
            storage = request.getfixturevalue("shared_storage")
            disk = str(make_blank_disk(storage / f"blank-{uuid.uuid4().hex[:8]}.qcow2"))
        fields = dict(disk_path=disk, memory_mib=64, sound=False, domain_type="qemu",
                      name=f"contract-{uuid.uuid4().hex[:8]}")
        fields.update(overrides)
        return desktop_spec(**fields)

    return make


def test_capabilities(contract_driver, kind):
    caps = contract_driver.capabilities()
    assert caps.domain_types == (["test"] if kind == "test" else ["qemu"])
    assert caps.cpus >= 1 and caps.memory_mib > 0 and caps.free_memory_mib >= 0
    assert caps.hostname and caps.libvirt_version.count(".") == 2


def test_define_is_idempotent_and_listed_with_state(contract_driver, spec_for):
    spec = spec_for()
    assert contract_driver.define(spec).state == "down"
    contract_driver.define(spec)
    assert [(d.uuid, d.name, d.state) for d in contract_driver.list_domains()] == [(spec.uuid, spec.name, "down")]
    info = contract_driver.get_domain(spec.uuid)
    assert [g.type for g in info.graphics] == ["spice", "vnc"] and info.desktop_id == spec.uuid


def test_power_cycle(contract_driver, spec_for, kind):
    spec = spec_for()
    contract_driver.define(spec)
    running = contract_driver.start(spec.uuid)
    assert running.state == "up"
    ports = [g.port for g in running.graphics]
    if kind == "qemu":
        assert all(p and p >= 5900 for p in ports)  # SPICE and VNC ports for the broker
    assert contract_driver.suspend(spec.uuid).state == "paused"
    assert contract_driver.resume(spec.uuid).state == "up"
    with pytest.raises(Conflict):
        contract_driver.undefine(spec.uuid)
    assert contract_driver.poweroff(spec.uuid).state == "down"
    contract_driver.undefine(spec.uuid)
    with pytest.raises(DomainNotFound):
        contract_driver.get_domain(spec.uuid)
    assert contract_driver.list_domains() == []


def test_unknown_and_foreign_domains_are_not_found(contract_driver, spec_for):
    with pytest.raises(DomainNotFound):
        contract_driver.start(str(uuid.uuid4()))
    foreign_spec = spec_for()
    foreign = design_domain(foreign_spec, contract_driver.capabilities())
    foreign.owner = Owner(manager_id="some-other-manager", desktop_id="x")
    contract_driver._run(lambda conn: conn.defineXML(foreign.to_xml()))
    try:
        assert contract_driver.list_domains() == []
        with pytest.raises(DomainNotFound):
            contract_driver.start(foreign_spec.uuid)
        with pytest.raises(Conflict):
            contract_driver.define(foreign_spec)
    finally:
        contract_driver._run(lambda conn: conn.lookupByUUIDString(foreign_spec.uuid).undefine())


def test_bulk_stats_cover_our_domains_in_one_call(contract_driver, spec_for, kind):
    running, stopped = spec_for(), spec_for()
    for spec in (running, stopped):
        contract_driver.define(spec)
    contract_driver.start(running.uuid)
    first = {s.uuid: s for s in contract_driver.bulk_stats()}
    second = {s.uuid: s for s in contract_driver.bulk_stats()}
    assert set(first) == set(second) == {running.uuid, stopped.uuid}
    assert (second[running.uuid].state, second[stopped.uuid].state) == ("up", "down")
    assert 0 <= second[running.uuid].cpu_usage <= 100
    if kind == "qemu":
        assert second[running.uuid].cpu_time_ns >= first[running.uuid].cpu_time_ns > 0
        assert second[running.uuid].vcpus == 1 and second[running.uuid].memory_kib == 64 * 1024
        assert 0 < second[running.uuid].mem_usage <= 100


def test_screenshot_is_png(contract_driver, spec_for):
    spec = spec_for()
    contract_driver.define(spec)
    with pytest.raises(Conflict):
        contract_driver.screenshot(spec.uuid)
    contract_driver.start(spec.uuid)
    assert contract_driver.screenshot(spec.uuid).startswith(PNG_SIGNATURE)


def test_console_ticket(contract_driver, spec_for, kind):
    spec = spec_for()
    contract_driver.define(spec)
    contract_driver.start(spec.uuid)
    if kind == "test":
        with pytest.raises(HypervisorError) as info:  # the test driver cannot update devices
            contract_driver.set_ticket(spec.uuid, "new-ticket", 60)
        assert info.value.libvirt_code == libvirt.VIR_ERR_NO_SUPPORT
        return
    valid_to = contract_driver.set_ticket(spec.uuid, "new-ticket-123", 60)
    live = contract_driver._run(lambda conn: conn.lookupByUUIDString(spec.uuid).XMLDesc(
        libvirt.VIR_DOMAIN_XML_SECURE))
    graphics = {g.get("type"): g for g in ET.fromstring(live).findall("devices/graphics")}
    assert (graphics["spice"].get("passwd"), graphics["spice"].get("passwdValidTo")) == ("new-ticket-123", valid_to)
    assert graphics["vnc"].get("passwd") == "new-tick"
    with pytest.raises(Invalid):
        contract_driver.set_ticket(spec.uuid, "", 60)


def test_shutdown_of_a_guest_that_ignores_it_times_out_and_leaves_it_running(contract_driver, spec_for, kind):
    spec = spec_for()
    contract_driver.define(spec)
    contract_driver.start(spec.uuid)
    if kind == "test":  # the test driver's guests always obey at once
        assert contract_driver.shutdown(spec.uuid, 2).state == "down"
        return
    with pytest.raises(GatewayTimeout, match="still running"):
        contract_driver.shutdown(spec.uuid, 2)
    assert contract_driver.state(spec.uuid).value == "up"


@pytest.mark.libvirt
@pytest.mark.parametrize("golden", sorted(p.name for p in GOLDEN_DIR.glob("*.xml")))
def test_real_qemu_driver_accepts_every_golden_file(golden, system_libvirtd):
    """The test driver only checks the schema; QEMU's driver also checks devices against the emulator."""
    domain_uuid = str(uuid.uuid4())
    xml = (GOLDEN_DIR / golden).read_text()
    root = ET.fromstring(xml)
    root.find("uuid").text = domain_uuid
    root.find("name").text = f"golden-{domain_uuid[:8]}"
    root.set("type", "qemu")  # the KVM golden file would be refused where KVM is unusable
    cpu = root.find("cpu")
    if cpu is not None:
        root.remove(cpu)
    conn = libvirt.open(system_libvirtd)
    try:
        dom = conn.defineXMLFlags(ET.tostring(root, encoding="unicode"), libvirt.VIR_DOMAIN_DEFINE_VALIDATE)
        dom.undefine()
    finally:
        conn.close()
