"""Acceptance (issue 16): the network of more than half of the hosts is cut at once (their links down; the hosts and
their guests carry on): a real `vdi serve` fences nobody, although every host has a working BMC, and one ALERT says
why; when the links come back the hosts are up again. Two harness hosts with their agents in network namespaces on
the cluster's bridge, the manager on the bridge address; no guests are needed to judge the hosts."""
from __future__ import annotations

import pytest
from sqlalchemy import select

from core.enums import Severity
from ha_manager.failover import host_states, set_fence_agents
from manager import db
from manager.models import Cluster, Event, Host
from tests.harness import ha_world
from tests.harness.bmc import HarnessBmc
from tests.harness.fixtures import host_cluster_factory  # noqa: F401
from tests.harness.managers import wait_for

pytestmark = [pytest.mark.libvirt, pytest.mark.slow]


def _events(code: str) -> list[Event]:
    with db.session_scope() as session:
        rows = list(session.scalars(select(Event).where(Event.code == code)))
        session.expunge_all()
        return rows


def _hosts() -> dict[str, dict]:
    with db.session_scope() as session:
        return {h["name"]: h for h in host_states(session)}


def test_cutting_most_hosts_off_the_network_fences_nobody(host_cluster_factory, pg_url, tmp_path, clean_db):  # noqa: F811
    cluster = host_cluster_factory(hosts=0, network=True, agent_options=["--heartbeat-seconds", "1"])
    with ha_world.manager(pg_url, tmp_path / "manager", address=cluster.manager_address,
                          ha_connecting_after_seconds="3", ha_non_responsive_after_seconds="6") as (url, _log):
        cluster.manager_url = url
        names = ["host1", "host2"]
        for name in names:
            cluster.start_host(name)
        bmcs = {name: HarnessBmc(cluster, name).start() for name in names}
        try:
            with db.session_scope() as session:
                group = Cluster(name="c")
                session.add(group)
                session.flush()
                for name in names:
                    host = Host(name=name, cluster_id=group.id, agent_url=cluster.agent_url(name),
                                agent_token=cluster.token(name))
                    session.add(host)
                    session.flush()
                    set_fence_agents(session, host.id, [bmcs[name].agent_config()], actor="test")
            wait_for("both hosts up by heartbeat", lambda: all(
                h["liveness"] == "up" and h["last_heartbeat_at"] for h in _hosts().values()), 60)
            for name in names:
                cluster.partition_host(name)
            wait_for("both hosts non-responsive", lambda: all(
                h["liveness"] == "non_responsive" for h in _hosts().values()), 60)
            [skipped] = wait_for("the event saying why nobody is fenced", lambda: _events("ha.fencing_skipped"), 30)
            assert skipped.severity == Severity.ALERT and "2 of 2 hosts" in skipped.message
            assert {h["fence_state"] for h in _hosts().values()} == {"skipped"}
            assert all(bmc.power_offs() == [] for bmc in bmcs.values())
            assert _events("host.fence_started") == [] and all(cluster.is_running(name) for name in names)
            for name in names:
                cluster.heal_host(name)
            wait_for("both hosts up again", lambda: all(
                h["liveness"] == "up" and h["fence_state"] == "" for h in _hosts().values()), 60)
            assert all(bmc.power_offs() == [] for bmc in bmcs.values())
            assert len(_events("ha.fencing_skipped")) == 1 and len(_events("host.recovered")) == 2
        finally:
            for bmc in bmcs.values():
                bmc.stop()
