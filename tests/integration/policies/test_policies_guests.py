"""The policy engine on real QEMU guests (harness hosts: each its own libvirtd and node agent).

- load balancing: a desktop leaves an overloaded host by live migration (the same guest: its uptime continues),
  then the idle policy suspends it once its user has been away long enough;
- memory density: four desktops of one template on one host; after KSM runs (settings pushed by the policy), the
  host reports pages shared > 0 and the memory saved is searchable; the balloon policy lowers an idle desktop's
  memory (the guest's /proc/meminfo shows it) and gives it back when its user reconnects.

The harness's "hosts" are network and PID namespaces of ONE machine: they share one kernel, hence one KSM. Only one
agent is started with --ksm-control, and what it reports is the machine's KSM (other guests' pages included); the
test restores the machine's KSM settings afterwards.

The hosts send no heartbeats here (no manager process listens): the test writes the figures a heartbeat would bring
(host CPU use, a desktop's CPU use), which makes the overload deterministic, and feeds the node's real capabilities
through heartbeat ingest for the KSM figures. Rounds are run through POST /api/v1/policies/run (not dry).
"""
from __future__ import annotations

import datetime as dt
import os
import re
import uuid

import libvirt
import pytest

from core.enums import HostStatus, PowerState, SessionState
from core.errors import VdiError
from core.specs import DesktopSpec
from hypervisor_node import hoststats
from image_manager import qcow2
from manager import db
from manager.heartbeat import ingest_heartbeat
from manager.models import Cluster, Desktop, DesktopSession, Host, Pool, Template, User, utcnow
from manager.nodes.client import NodeClient
from tests.harness.fixtures import demo_image, host_cluster_factory  # noqa: F401
from tests.harness.guests import SerialLog
from tests.harness.managers import wait_for

pytestmark = [pytest.mark.libvirt, pytest.mark.slow]
API = "/api/v1"


@pytest.fixture(autouse=True)
def hosts_without_heartbeats(monkeypatch):
    monkeypatch.setenv("VDI_HOST_DEAD_AFTER_SECONDS", "86400")
    monkeypatch.setenv("VDI_POLICY_SECONDS", "86400")  # rounds only when the test asks for one


def _guest(cluster, host: str, desktop_id: str, command: str) -> str:
    """A guest agent command through the host's node agent (POST /v1/domains/{id}/guest)."""
    node = NodeClient(cluster.agent_url(host), cluster.token(host), timeout=60)
    return wait_for(f"the guest agent on {host}", lambda: _answer(node, desktop_id, command), 240, 1.0)


def _answer(node: NodeClient, desktop_id: str, command: str) -> str | None:
    try:
        return node.guest(desktop_id, command, timeout=10)
    except VdiError:
        return None


def _job(client, job_id: str) -> dict:
    return wait_for(f"job {job_id}", lambda: (job := client.get(f"{API}/jobs/{job_id}").json())["state"]
                    not in ("pending", "running") and job, 300, 0.5)


def _round(client, cluster_id: str) -> dict:
    answer = client.post(f"{API}/policies/run", json={"dry_run": False, "cluster": cluster_id})
    assert answer.status_code == 200, answer.text
    body = answer.json()
    for job_id in body["jobs"]:
        job = _job(client, job_id)
        assert job["state"] == "succeeded" and not (job.get("result") or {}).get("failed"), job
    return body


