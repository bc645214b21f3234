"""The one seam where libvirtError becomes a core.errors class, and ownership of domains."""
from __future__ import annotations

import uuid

import libvirt
import pytest

from core.errors import Conflict, DomainNotFound, HypervisorError, Invalid, VdiError
from hypervisor_node.domxml.model import Owner
from hypervisor_node.driver import LibvirtDriver, balloon_usage, power_state
from core.enums import PowerState

from .conftest import TEST_MANAGER_ID, desktop_spec


def test_no_domain_becomes_domain_not_found(driver):
    missing = str(uuid.uuid4())
    with pytest.raises(DomainNotFound) as info:
        driver._run(lambda conn: conn.lookupByUUIDString(missing), name=missing)
    assert info.value.status == 404 and missing in info.value.message


def test_any_other_libvirt_error_becomes_hypervisor_error_with_its_code(driver):
    with pytest.raises(HypervisorError) as info:
        driver._run(lambda conn: conn.defineXML("<domain type='test'><name>no uuid</name>"))
    assert info.value.status == 502
    assert info.value.libvirt_code == libvirt.VIR_ERR_XML_DETAIL
    assert f"hypervisor error {libvirt.VIR_ERR_XML_DETAIL}:" in info.value.message
    assert isinstance(info.value.__cause__, libvirt.libvirtError)


def test_an_unsupported_call_is_a_hypervisor_error_not_a_libvirt_error(driver, make_spec):
    spec = make_spec()
    driver.define(spec)
    driver.start(spec.uuid)
    with pytest.raises(HypervisorError) as info:  # the test driver cannot update devices
        driver.set_ticket(spec.uuid, "new-ticket", 60)
    assert info.value.libvirt_code == libvirt.VIR_ERR_NO_SUPPORT


@pytest.mark.parametrize("call", [
    lambda d, u: d.capabilities(),
    lambda d, u: d.list_domains(),
    lambda d, u: d.bulk_stats(),
    lambda d, u: d.get_domain(u),
    lambda d, u: d.start(u),
    lambda d, u: d.define(desktop_spec(uuid=u)),
])
def test_an_unreachable_hypervisor_raises_only_vdi_errors(call, tmp_path):
    broken = LibvirtDriver(f"test://{tmp_path}/does-not-exist.xml")
    with pytest.raises(VdiError) as info:
        call(broken, str(uuid.uuid4()))
    assert isinstance(info.value, HypervisorError)


def test_malformed_uuid_is_invalid_not_a_hypervisor_error(driver):
    with pytest.raises(Invalid, match="not a domain UUID"):
        driver.get_domain("../../etc/passwd")


def _define_foreign(driver: LibvirtDriver, manager_id: str | None) -> str:
    """A domain defined behind our back: another manager's stamp, or none at all."""
    dom_uuid = str(uuid.uuid4())
    metadata = ""
    if manager_id is not None:
        stamp = Owner(manager_id, "someone-elses-desktop").to_element()
        import xml.etree.ElementTree as ET
        metadata = f"<metadata>{ET.tostring(stamp, encoding='unicode')}</metadata>"
    xml = (f"<domain type='test'><name>foreign-{dom_uuid[:8]}</name><uuid>{dom_uuid}</uuid>{metadata}"
           "<memory>131072</memory><os><type>hvm</type></os></domain>")
    driver._run(lambda conn: conn.defineXML(xml).create())
    return dom_uuid


@pytest.mark.parametrize("stamp", [None, "another-manager"])
def test_foreign_domains_are_invisible_and_untouchable(driver, make_spec, stamp):
    ours = make_spec()
    driver.define(ours)
    foreign = _define_foreign(driver, stamp)
    assert [d.uuid for d in driver.list_domains()] == [ours.uuid]
    assert [s.uuid for s in driver.bulk_stats()] == [ours.uuid]
    for action in (driver.get_domain, driver.poweroff, driver.undefine, driver.suspend):
        with pytest.raises(DomainNotFound):
            action(foreign)
    assert driver._run(lambda conn: conn.lookupByUUIDString(foreign).isActive()) == 1


def test_define_refuses_to_replace_a_foreign_domain(driver):
    foreign = _define_foreign(driver, "another-manager")
    with pytest.raises(Conflict, match="refusing to replace it"):
        driver.define(desktop_spec(uuid=foreign))


