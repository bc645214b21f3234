"""Issue 16's manager acceptance on libvirt test-driver guests: kill the leader manager while a desktop runs and its
user is connected; the standby takes over, the desktop keeps running (the same domain, never restarted), its host
stays up through the node agent's failover to the standby, a new connect through the standby succeeds, and no host
is fenced. The objects are built with the broker tests' World, directly in the database both managers share."""
from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest
from sqlalchemy import func, select

from manager.embedded_nodes import EmbeddedNode, NodeAgentProcess, free_port
from tests.harness.managers import ManagerGroup, manager_group, wait_for
from tests.integration.broker.conftest import World, template_image, work_dir  # noqa: F401  (fixtures)

API = "/api/v1"
RDP = {"protocols": ["rdp"], "address": "127.0.0.1"}  # the test driver cannot set a SPICE ticket


@pytest.fixture
def group(pg_url, settings_env, clean_db, tmp_path) -> Iterator[ManagerGroup]:
    """Two managers on the test database, sharing this process's node key (World seals the hosts' tokens)."""
    with manager_group(pg_url, tmp_path / "managers",
                       env={"VDI_NODE_KEY_FILE": str(settings_env.effective_node_key_file),
                            "VDI_HEARTBEAT_SECONDS": "0.5", "VDI_HA_CHECK_SECONDS": "0.5",
                            "VDI_POOL_MAINTENANCE_SECONDS": "0"}) as managers:
        yield managers


@pytest.fixture
def agent(group, tmp_path) -> Iterator[NodeAgentProcess]:
    """A node agent on its own test-driver hypervisor that knows both managers, m1 first."""
    node = EmbeddedNode(name="ha-node", libvirt_uri="test:///default", port=free_port(), token="ha-" + "t" * 30,
                        domain_types="")
    urls = ",".join(group.managers[name].url for name in ("m1", "m2"))
    process = NodeAgentProcess(node, manager_url=urls, log_path=tmp_path / "agent.log",
                               heartbeat_seconds=0.5).start(60)
    yield process
    process.stop()


def connect(group: ManagerGroup, manager: str, token: str, pool_id: str) -> httpx.Response:
    return httpx.post(f"{group.managers[manager].url}{API}/broker/connect", timeout=60,
                      headers={"Authorization": f"Bearer {token}"}, json={"pool_id": pool_id, "client": RDP})


def domain_state(agent: NodeAgentProcess, desktop_id: str) -> dict:
    """The desktop's domain as its host's agent reports it (its stats: state, cpu time)."""
    answer = httpx.get(f"{agent.node.url}/v1/stats", timeout=30,
                       headers={"Authorization": f"Bearer {agent.node.token}"})
    answer.raise_for_status()
    return next(d for d in answer.json()["domains"] if d["uuid"] == desktop_id)


def test_a_killed_leader_leaves_running_desktops_and_connected_users_alone(group, agent, template_image):  # noqa: F811
    from manager import db
    from manager.models import Event, Host

    world = World([agent], template_image, "hadesk")
    (host_id,) = world.hosts(1, memory_mib=1024)
    pool_id = world.pool(2, os_type="windows_11", protocols="rdp", ip_prefix="10.9")
    alice, alice_token = world.user("ha-alice")
    bob, bob_token = world.user("ha-bob")
    for user in (alice, bob):
        world.entitle(pool_id=pool_id, user_id=user)

    leader = wait_for("one leader", lambda: (found := group.leaders()) and len(found) == 1 and found[0])
    standby = next(name for name in group.managers if name != leader)
    first = connect(group, leader, alice_token, pool_id)
    assert first.status_code == 200, first.text
    desktop = first.json()["desktop_id"]
    before = domain_state(agent, desktop)
    assert before["state"] == "up"
    epoch = group.ha(standby)["epoch"]

    group.kill(leader)
    wait_for("the standby leading", lambda: group.role(standby) == "leader")
    assert group.ha(standby)["epoch"] == epoch + 1

    second = connect(group, standby, bob_token, pool_id)  # a new connect through the new leader
    assert second.status_code == 200, second.text
    assert second.json()["desktop_id"] != desktop
    after = domain_state(agent, desktop)
    assert after["state"] == "up" and after["cpu_time_ns"] >= before["cpu_time_ns"]  # the same run, not restarted
    # alice's desktop answers her again through the standby
    again = connect(group, standby, alice_token, pool_id)
    assert again.status_code == 200 and again.json()["desktop_id"] == desktop

    with db.session_scope() as session:
        assert session.get(Host, host_id).status == "up"
        assert session.scalar(select(func.count()).select_from(Event)
                              .where(Event.code.like("host.fenc%"))) == 0