def _world(cluster, hosts: list[str], desktops: int, image, memory_mib: int = 192) -> dict:
    """Cluster, hosts (up, as a heartbeat would have them) and `desktops` defined desktops of one pool on the
    first host, disks overlays of one template."""
    ids: dict = {"desktops": []}
    with db.session_scope() as s:
        group = Cluster(name="c1")
        template = Template(name="demo")
        s.add_all([group, template])
        s.flush()
        pool = Pool(name="pool1", template_id=template.id, cluster_id=group.id)
        user = User(username="away", domain="local")
        s.add_all([pool, user])
        s.flush()
        ids.update(cluster=group.id, pool=pool.id, user=user.id)
        for name in hosts:
            host = Host(name=name, cluster_id=group.id, agent_url=cluster.agent_url(name),
                        agent_token=cluster.token(name), libvirt_uri=cluster.uri(name), address="127.0.0.1",
                        status=HostStatus.UP, cpus=2, memory_mib=8192, free_memory_mib=6000)
            s.add(host)
            s.flush()
            ids[name] = host.id
    node = NodeClient(cluster.agent_url(hosts[0]), cluster.token(hosts[0]), timeout=120)
    (cluster.shared_dir / "disks").mkdir(exist_ok=True)
    for n in range(desktops):
        desktop_id, name = str(uuid.uuid4()), f"pol-{n}-{uuid.uuid4().hex[:4]}"
        disk = cluster.shared_dir / "disks" / f"{name}.qcow2"
        qcow2.create_overlay(disk, image.template)
        os.chmod(disk, 0o666)
        with db.session_scope() as s:
            s.add(Desktop(id=desktop_id, name=name, memory_mib=memory_mib, host_id=ids[hosts[0]], pool_id=ids["pool"],
                          power_state=PowerState.DOWN))
        node.define(DesktopSpec(uuid=desktop_id, name=name, vcpus=1, memory_mib=memory_mib, disk_path=str(disk),
                                kernel=str(image.kernel), initrd=str(image.initrd), cmdline=image.cmdline(name),
                                serial_log=str(disk.with_suffix(".log"))))
        ids["desktops"].append((desktop_id, name, SerialLog(disk.with_suffix(".log"))))
    return ids


def _away(desktop_id: str, user_id: str, minutes: float, state=SessionState.DISCONNECTED) -> None:
    with db.session_scope() as s:
        for old in s.query(DesktopSession).filter_by(desktop_id=desktop_id):
            s.delete(old)
        s.add(DesktopSession(desktop_id=desktop_id, user_id=user_id, state=state,
                             disconnected_at=utcnow() - dt.timedelta(minutes=minutes)))


def test_load_balancing_moves_a_desktop_live_then_the_idle_policy_suspends_it(host_cluster_factory, demo_image,  # noqa: F811
                                                                               client):
    cluster = host_cluster_factory(hosts=2, network=False)
    image = demo_image.publish(cluster.shared_dir / "demo")
    ids = _world(cluster, ["host1", "host2"], 1, image)
    desktop_id, name, serial = ids["desktops"][0]
    assert client.post(f"{API}/desktops/{desktop_id}/start").status_code == 200
    serial.wait_for(r"VDI-AGENT ready", timeout=300)
    uptime = int(_guest(cluster, "host1", desktop_id, "uptime"))
    with db.session_scope() as s:  # what heartbeats would say: host1 busy because of this desktop
        s.get(Host, ids["host1"]).cpu_usage = 92
        s.get(Host, ids["host2"]).cpu_usage = 5
        s.get(Desktop, desktop_id).cpu_usage = 100
    url = f"{API}/clusters/{ids['cluster']}/policies"
    assert client.put(url, json={"load_balancing": {"enabled": True, "cpu_high_percent": 80,
                                                    "hysteresis_percent": 10}}).status_code == 200
    dry = client.post(f"{API}/policies/run", json={"dry_run": True, "cluster": ids["cluster"]}).json()
    assert [(d["action"], d["desktop"], d["target_host"]) for d in dry["decisions"]] == [("migrate", name, "host2")]
    done = _round(client, ids["cluster"])
    assert len(done["decisions"]) == 1
    with db.session_scope() as s:
        row = s.get(Desktop, desktop_id)
        assert (row.host_id, row.task_state, row.power_state) == (ids["host2"], None, PowerState.UP)
    assert int(_guest(cluster, "host2", desktop_id, "uptime")) >= uptime  # the same guest, moved live
    assert NodeClient(cluster.agent_url("host1"), cluster.token("host1")).list_domains() == []
    events = client.get(f"{API}/events", params={"code": "policy.decision"}).json()
    assert any("over its threshold" in e["message"] for e in events["items"]), events

    # the idle policy: its user left 40 minutes ago, the pool suspends after 30
    _away(desktop_id, ids["user"], 40)
    assert client.put(url, json={"idle_desktops": {"enabled": True, "pools": {
        ids["pool"]: {"action": "suspend", "after_minutes": 30}}}}).status_code == 200
    done = _round(client, ids["cluster"])
    assert [(d["action"], d["desktop"]) for d in done["decisions"]] == [("suspend", name)]
    with db.session_scope() as s:
        assert s.get(Desktop, desktop_id).power_state == PowerState.PAUSED
    conn = libvirt.open(cluster.uri("host2"))
    try:
        assert conn.lookupByUUIDString(desktop_id).state()[0] == libvirt.VIR_DOMAIN_PAUSED
    finally:
        conn.close()