def test_define_is_idempotent_and_stamps_our_manager_id(driver, make_spec):
    spec = make_spec(extra={"manager_id": "spoofed", "desktop_id": "desk-42"})
    first = driver.define(spec)
    second = driver.define(spec)
    assert first == second
    assert first.desktop_id == "desk-42"
    owner = driver._run(lambda conn: driver._owner_of(conn.lookupByUUIDString(spec.uuid)))
    assert owner == Owner(TEST_MANAGER_ID, "desk-42")
    assert len(driver.list_domains()) == 1


def test_power_actions_check_the_state(driver, make_spec):
    spec = make_spec()
    driver.define(spec)
    with pytest.raises(Conflict, match="not running; cannot reboot"):
        driver.reboot(spec.uuid)
    assert driver.start(spec.uuid).state == "up"
    assert driver.start(spec.uuid).state == "up"  # idempotent
    with pytest.raises(Conflict, match="running; power it off"):
        driver.undefine(spec.uuid)
    assert driver.suspend(spec.uuid).state == "paused"
    assert driver.resume(spec.uuid).state == "up"
    assert driver.poweroff(spec.uuid).state == "down"
    assert driver.poweroff(spec.uuid).state == "down"
    driver.undefine(spec.uuid)
    with pytest.raises(DomainNotFound):
        driver.state(spec.uuid)


@pytest.mark.parametrize("timeout", [0, -1, "10", True, 10_000])
def test_shutdown_timeout_must_be_sane(driver, make_spec, timeout):
    with pytest.raises(Invalid, match="timeout"):
        driver.shutdown(make_spec().uuid, timeout)


@pytest.mark.parametrize("state,reason,expected", [
    (libvirt.VIR_DOMAIN_RUNNING, 1, PowerState.UP),
    (libvirt.VIR_DOMAIN_PAUSED, libvirt.VIR_DOMAIN_PAUSED_USER, PowerState.PAUSED),
    (libvirt.VIR_DOMAIN_PAUSED, libvirt.VIR_DOMAIN_PAUSED_MIGRATION, PowerState.MIGRATING),
    (libvirt.VIR_DOMAIN_SHUTOFF, 0, PowerState.DOWN),
    (libvirt.VIR_DOMAIN_SHUTDOWN, 0, PowerState.POWERING_DOWN),
    (libvirt.VIR_DOMAIN_PMSUSPENDED, 0, PowerState.SUSPENDED),
    (99, 0, PowerState.UNKNOWN),
])
def test_power_state_mapping(state, reason, expected):
    assert power_state(state, reason) is expected


@pytest.mark.parametrize("record,expected", [
    ({"balloon.available": 1000, "balloon.usable": 250, "balloon.unused": 100}, 75),
    ({"balloon.available": 1000, "balloon.unused": 400}, 60),
    ({"balloon.current": 2000, "balloon.rss": 500}, 25),
    ({"balloon.current": 2000, "balloon.rss": 5000}, 100),
    ({}, 0),
])
def test_memory_usage_from_balloon_stats(record, expected):
    assert balloon_usage(record) == expected


def test_cpu_usage_is_computed_from_cpu_time_deltas(driver):
    second = 1_000_000_000
    assert driver._cpu_usage("u", cpu_time=5 * second, now_ns=100 * second, vcpus=2) == 0  # first sighting
    # 1 s of CPU over 2 s of wall time on 2 vCPUs: 25 %
    assert driver._cpu_usage("u", cpu_time=6 * second, now_ns=102 * second, vcpus=2) == 25
    # counter went back (the guest restarted): no bogus figure
    assert driver._cpu_usage("u", cpu_time=1 * second, now_ns=103 * second, vcpus=2) == 0


def test_free_memory_on_the_test_driver_is_total_minus_running_domains(tmp_path):
    from core.specs import DesktopSpec
    from hypervisor_node.driver import LibvirtDriver
    from manager.embedded_nodes import libvirt_test_driver_uri

    driver = LibvirtDriver(libvirt_test_driver_uri(tmp_path / "node.xml"))
    try:
        total = driver.capabilities().memory_mib
        assert driver.capabilities().free_memory_mib == total
        spec = DesktopSpec(uuid="6d1f3a5e-0000-4000-8000-000000000001", name="m", vcpus=1, memory_mib=512,
                           disk_path="/nonexistent.qcow2")
        driver.define(spec)
        assert driver.capabilities().free_memory_mib == total, "a defined, stopped domain uses no memory"
        driver.start(spec.uuid)
        assert driver.capabilities().free_memory_mib == total - 512
    finally:
        driver.close()
