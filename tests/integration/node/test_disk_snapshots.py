"""Live disk snapshots and block commits: LibvirtDriver on the test driver and real QEMU, NodeClient through a
real agent process. The QEMU guests boot a blank disk and sit in the BIOS (cheap); what a booted guest
reads and writes across snapshots and merges is shown in tests/integration/image_service/test_live_snapshots.py.
"""
from __future__ import annotations

import json
import os
import subprocess
import uuid
import xml.etree.ElementTree as ET
from pathlib import Path

import libvirt
import pytest

from core.errors import Conflict, DomainNotFound, HypervisorError, Invalid
from hypervisor_node.driver import LibvirtDriver
from manager.nodes import NodeClient
from tests.unit.node.conftest import desktop_spec

from .conftest import AgentProcess, make_blank_disk, remove_owned_domains, unique_manager_id
from .test_driver_contract import contract_driver, kind, spec_for  # noqa: F401 (fixtures)

TOKEN = "disk-snapshot-token"


def backing_chain(path: Path | str) -> list[str]:
    """The chain as qemu-img reads it from the files (force-share: the guest holds the write lock)."""
    out = subprocess.run(["qemu-img", "info", "-U", "--backing-chain", "--output=json", str(path)],
                         capture_output=True, text=True, check=True, timeout=60).stdout
    return [image["filename"] for image in json.loads(out)]


def xml_sources(driver: LibvirtDriver, domain_uuid: str, flags: int) -> list[str]:
    """The disk chain recorded in the domain's live (flags=0) or persistent (INACTIVE) definition."""
    disk = ET.fromstring(driver._run(lambda conn: conn.lookupByUUIDString(domain_uuid).XMLDesc(flags))) \
        .find("devices/disk")
    chain = []
    while disk is not None and disk.find("source") is not None:
        chain.append(disk.find("source").get("file"))
        disk = disk.find("backingStore")
    return chain


@pytest.fixture
def workdir(request):
    storage = request.getfixturevalue("shared_storage")
    path = storage / f"snap-{uuid.uuid4().hex[:8]}"
    path.mkdir()
    os.chmod(path, 0o755)
    return path


def test_the_test_driver_refuses_live_snapshots_and_merges(request, tmp_path):
    driver = LibvirtDriver(request.getfixturevalue("test_driver_uri"), manager_id=unique_manager_id())
    try:
        spec = desktop_spec(disk_path="/nonexistent/desk.qcow2")
        driver.define(spec)
        driver.start(spec.uuid)
        with pytest.raises(HypervisorError) as info:  # "unsupported flags" for DISK_ONLY | NO_METADATA
            driver.snapshot_disk(spec.uuid, str(tmp_path / "overlay.qcow2"))
        assert info.value.libvirt_code == libvirt.VIR_ERR_INVALID_ARG
        with pytest.raises(Invalid, match="no backing file"):  # its XML shows no backing chain at all
            driver.block_commit(spec.uuid)
        assert driver.state(spec.uuid).value == "up"
    finally:
        remove_owned_domains(driver)
        driver.close()


@pytest.mark.parametrize("kind", ["qemu"], indirect=False)
@pytest.mark.libvirt
def test_bad_arguments_are_refused_before_libvirt(contract_driver, spec_for, workdir, kind):
    spec = spec_for(disk_path=str(make_blank_disk(workdir / "base.qcow2")))
    contract_driver.define(spec)
    for bad in ("relative/x.qcow2", "", "/a/../b.qcow2", None, 7):
        with pytest.raises(Invalid, match="absolute"):
            contract_driver.snapshot_disk(spec.uuid, bad)
    with pytest.raises(Conflict, match="not running"):
        contract_driver.snapshot_disk(spec.uuid, str(workdir / "new.qcow2"))
    with pytest.raises(Conflict, match="not running"):
        contract_driver.block_commit(spec.uuid)
    with pytest.raises(Invalid, match="timeout"):
        contract_driver.block_commit(spec.uuid, timeout=0)
    with pytest.raises(DomainNotFound):
        contract_driver.snapshot_disk(str(uuid.uuid4()), str(workdir / "new.qcow2"))
    assert not (workdir / "new.qcow2").exists()


