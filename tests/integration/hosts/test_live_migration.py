"""POST /api/v1/desktops/{id}/migrate on real parts: a running QEMU guest on one harness host (its own libvirtd and
node agent) moves live to the other through the API's job; the guest agent's uptime continues (the same guest, not
a reboot) and the manager records the new host. The refusals (same host, a host in maintenance, not running,
unknown ids) come first, on the same desktop."""
from __future__ import annotations

import os
import uuid

import libvirt
import pytest

from core.enums import HostStatus, PowerState
from core.specs import DesktopSpec
from image_manager import qcow2
from manager import db
from manager.models import Cluster, Desktop, Host
from manager.nodes.client import NodeClient
from tests.harness.fixtures import demo_image, host_cluster_factory  # noqa: F401
from tests.harness.guests import GuestAgent, SerialLog, agent_channel_path
from tests.integration.broker.conftest import job_ended

pytestmark = [pytest.mark.libvirt, pytest.mark.slow]
API = "/api/v1"


@pytest.fixture(autouse=True)
def hosts_without_heartbeats(monkeypatch):
    """The agents here send no heartbeats (the test sets the hosts up): the liveness monitor must not expect any."""
    monkeypatch.setenv("VDI_HOST_DEAD_AFTER_SECONDS", "86400")


def _agent(cluster, host: str, desktop_id: str) -> GuestAgent:
    conn = libvirt.open(cluster.uri(host))
    try:
        xml = conn.lookupByUUIDString(desktop_id).XMLDesc(0)
    finally:
        conn.close()
    agent = GuestAgent(cluster.host_path(host, agent_channel_path(xml)))
    agent.wait_ready(timeout=120)
    return agent


