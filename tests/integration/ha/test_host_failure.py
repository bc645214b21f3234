"""Acceptance (issue 16): a host running HA desktops fails; a real `vdi serve` notices, fences it through IPMI (the
host's BMC is a real IPMI 2.0 server whose power-off kills the host) and restarts its HA desktops on the other host
from the same overlays (a file written in a guest before the failure is still there), with the events and the
ALERT; an idle non-HA desktop is not restarted, and the broker's path to the desktop leads to its new host.

The failure is a hang: every process of host1 (agent, libvirtd, QEMU) is frozen, so its guests still hold their
disks, as on a host whose kernel hung; only the fence's power-off frees them. Real TCG guests of the demo image, two
harness hosts, three guests."""
from __future__ import annotations

import pytest
from sqlalchemy import select

from core.enums import PowerState, Protocol, Severity
from manager import db
from manager.models import Desktop, Event, HaRestart
from manager.nodes.client import NodeClient
from manager.provisioning import nodes
from manager.provisioning.consoles import issue_for_desktop
from tests.harness import ha_world
from tests.harness.fixtures import demo_image, host_cluster_factory  # noqa: F401
from tests.harness.managers import wait_for

pytestmark = [pytest.mark.libvirt, pytest.mark.slow]
DESKTOPS = {"ha-first": (True, 10), "ha-second": (True, 5), "idle": (False, 0)}  # all on host1: (ha, priority)
NOTE = "written before the failure"


@pytest.fixture
def manager_process(pg_url, tmp_path, clean_db):
    # clean_db first: emptying the tables under a running manager deletes its lease, and it leads again with epoch 1
    # while its heartbeat replies still tell the node agents the higher epoch it took over from a previous test's
    # lease, so the agents refuse its restarts as a former leader's
    with ha_world.manager(pg_url, tmp_path / "manager", ha_connecting_after_seconds="3",
                          ha_non_responsive_after_seconds="6") as served:
        yield served


def _guest(client: NodeClient, desktop_id: str, line: str) -> str:
    try:
        return client.guest(desktop_id, line, timeout=5)
    except Exception:  # noqa: BLE001 (not booted yet: the caller waits)
        return ""


def _desktops() -> dict[str, Desktop]:
    with db.session_scope() as session:
        rows = {d.name: d for d in session.scalars(select(Desktop))}
        session.expunge_all()
        return rows


def test_a_failed_host_is_fenced_through_ipmi_and_its_ha_desktops_run_elsewhere(
        host_cluster_factory, demo_image, manager_process):  # noqa: F811
    url, _log = manager_process
    cluster = host_cluster_factory(hosts=2, network=False, manager_url=url, agent_options=["--heartbeat-seconds", "1"],
                                   lock_manager="lockd")  # as in production: a disk held on host1 starts nowhere else
    image = demo_image.publish(cluster.shared_dir / "demo")
    world = ha_world.build(cluster, image, {name: ("host1", ha, priority) for name, (ha, priority) in DESKTOPS.items()})
    clients, ids, host_ids, bmc = world.clients, world.desktop_ids, world.host_ids, world.bmcs["host1"]
    try:
        wait_for("the three desktops up by heartbeat", lambda: all(
            d.power_state == PowerState.UP for d in _desktops().values()), 120)
        wait_for("the guest agent of ha-first", lambda: _guest(clients["host1"], ids["ha-first"], "ping") == "pong", 300)
        assert clients["host1"].guest(ids["ha-first"], f"write /home/user/note.txt {NOTE}", timeout=10).startswith("ok")
        # sync: the guest's page cache must reach the overlay before the power is cut
        clients["host1"].guest(ids["ha-first"], "sync", timeout=30)

        ha_world.hang(cluster, "host1")  # every process frozen, its guests still holding their disks

        fenced = wait_for("host1 fenced", lambda: _events("host.fenced"), 120)
        assert fenced[0].host_id == host_ids["host1"] and "ipmi 127.0.0.1" in fenced[0].message
        assert len(bmc.power_offs()) == 1, "the BMC carried out the power-off"
        assert cluster.pids("host1").qemu == []
        wait_for("both HA desktops running on host2", lambda: all(
            d.power_state == PowerState.UP and d.host_id == host_ids["host2"] and d.task_state is None
            for n, d in _desktops().items() if n != "idle"), 180)
        rows = _desktops()
        assert (rows["idle"].power_state, rows["idle"].host_id) == (PowerState.DOWN, host_ids["host1"])
        with db.session_scope() as session:
            assert session.scalars(select(HaRestart)).all() == []
        on_host2 = {d["uuid"]: d["state"] for d in clients["host2"].list_domains()}
        assert on_host2 == {ids["ha-first"]: "up", ids["ha-second"]: "up"}

        [alert] = _events("host.non_responsive")
        assert alert.severity == Severity.ALERT and alert.host_id == host_ids["host1"]
        assert _events("host.fence_started") and not _events("host.fence_failed")
        restarted = _events("desktop.ha_restarted")
        assert {e.desktop_id for e in restarted} == {ids["ha-first"], ids["ha-second"]}

        # the same desktop, from the same overlay: the note is still there
        wait_for("the guest agent of ha-first on host2",
              lambda: _guest(clients["host2"], ids["ha-first"], "ping") == "pong", 300)
        assert clients["host2"].guest(ids["ha-first"], "read /home/user/note.txt", timeout=10) == NOTE
        # the broker's path to the desktop leads to host2: a console ticket is set there
        with db.session_scope() as session:
            desktop = session.get(Desktop, ids["ha-first"])
            assert nodes.target_of_desktop(session, desktop).host_name == "host2"
            console = issue_for_desktop(session, desktop, Protocol.SPICE, username="ann")
        assert console.port
    finally:
        world.close()


def _events(code: str) -> list[Event]:
    with db.session_scope() as session:
        rows = list(session.scalars(select(Event).where(Event.code == code).order_by(Event.id)))
        session.expunge_all()
        return rows
