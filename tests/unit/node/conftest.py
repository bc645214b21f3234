"""Fixtures for the node agent's unit tests: a private libvirt test-driver hypervisor per test."""
from __future__ import annotations

import uuid
from pathlib import Path

import pytest

from core.specs import DesktopSpec

# The test driver reads its initial state from this file; an empty node is a host with no domains.
EMPTY_NODE_XML = "<node/>\n"
TEST_MANAGER_ID = "unit-tests"


def private_test_uri(directory: Path) -> str:
    """A libvirt test-driver URI of its own (test:///default is shared by the whole process)."""
    node = directory / "node.xml"
    node.write_text(EMPTY_NODE_XML)
    return f"test://{node.resolve()}"


def desktop_spec(**overrides) -> DesktopSpec:
    fields = dict(uuid=str(uuid.uuid4()), name=f"desk-{uuid.uuid4().hex[:8]}", vcpus=1, memory_mib=128,
                  disk_path="/srv/vdi/desktops/desk.qcow2", spice_password="s3cret-ticket")
    fields.update(overrides)
    return DesktopSpec(**fields)


@pytest.fixture
def test_uri(tmp_path: Path) -> str:
    return private_test_uri(tmp_path)


@pytest.fixture
def driver(test_uri: str):
    from hypervisor_node.driver import LibvirtDriver

    drv = LibvirtDriver(test_uri, manager_id=TEST_MANAGER_ID)
    yield drv
    drv.close()


@pytest.fixture
def make_spec():
    return desktop_spec