@pytest.mark.parametrize("kind", ["qemu"], indirect=False)
@pytest.mark.libvirt
def test_live_snapshots_then_inner_and_active_commits(contract_driver, spec_for, workdir, kind):
    base = str(make_blank_disk(workdir / "base.qcow2"))
    spec = spec_for(disk_path=base)
    contract_driver.define(spec)
    contract_driver.start(spec.uuid)
    first, second, third = (str(workdir / f"{n}.qcow2") for n in ("first", "second", "third"))

    assert contract_driver.snapshot_disk(spec.uuid, first) == [first, base]
    assert contract_driver.snapshot_disk(spec.uuid, first) == [first, base]  # a re-run changes nothing
    assert contract_driver.snapshot_disk(spec.uuid, second) == [second, first, base]
    # libvirt rewrote the persistent definition too: the next boot uses the new file
    assert xml_sources(contract_driver, spec.uuid, libvirt.VIR_DOMAIN_XML_INACTIVE)[0] == second
    assert xml_sources(contract_driver, spec.uuid, 0) == [second, first, base]
    assert backing_chain(second) == [second, first, base]
    with pytest.raises(Invalid, match="already in the disk chain"):
        contract_driver.snapshot_disk(spec.uuid, base)
    (workdir / "taken.qcow2").write_bytes(b"")
    with pytest.raises(Conflict, match="already exists"):
        contract_driver.snapshot_disk(spec.uuid, str(workdir / "taken.qcow2"))

    with pytest.raises(Invalid, match="not in the disk chain"):
        contract_driver.block_commit(spec.uuid, top=str(workdir / "elsewhere.qcow2"))
    with pytest.raises(Invalid, match="not below"):
        contract_driver.block_commit(spec.uuid, top=first, base=second)
    with pytest.raises(Invalid, match="no backing file"):
        contract_driver.block_commit(spec.uuid, top=base)

    # Active commit with the default base: into the IMMEDIATE backing file only, never down to the bottom.
    assert contract_driver.block_commit(spec.uuid) == [first, base]
    assert xml_sources(contract_driver, spec.uuid, libvirt.VIR_DOMAIN_XML_INACTIVE)[0] == first
    assert backing_chain(first) == [first, base]
    assert os.path.exists(second)  # dropped from the chain, left for the caller to delete

    # An inner commit: `first` goes into `base`, and the active file's backing becomes `base`.
    assert contract_driver.snapshot_disk(spec.uuid, third) == [third, first, base]
    assert contract_driver.block_commit(spec.uuid, top=first) == [third, base]
    assert backing_chain(third) == [third, base]
    assert xml_sources(contract_driver, spec.uuid, libvirt.VIR_DOMAIN_XML_INACTIVE)[0] == third
    assert contract_driver.state(spec.uuid).value == "up"  # the guest ran throughout

    contract_driver.poweroff(spec.uuid)
    # a re-run of the last snapshot on the stopped domain still answers from its definition
    assert contract_driver.snapshot_disk(spec.uuid, third)[0] == third


@pytest.mark.libvirt
def test_node_client_snapshot_and_blockcommit_through_a_real_agent(system_libvirtd, agent_processes, workdir,
                                                                    tmp_path):
    manager_id = unique_manager_id("snap-client")
    agent = AgentProcess(system_libvirtd, TOKEN, manager_id=manager_id, log_path=tmp_path / "agent.log")
    agent_processes.append(agent)
    agent.start()
    base = str(make_blank_disk(workdir / "base.qcow2"))
    overlay = str(workdir / "overlay.qcow2")
    spec = desktop_spec(disk_path=base, memory_mib=64, sound=False, domain_type="qemu")
    driver = LibvirtDriver(system_libvirtd, manager_id=manager_id)
    try:
        with NodeClient(agent.url, TOKEN, timeout=60) as client:
            client.define(spec)
            with pytest.raises(Conflict, match="not running"):
                client.snapshot_disk(spec.uuid, overlay)
            client.start(spec.uuid)
            with pytest.raises(Invalid, match="absolute"):
                client.snapshot_disk(spec.uuid, "overlay.qcow2")
            with pytest.raises(Invalid, match="no backing file"):
                client.block_commit(spec.uuid)
            assert client.snapshot_disk(spec.uuid, overlay) == [overlay, base]
            with pytest.raises(Invalid, match="not below"):
                client.block_commit(spec.uuid, top=overlay, base=overlay)
            assert client.block_commit(spec.uuid, base=base, timeout=120) == [base]
            assert client.get_domain(spec.uuid)["state"] == "up"
            with pytest.raises(DomainNotFound):
                client.block_commit(str(uuid.uuid4()))
    finally:
        remove_owned_domains(driver)
        driver.close()
