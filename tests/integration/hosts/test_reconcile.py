"""After an agent (re)starts, the database decides intent: missing desktops are defined again, unknown domains
stamped by us are reported and left alone. Real agent process, libvirt test driver."""
from __future__ import annotations

import uuid

import pytest
from sqlalchemy import select

from core.specs import DesktopSpec
from manager import db
from manager.embedded_nodes import EmbeddedNode, NodeAgentProcess, free_port, libvirt_test_driver_uri
from manager.models import Cluster, Desktop, Event, Host, Job, Template, TemplateVersion, Volume
from manager.node_reconcile import reconcile_host
from manager.nodes.client import NodeClient


@pytest.fixture
def agent(tmp_path):
    node = EmbeddedNode(name="rh1", libvirt_uri=libvirt_test_driver_uri(tmp_path / "rh1.xml"), port=free_port(),
                        token=uuid.uuid4().hex)
    proc = NodeAgentProcess(node, manager_url=None, log_path=tmp_path / "rh1.log").start()
    yield node
    proc.stop()


def _world(node: EmbeddedNode, names: list[str]) -> tuple[str, dict[str, str]]:
    with db.session_scope() as session:
        cluster = Cluster(name="c")
        session.add(cluster)
        session.flush()
        host = Host(name=node.name, cluster_id=cluster.id, agent_url=node.url, agent_token=node.token)
        template = Template(name="t", memory_mib=128)
        session.add_all([host, template])
        session.flush()
        version = TemplateVersion(template_id=template.id, number=1)
        session.add(version)
        session.flush()
        ids = {}
        for name in names:
            desktop = Desktop(name=name, template_version_id=version.id, host_id=host.id, memory_mib=128)
            session.add(desktop)
            session.flush()
            volume = Volume(path=f"/srv/vdi/{desktop.id}.qcow2", desktop_id=desktop.id)
            session.add(volume)
            session.flush()
            desktop.volume_id = volume.id
            ids[name] = desktop.id
        return host.id, ids


def test_missing_desktops_are_redefined_and_strangers_reported(clean_db, agent):
    host_id, ids = _world(agent, ["keep", "lost"])
    stray = str(uuid.uuid4())
    with NodeClient(agent.url, agent.token) as client:
        client.define(DesktopSpec(uuid=ids["keep"], name="keep", vcpus=1, memory_mib=128, disk_path="/x/keep"))
        client.define(DesktopSpec(uuid=stray, name="stray", vcpus=1, memory_mib=128, disk_path="/x/stray"))
        result = reconcile_host(host_id)
        assert result["redefined"] == ["lost"]
        assert result["unknown"] == [stray]
        assert result["failed"] == {}
        on_node = {d.get("uuid") if isinstance(d, dict) else d.uuid for d in client.list_domains()}
    assert on_node == {ids["keep"], ids["lost"], stray}, "the stray domain is left alone"
    with db.session_scope() as session:
        events = {e.code: e for e in session.scalars(select(Event))}
    assert events["desktop.redefined"].desktop_id == ids["lost"]
    assert stray in events["host.unknown_domain"].message
    # Reconciling again finds nothing new to fix.
    assert reconcile_host(host_id)["redefined"] == []


def test_a_new_agent_start_time_schedules_one_reconcile(client, anon_client, monkeypatch):
    monkeypatch.setattr("manager.jobs.dispatch", lambda job_id: None)
    cluster = client.post("/api/v1/clusters", json={"name": "c"}).json()
    host = client.post("/api/v1/hosts", json={"name": "h", "cluster_id": cluster["id"]}).json()
    headers = {"Authorization": f"Bearer {host['agent_token']}"}

    def beat(started: str, seq: int):
        response = anon_client.post("/api/v1/nodes/h/heartbeat", headers=headers,
                                    json={"seq": seq, "agent_started_at": started, "domains": []})
        assert response.status_code == 200, response.text

    beat("2026-11-22T10:00:00+00:00", 1)
    beat("2026-11-22T10:00:00+00:00", 2)
    beat("2026-11-22T11:00:00+00:00", 1)
    with db.session_scope() as session:
        jobs = session.scalars(select(Job).where(Job.kind == "hosts.reconcile")).all()
    assert len(jobs) == 2 and all(j.target_id == host["id"] for j in jobs)