def _mem_total_kib(cluster, desktop_id: str) -> int:
    text = _guest(cluster, "host1", desktop_id, "read /proc/meminfo").replace("\\n", "\n")
    return int(re.search(r"MemTotal:\s+(\d+) kB", text).group(1))


def test_ksm_shares_pages_of_four_desktops_and_the_balloon_reclaims_an_idle_ones_memory(  # noqa: F811
        host_cluster_factory, demo_image, client):  # noqa: F811
    saved_settings = hoststats.read_ksm_settings()
    cluster = host_cluster_factory(hosts=1, network=False, agent_options=["--ksm-control"])
    image = demo_image.publish(cluster.shared_dir / "demo")
    ids = _world(cluster, ["host1"], 4, image)
    node = NodeClient(cluster.agent_url("host1"), cluster.token("host1"), timeout=120)
    try:
        for desktop_id, _name, _serial in ids["desktops"]:
            assert client.post(f"{API}/desktops/{desktop_id}/start").status_code == 200
        for _desktop_id, _name, serial in ids["desktops"]:
            serial.wait_for(r"VDI-AGENT ready", timeout=600)
        url = f"{API}/clusters/{ids['cluster']}/policies"
        md = {"ksm_enabled": True, "ksm_pages_to_scan": 5000, "ksm_sleep_millisecs": 10}
        assert client.put(url, json={"memory_density": md}).status_code == 200
        done = _round(client, ids["cluster"])
        assert [(d["action"], d["host"]) for d in done["decisions"]] == [("ksm", "host1")]
        assert hoststats.read_ksm_settings()["run"] == 1
        assert _round(client, ids["cluster"])["decisions"] == []  # applied: not pushed again
        caps = wait_for("KSM sharing pages of the four guests",
                        lambda: (c := node.capabilities()).ksm_pages_shared > 0 and c, 240, 2.0)
        with db.session_scope() as s:  # what the host's next heartbeat stores
            ingest_heartbeat(s, s.get(Host, ids["host1"]), {"caps": caps.to_dict(), "domains": []})
        found = client.get(f"{API}/search", params={"q": "Hosts: shared_pages > 0 and saved_memory >= 0"})
        assert found.status_code == 200 and [h["name"] for h in found.json()["items"]] == ["host1"], found.text
        assert client.get(f"{API}/dashboard").json()["hosts"]["ksm_pages_shared"] > 0

        # the balloon: one desktop's user left 20 minutes ago
        desktop_id, name, _serial = ids["desktops"][0]
        before = _mem_total_kib(cluster, desktop_id)
        _away(desktop_id, ids["user"], 20)
        md.update(balloon_enabled=True, balloon_idle_minutes=10, balloon_reclaim_percent=40, balloon_min_mib=64)
        assert client.put(url, json={"memory_density": md}).status_code == 200
        done = _round(client, ids["cluster"])
        assert [(d["action"], d["desktop"], d["params"]) for d in done["decisions"]] == [
            ("balloon", name, {"memory_mib": 115})], done
        wait_for(f"the guest seeing less than {before} kB", lambda: _mem_total_kib(cluster, desktop_id)
                 <= before - 60 * 1024, 60, 1.0)
        # its user is back: the memory is given back
        _away(desktop_id, ids["user"], 0, state=SessionState.CONNECTED)
        done = _round(client, ids["cluster"])
        assert [(d["action"], d["params"]) for d in done["decisions"]] == [("balloon", {"memory_mib": 192})]
        wait_for("the guest getting its memory back", lambda: _mem_total_kib(cluster, desktop_id)
                 >= before - 4 * 1024, 60, 1.0)
    finally:
        hoststats.write_ksm({k: v for k, v in saved_settings.items() if k != "merge_across_nodes"})


