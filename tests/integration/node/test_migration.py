"""LibvirtDriver.migrate between two harness hosts (own libvirtd each) sharing one image directory.

The harness's shared directory is local ext4, which libvirt cannot recognise as shared storage; a
host configured with trust_shared_storage migrates anyway, one without it gets a typed refusal.
"""
from __future__ import annotations

import time
import uuid

import libvirt
import pytest

from core.errors import HypervisorError
from core.specs import DesktopSpec
from hypervisor_node.driver import LibvirtDriver
from tests.harness.fixtures import host_cluster_factory  # noqa: F401 (a fixture)
from tests.harness.guests import GuestAgent, SerialLog, agent_channel_path, make_overlay

from .conftest import remove_owned_domains, unique_manager_id

pytestmark = [pytest.mark.libvirt, pytest.mark.slow]

LOOPBACK_STREAM = "tcp://127.0.0.1"


@pytest.fixture
def two_hosts(host_cluster_factory):  # noqa: F811
    from image_manager.demo_image import ensure_demo_image

    cluster = host_cluster_factory(hosts=2)
    image = ensure_demo_image().publish(cluster.shared_dir / "templates")
    manager_id = unique_manager_id("node-migrate")
    source = LibvirtDriver(cluster.uri("host1"), manager_id=manager_id, domain_types=["qemu"])
    dest = LibvirtDriver(cluster.uri("host2"), manager_id=manager_id, domain_types=["qemu"])
    name = f"mig-{uuid.uuid4().hex[:6]}"
    serial = SerialLog(cluster.shared_dir / f"{name}.serial.log")
    spec = DesktopSpec(uuid=str(uuid.uuid4()), name=name, vcpus=1, memory_mib=192,
                       disk_path=str(make_overlay(image.template, cluster.shared_dir / f"{name}.qcow2")),
                       kernel=str(image.kernel), initrd=str(image.initrd), cmdline=image.cmdline(hostname=name),
                       serial_log=str(serial.path), sound=False, spice_password="mig-ticket", domain_type="qemu")
    source.define(spec)
    source.start(spec.uuid)
    serial.wait_for(r"VDI-AGENT ready", timeout=240)
    yield cluster, source, dest, spec
    for driver in (source, dest):
        remove_owned_domains(driver)
        driver.close()


def _agent(cluster, host: str, driver: LibvirtDriver, spec: DesktopSpec) -> GuestAgent:
    live = driver._run(lambda conn: conn.lookupByUUIDString(spec.uuid).XMLDesc(0))
    agent = GuestAgent(cluster.host_path(host, agent_channel_path(live)))
    agent.wait_ready(timeout=60)
    return agent


def test_migration_libvirt_cannot_prove_safe_is_a_typed_refusal(two_hosts):
    cluster, source, dest, spec = two_hosts
    with pytest.raises(HypervisorError) as info:
        source.migrate(spec.uuid, cluster.uri("host2"), migrate_uri=LOOPBACK_STREAM)
    assert info.value.libvirt_code == libvirt.VIR_ERR_MIGRATE_UNSAFE
    assert source.state(spec.uuid).value == "up" and dest.list_domains() == []


def test_live_migration_moves_the_running_desktop_and_its_ownership(two_hosts):
    cluster, source, dest, spec = two_hosts
    before = _agent(cluster, "host1", source, spec)
    assert before.request("write /home/user/note.txt before the move") == "ok 16"
    uptime = int(before.request("uptime"))

    source.trust_shared_storage = True
    source.migrate(spec.uuid, cluster.uri("host2"), migrate_uri=LOOPBACK_STREAM)

    assert source.list_domains() == []  # undefined on the source
    moved = dest.get_domain(spec.uuid)
    assert (moved.state, moved.desktop_id) == ("up", spec.uuid)  # our stamp travelled with it
    assert [g.port for g in moved.graphics if g.type == "spice"][0]
    after = _agent(cluster, "host2", dest, spec)
    assert int(after.request("uptime")) >= uptime  # the same guest, not a reboot
    assert after.request("read /home/user/note.txt") == "before the move"
    deadline = time.monotonic() + 30
    while cluster.pids("host1").qemu and time.monotonic() < deadline:
        time.sleep(0.2)
    assert cluster.pids("host1").qemu == []
    # persisted on the destination: it survives a power cycle there
    assert dest.poweroff(spec.uuid).state == "down"
    assert [d.uuid for d in dest.list_domains()] == [spec.uuid]
