"""Pytest fixtures for real multi-host tests. Import them into a conftest.py:

    from tests.harness.fixtures import demo_image, host_cluster_factory  # noqa: F401
"""
from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

import pytest

from image_manager.demo_image import DemoImage, ensure_demo_image
from tests.harness.hosts import HostCluster

if TYPE_CHECKING:
    from tests.e2e.server import RunningManager


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


@pytest.fixture(scope="module")
def real_guest_manager(request) -> Iterator["RunningManager"]:
    """`vdi demo --real-guests yes` and `vdi serve` on a fresh Postgres database, for the module: carol-finance runs
    as a real QEMU guest on vs-a (tests.e2e.server.manager_with_real_guests; its guests are removed afterwards)."""
    from tests.e2e.server import manager_with_real_guests
    from tests.harness.postgres import PostgresUnavailable

    prefix = "vdi-" + request.module.__name__.rsplit(".", 1)[-1].removeprefix("test_").replace("_", "-")[:20]
    try:
        with manager_with_real_guests(prefix) as server:
            yield server
    except PostgresUnavailable as exc:  # raised before the yield only
        pytest.fail(str(exc))