def test_power_saving_empties_a_host_powers_it_off_through_its_bmc_and_on_before_a_window_opens(  # noqa: F811
        host_cluster_factory, demo_image, client):  # noqa: F811
    """Off hours (a controllable clock: the round's `now`), the idle desktop of host2 moves to host1, host2 goes to
    standby through its IPMI BMC (every process of it gone); 25 minutes before pool1's Monday window opens its BMC
    powers it on; the host "boots" (the harness starts it again: a BMC switches the chassis on, the firmware and the
    OS do the rest) and its first heartbeat brings it back into service."""
    from manager.models import PolicyHostState
    from policy_engine import service
    from tests.harness.bmc import HarnessBmc

    cluster = host_cluster_factory(hosts=2, network=False)
    image = demo_image.publish(cluster.shared_dir / "demo")
    ids = _world(cluster, ["host2", "host1"], 1, image)
    desktop_id, name, serial = ids["desktops"][0]
    bmc = HarnessBmc(cluster, "host2").start()
    try:
        assert client.put(f"{API}/hosts/{ids['host2']}/fence-agents",
                          json={"agents": [bmc.agent_config()]}).status_code == 200
        with db.session_scope() as s:
            s.get(Pool, ids["pool"]).schedule = [{"days": ["mon"], "start": "08:00", "end": "18:00"}]
        assert client.post(f"{API}/desktops/{desktop_id}/start").status_code == 200
        serial.wait_for(r"VDI-AGENT ready", timeout=300)
        with db.session_scope() as s:
            for host in ("host1", "host2"):
                s.get(Host, ids[host]).cpu_usage = 5
            s.get(Desktop, desktop_id).cpu_usage = 2
        assert client.put(f"{API}/clusters/{ids['cluster']}/policies", json={"power_saving": {
            "enabled": True, "off_hours_start": "20:00", "off_hours_end": "09:00", "min_free_memory_percent": 10,
            "wake_before_minutes": 30}}).status_code == 200
        monday = dt.datetime(2026, 1, 5, tzinfo=dt.timezone.utc)

        def round_at(hour: int, minute: int) -> dict:
            body = service.run_round(dry_run=False, cluster_id=ids["cluster"],
                                     now=monday.replace(hour=hour, minute=minute), dead_after_seconds=86400)
            for job_id in body["jobs"]:
                job = _job(client, job_id)
                assert job["state"] == "succeeded" and not (job.get("result") or {}).get("failed"), job
            return body

        moved = round_at(2, 0)
        assert [(d["action"], d["desktop"], d["target_host"]) for d in moved["decisions"]] == [
            ("migrate", name, "host1")]
        with db.session_scope() as s:
            assert s.get(Desktop, desktop_id).host_id == ids["host1"]
        off = round_at(2, 5)
        assert [(d["action"], d["host"]) for d in off["decisions"]] == [("power_off", "host2")]
        assert len(bmc.power_offs()) == 1 and cluster.pids("host2").all() == []
        with db.session_scope() as s:
            assert s.get(Host, ids["host2"]).status == HostStatus.MAINTENANCE
            assert s.get(PolicyHostState, ids["host2"]).power == "standby"
        assert round_at(5, 0)["decisions"] == []  # still off hours, no window soon: it stays off

        woken = round_at(7, 35)  # pool1 opens at 08:00
        assert [(d["action"], d["host"]) for d in woken["decisions"]] == [("power_on", "host2")]
        assert "pool1" in woken["decisions"][0]["reason"]
        assert len(bmc.power_ons()) == 1
        with db.session_scope() as s:
            assert s.get(PolicyHostState, ids["host2"]).power == "waking"
        cluster.kill_host("host2")  # reap what the BMC's power-off left of the old boot
        cluster.start_host("host2")
        caps = NodeClient(cluster.agent_url("host2"), cluster.token("host2"), timeout=120).capabilities()
        with db.session_scope() as s:  # its agent's first heartbeat
            ingest_heartbeat(s, s.get(Host, ids["host2"]), {"caps": caps.to_dict(), "domains": []})
        round_at(7, 40)
        with db.session_scope() as s:
            assert s.get(Host, ids["host2"]).status == HostStatus.UP
            assert s.get(PolicyHostState, ids["host2"]).power == ""
        for code in ("policy.host_standby", "policy.host_waking", "policy.host_back"):
            [event] = client.get(f"{API}/events", params={"code": code}).json()["items"]
            assert event["host_id"] == ids["host2"], event
    finally:
        bmc.stop()
