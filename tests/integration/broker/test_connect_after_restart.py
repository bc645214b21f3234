"""A connect right after a node agent restarts (issue 22 item 11): a test-driver hypervisor keeps its domains in
memory, so a restarted agent knows none of them until the reconcile job that its first heartbeat queues defines
them again. A connect in between started a domain the host did not have and answered 404 domain_not_found. The
database decides what a host should run: the start defines the missing domain from it, and the user gets a
working console."""
from __future__ import annotations

from sqlalchemy import select

from tests.integration.broker.conftest import API, World, bearer, start_agent


def test_a_connect_right_after_a_node_restart_gets_a_running_desktop(clean_db, template_image, uniq, work_dir,
                                                                     anon_client):
    from manager import db
    from manager.models import Desktop, Event
    from manager.provisioning import nodes

    directory = work_dir / f"restart-{uniq}"
    directory.mkdir()
    agent = start_agent(f"{uniq}-node", directory)
    try:
        world = World([agent], template_image, uniq)
        (host_id,) = world.hosts(1)
        pool_id = world.pool(1, os_type="windows_11", protocols="rdp", ip_prefix="10.9")
        user_id, token = world.user("otto")
        world.entitle(pool_id=pool_id, user_id=user_id)
        agent.stop()
        agent.start()  # the same node, its hypervisor empty: what a reinstalled or test-driver host looks like
        client = nodes.client(nodes.NodeTarget(host_id, agent.node.name, agent.node.url, agent.node.token))
        assert client.list_domains() == []

        answer = anon_client.post(f"{API}/broker/connect", headers=bearer(token),
                                  json={"pool_id": pool_id, "client": {"protocols": ["rdp"]}})
        assert answer.status_code == 200, answer.text
        desktop_id = answer.json()["desktop_id"]
        assert [(d["uuid"], d["state"]) for d in client.list_domains()] == [(desktop_id, "up")]
        with db.session_scope() as s:
            desktop = s.get(Desktop, desktop_id)
            assert (desktop.power_state.value, desktop.task_state, desktop.host_id) == ("up", None, host_id)
            codes = list(s.scalars(select(Event.code).where(Event.desktop_id == desktop_id)))
        assert "desktop.redefined" in codes  # said, as the reconcile says it
    finally:
        agent.stop()
