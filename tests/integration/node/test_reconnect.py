"""The driver survives its libvirtd restarting: the next call reconnects instead of failing forever."""
from __future__ import annotations

import pytest

from core.errors import HypervisorError
from hypervisor_node.driver import LibvirtDriver
from tests.harness.fixtures import host_cluster_factory  # noqa: F401 (a fixture)
from tests.unit.node.conftest import desktop_spec

from .conftest import remove_owned_domains, unique_manager_id

pytestmark = [pytest.mark.libvirt]


def test_reads_reconnect_after_libvirtd_restarts(host_cluster_factory):  # noqa: F811
    cluster = host_cluster_factory(hosts=1)
    driver = LibvirtDriver(cluster.uri("host1"), manager_id=unique_manager_id("node-reconnect"),
                           domain_types=["qemu"])
    spec = desktop_spec(disk_path=str(cluster.shared_dir / "never-started.qcow2"), domain_type="qemu")
    try:
        driver.define(spec)
        first_connection = driver._conn
        cluster.restart_libvirtd("host1")
        # the old connection is dead; an idempotent read notices, reconnects and answers
        assert [d.uuid for d in driver.list_domains()] == [spec.uuid]
        assert driver._conn is not first_connection
        assert driver.get_domain(spec.uuid).state == "down"
    finally:
        remove_owned_domains(driver)
        driver.close()


def test_a_stopped_libvirtd_is_a_hypervisor_error_then_recovers(host_cluster_factory):  # noqa: F811
    cluster = host_cluster_factory(hosts=1)
    driver = LibvirtDriver(cluster.uri("host1"), manager_id=unique_manager_id("node-reconnect"))
    try:
        assert driver.list_domains() == []
        cluster.stop_host("host1")
        with pytest.raises(HypervisorError):
            driver.list_domains()
        cluster.start_host("host1")
        assert driver.list_domains() == []
    finally:
        driver.close()
