"""Which shard of `make test` each test file runs in: the one rule (docs/DEVELOPING.md, Tests).

`make test` (scripts/run-tests.sh) runs two pytest processes at once, so that the light shard's minutes overlap the
heavy shard's waiting on QEMU guests:

    heavy   every file that reaches a resource of the whole machine: real QEMU guests on qemu:///system (display
            ports, domain names, /var/run/libvirt), the harness's libvirtd hosts in namespaces (bridges vdib*, netns
            vdi<N>-*, /run/vdi-harness), the one Samba AD DC (ports 88/389/636, /tmp/vdi-test-ad), PID namespaces
            powered off by the harness BMC. One process runs them one at a time, as before.
    light   the rest: unit tests, Postgres/Redis integration tests (each process has a database of its own,
            tests/harness/postgres.py, and a Redis DB of its own, VDI_TEST_REDIS_URL), `vdi serve` and node agents
            on libvirt's test driver (free ports, private directories), the browser tests (their own manager and
            chromium profile).

A FILE is heavy when any of its tests carries a HEAVY_MARKERS marker, uses (directly or through other fixtures) a
HEAVY_FIXTURES fixture, or the file is listed in HEAVY_FILES; every other file is light. Whole files, so that a
module's fixtures start in one process only. `pytest --shard=heavy|light` runs one shard (the other's tests are
deselected); without --shard, pytest runs everything in one process, as always. `--shard-list=PATH` writes the
node ids that this run selected (scripts/run-tests.sh checks that the shards partition the whole collection). Give
both with '=': pytest reads a separate value that names an existing file as a path to test, before it knows them.
"""
from __future__ import annotations

from pathlib import Path

import pytest

SHARDS = ("heavy", "light")

HEAVY_MARKERS = {
    "libvirt": "real libvirtd and QEMU (pyproject.toml's marker)",
    "ad": "the Samba AD DC",
}

HEAVY_FIXTURES = {
    "ad": "the one Samba AD DC (tests/integration/identity/conftest.py)",
    "host_cluster_factory": "libvirtd hosts in namespaces, bridges and veths (tests/harness/hosts.py)",
    "demo_image": "real QEMU guests of the demo image (tests/harness/fixtures.py)",
    "real_guest_manager": "`vdi demo --real-guests yes`: a guest on qemu:///system",
    "system_libvirtd": "qemu:///system (tests/integration/node/conftest.py)",
    "published_demo_image": "real QEMU guests on qemu:///system (tests/integration/node/conftest.py)",
    "real_node": "a node agent on qemu:///system (tests/integration/broker/test_real_guests.py)",
}

# Files that reach a machine-wide resource without one of the markers or fixtures above, or that are moved to balance
# the shards' lengths, with the reason.
HEAVY_FILES = {
    "tests/integration/ha/test_fence_agents.py": "PID namespaces (unshare) powered off by the harness BMC",
    # Not a shared resource: the longest light file (about 8 of the light shard's 32 minutes, against the heavy
    # shard's 20), moved to balance the two.
    "tests/integration/api/test_schemathesis.py": "balance: the light shard's longest file",
}

REPO = Path(__file__).resolve().parents[1]


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("vdi shards")
    group.addoption("--shard", choices=SHARDS, help="run only this shard's test files (tests/shards.py)")
    group.addoption("--shard-list", metavar="PATH", help="write the node ids this run selected to PATH")


def file_of(item: pytest.Item) -> str:
    return item.path.resolve().relative_to(REPO).as_posix()


def heavy_reason(item: pytest.Item) -> str | None:
    """Why `item` alone makes its file heavy, or None."""
    for marker in item.iter_markers():
        if marker.name in HEAVY_MARKERS:
            return f"marker {marker.name}"
    for name in getattr(item, "fixturenames", ()):
        if name in HEAVY_FIXTURES:
            return f"fixture {name}"
    return None


def shard_of_files(items: list[pytest.Item]) -> dict[str, str]:
    """{file: shard} for the files of `items`."""
    shards = {}
    for item in items:
        path = file_of(item)
        if shards.get(path) != "heavy":
            shards[path] = "heavy" if path in HEAVY_FILES or heavy_reason(item) else "light"
    return shards


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    wanted = config.getoption("shard")
    if wanted:
        shards = shard_of_files(items)
        keep = [item for item in items if shards[file_of(item)] == wanted]
        dropped = [item for item in items if shards[file_of(item)] != wanted]
        if dropped:
            config.hook.pytest_deselected(items=dropped)
            items[:] = keep
    listing = config.getoption("shard_list")
    if listing:
        Path(listing).write_text("".join(f"{item.nodeid}\n" for item in items))
