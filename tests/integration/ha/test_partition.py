"""Acceptance (issue 16), the fence path: host1 is partitioned (its link down) while an HA desktop runs on it, so the
guest keeps running there, unseen. The manager must not start it elsewhere before host1 is proven off: it fences host1
through its BMC (out of band, still reachable) and only then starts the desktop on host2, exactly once; at no moment
do both hosts run it. One real guest; agents in network namespaces, the manager on the cluster's bridge."""
from __future__ import annotations

import time

import pytest
from sqlalchemy import select

from core.enums import PowerState
from manager import db
from manager.models import Desktop, Event
from tests.harness import ha_world
from tests.harness.fixtures import demo_image, host_cluster_factory  # noqa: F401
from tests.harness.managers import wait_for

pytestmark = [pytest.mark.libvirt, pytest.mark.slow]


def _desktop(desktop_id: str) -> Desktop:
    with db.session_scope() as session:
        desktop = session.get(Desktop, desktop_id)
        session.expunge(desktop)
        return desktop


def test_a_partitioned_host_is_fenced_before_its_desktop_runs_elsewhere(host_cluster_factory, demo_image,  # noqa: F811
                                                                        pg_url, tmp_path, clean_db):
    cluster = host_cluster_factory(hosts=0, network=True, agent_options=["--heartbeat-seconds", "1"])
    with ha_world.manager(pg_url, tmp_path / "manager", address=cluster.manager_address,
                          ha_connecting_after_seconds="3", ha_non_responsive_after_seconds="6") as (url, _log):
        cluster.manager_url = url
        for name in ("host1", "host2"):
            cluster.start_host(name)
        image = demo_image.publish(cluster.shared_dir / "demo")
        world = ha_world.build(cluster, image, {"solo": ("host1", True, 1)})
        desktop_id = world.desktop_ids["solo"]
        try:
            wait_for("the desktop up by heartbeat", lambda: _desktop(desktop_id).power_state == PowerState.UP, 120)
            cluster.partition_host("host1")
            overlap, samples = [], 0
            deadline = time.monotonic() + 180
            while time.monotonic() < deadline:
                on_host1 = desktop_id in ha_world.running_guests(cluster, "host1") if cluster.is_running("host1") \
                    else False
                on_host2 = any(d["uuid"] == desktop_id and d["state"] == "up"
                               for d in world.clients["host2"].list_domains())
                samples += 1
                if on_host1 and on_host2:
                    overlap.append(samples)
                if on_host2 and not on_host1:
                    break
                time.sleep(0.2)
            assert overlap == [], "the desktop ran on both hosts at once"
            wait_for("the restart recorded", lambda: (lambda d: (d.power_state, d.host_id, d.task_state) == (
                PowerState.UP, world.host_ids["host2"], None))(_desktop(desktop_id)), 60)
            assert len(world.bmcs["host1"].power_offs()) == 1 and world.bmcs["host2"].power_offs() == []
            with db.session_scope() as session:
                codes = list(session.scalars(select(Event.code).where(Event.code.in_(
                    ["host.non_responsive", "host.fenced", "desktop.ha_restarted", "ha.fencing_skipped"]))
                    .order_by(Event.id)))
            assert codes == ["host.non_responsive", "host.fenced", "desktop.ha_restarted"]
            time.sleep(3)  # a few more rounds: it is started once, not again
            with db.session_scope() as session:
                assert len(session.scalars(select(Event).where(Event.code == "desktop.ha_restarted")).all()) == 1
        finally:
            world.close()
