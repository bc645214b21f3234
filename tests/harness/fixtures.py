"""Pytest fixtures for real multi-host tests. Import them into a conftest.py:

    from tests.harness.fixtures import demo_image, host_cluster_factory  # noqa: F401
"""
from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Iterator

import pytest

from image_manager.demo_image import DemoImage, ensure_demo_image
from tests.harness.hosts import HostCluster


def _require_libvirt_host() -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root: the harness runs libvirtd in private namespaces")
    missing = [tool for tool in ("libvirtd", "virtlogd", "qemu-system-x86_64", "unshare", "nsenter", "ip")
               if shutil.which(tool) is None]
    if missing:
        pytest.skip(f"missing {missing}: install libvirt-daemon-system, qemu-system-x86, util-linux, iproute2")


@pytest.fixture(scope="session")
def demo_image() -> DemoImage:
    """The cached demo desktop (built on first use; see image_manager.demo_image)."""
    return ensure_demo_image()


@pytest.fixture
def host_cluster_factory() -> Iterator[Callable[..., HostCluster]]:
    """make(hosts=2, **HostCluster options) -> a cluster with host1..hostN running; all closed afterwards."""
    _require_libvirt_host()
    clusters: list[HostCluster] = []

    def make(hosts: int = 2, **options: object) -> HostCluster:
        cluster = HostCluster(**options)  # type: ignore[arg-type]
        clusters.append(cluster)
        for number in range(1, hosts + 1):
            cluster.start_host(f"host{number}")
        return cluster

    yield make
    for cluster in clusters:
        cluster.close()