def test_a_running_desktop_moves_live_through_the_api_and_keeps_its_uptime(host_cluster_factory, demo_image,  # noqa: F811
                                                                           client):
    cluster = host_cluster_factory(hosts=2, network=False)
    image = demo_image.publish(cluster.shared_dir / "demo")
    desktop_id, name = str(uuid.uuid4()), f"mig-{uuid.uuid4().hex[:6]}"
    with db.session_scope() as session:
        group = Cluster(name="c1")
        session.add(group)
        session.flush()
        hosts = {}
        for host_name in ("host1", "host2"):
            host = Host(name=host_name, cluster_id=group.id, agent_url=cluster.agent_url(host_name),
                        agent_token=cluster.token(host_name), libvirt_uri=cluster.uri(host_name),
                        address="127.0.0.1", status=HostStatus.UP, free_memory_mib=4096)
            session.add(host)
            session.flush()
            hosts[host_name] = host.id
        session.add(Desktop(id=desktop_id, name=name, memory_mib=192, host_id=hosts["host1"],
                            power_state=PowerState.DOWN))
    disk = cluster.shared_dir / "disks" / f"{name}.qcow2"
    disk.parent.mkdir(exist_ok=True)
    qcow2.create_overlay(disk, image.template)
    os.chmod(disk, 0o666)
    serial = SerialLog(disk.with_suffix(".log"))
    source = NodeClient(cluster.agent_url("host1"), cluster.token("host1"), timeout=120)
    source.define(DesktopSpec(uuid=desktop_id, name=name, vcpus=1, memory_mib=192, disk_path=str(disk),
                              kernel=str(image.kernel), initrd=str(image.initrd), cmdline=image.cmdline(name),
                              serial_log=str(serial.path)))
    try:
        refused = client.post(f"{API}/desktops/{desktop_id}/migrate", json={"host_id": hosts["host2"]})
        assert refused.status_code == 409 and "not running" in refused.json()["detail"], refused.text

        started = client.post(f"{API}/desktops/{desktop_id}/start")
        assert started.status_code == 200 and started.json()["power_state"] == "up", started.text
        serial.wait_for(r"VDI-AGENT ready", timeout=240)
        before = _agent(cluster, "host1", desktop_id)
        assert before.request("write /home/user/note.txt before the move") == "ok 16"
        uptime = int(before.request("uptime"))

        same = client.post(f"{API}/desktops/{desktop_id}/migrate", json={"host_id": hosts["host1"]})
        assert same.status_code == 409 and "already runs on host host1" in same.json()["detail"], same.text
        assert client.post(f"{API}/hosts/{hosts['host2']}/maintenance").status_code == 200
        kept_off = client.post(f"{API}/desktops/{desktop_id}/migrate", json={"host_id": hosts["host2"]})
        assert kept_off.status_code == 409 and "in maintenance" in kept_off.json()["detail"], kept_off.text
        best_refused = client.post(f"{API}/desktops/{desktop_id}/migrate")  # no other host up: none is best
        assert best_refused.status_code == 409 and best_refused.json()["error"] == "no_host", best_refused.text
        with db.session_scope() as session:  # activated without a heartbeat it would be non-responsive
            session.get(Host, hosts["host2"]).status = HostStatus.UP
        assert client.post(f"{API}/desktops/{desktop_id}/migrate",
                           json={"host_id": str(uuid.uuid4())}).status_code == 404
        assert client.post(f"{API}/desktops/{uuid.uuid4()}/migrate").status_code == 404
        with db.session_scope() as session:  # none of the refusals left the desktop claimed
            assert session.get(Desktop, desktop_id).task_state is None

        moving = client.post(f"{API}/desktops/{desktop_id}/migrate")  # the best host: the only other one
        assert moving.status_code == 202, moving.text
        job = job_ended(client, moving.json()["id"], 300)
        assert job["state"] == "succeeded", job
        assert job["result"]["host_id"] == hosts["host2"]

        with db.session_scope() as session:
            row = session.get(Desktop, desktop_id)
            assert (row.host_id, row.task_state, row.power_state) == (hosts["host2"], None, PowerState.UP)
        after = _agent(cluster, "host2", desktop_id)
        assert int(after.request("uptime")) >= uptime  # the same guest, not a reboot
        assert after.request("read /home/user/note.txt") == "before the move"
        assert source.list_domains() == []  # gone from host1, definition included
        shown = client.get(f"{API}/desktops/{desktop_id}").json()
        assert shown["host_id"] == hosts["host2"]

        # power actions follow it to its new host: suspend and resume through the API
        paused = client.post(f"{API}/desktops/{desktop_id}/suspend")
        assert paused.status_code == 200 and paused.json()["power_state"] == "paused", paused.text
        resumed = client.post(f"{API}/desktops/{desktop_id}/resume")
        assert resumed.status_code == 200 and resumed.json()["power_state"] == "up", resumed.text
        uptime = int(after.request("uptime"))

        # maintenance of its new host: refused while it runs there, unless drained by live migration
        refused = client.post(f"{API}/hosts/{hosts['host2']}/maintenance")
        assert refused.status_code == 409 and name in refused.json()["detail"], refused.text
        drained = client.post(f"{API}/hosts/{hosts['host2']}/maintenance", json={"drain": True, "reason": "RAM"})
        assert drained.status_code == 200, drained.text
        assert drained.json()["status"] == "maintenance" and drained.json()["drain_job_id"]
        job = job_ended(client, drained.json()["drain_job_id"], 300)
        assert job["state"] == "succeeded" and job["result"] == {"migrated": [name], "failed": {}}, job
        with db.session_scope() as session:
            row = session.get(Desktop, desktop_id)
            assert (row.host_id, row.task_state, row.power_state) == (hosts["host1"], None, PowerState.UP)
            assert session.get(Host, hosts["host2"]).status == HostStatus.MAINTENANCE
        back = _agent(cluster, "host1", desktop_id)
        assert int(back.request("uptime")) >= uptime
        assert back.request("read /home/user/note.txt") == "before the move"
    finally:
        for host_name in ("host1", "host2"):
            node = NodeClient(cluster.agent_url(host_name), cluster.token(host_name), timeout=120)
            try:
                node.poweroff(desktop_id)
            except Exception:
                pass
            try:
                node.undefine(desktop_id)
            except Exception:
                pass
