"""Several libvirt hosts on one machine: independent daemons, shared storage, power-off, partitions."""
from __future__ import annotations

import hashlib
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import libvirt
import pytest

from tests.harness.guests import GuestAgent, SerialLog, agent_channel_path, demo_domain_xml, make_overlay
from tests.harness.hosts import HostCluster, agent_module_available

pytestmark = [pytest.mark.libvirt, pytest.mark.slow]


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _processes_named(comm: str) -> set[int]:
    found = set()
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/comm") as handle:
                    if handle.read().strip() == comm:
                        found.add(int(entry))
            except OSError:
                pass
    return found


def _start_desktop(cluster, host, image, name):
    disk = cluster.shared_dir / f"{name}.qcow2"
    if not disk.exists():
        make_overlay(image.template, disk)
    serial = SerialLog(cluster.shared_dir / f"{name}.{host}.serial.log")
    conn = libvirt.open(cluster.uri(host))
    domain = conn.defineXML(demo_domain_xml(image, name, disk, serial.path, host_name=host))
    domain.create()
    return conn, domain, serial


def _agent(cluster, host, domain):
    agent = GuestAgent(cluster.host_path(host, agent_channel_path(domain.XMLDesc())))
    agent.wait_ready()
    return agent


def test_two_hosts_run_desktops_of_one_template_and_survive_each_others_power_off(host_cluster_factory, demo_image):
    cluster = host_cluster_factory(hosts=2)
    image = demo_image.publish(cluster.shared_dir / "templates")
    template_sha = hashlib.sha256(image.template.read_bytes()).hexdigest()
    conn1, desk1, serial1 = _start_desktop(cluster, "host1", image, "desk1")
    conn2, desk2, serial2 = _start_desktop(cluster, "host2", image, "desk2")
    try:
        for serial in (serial1, serial2):
            assert serial.wait_for(r"VDI-BOOT template=(\S+)")[0].group(1) == image.template_id
        agent1, agent2 = _agent(cluster, "host1", desk1), _agent(cluster, "host2", desk2)
        assert agent1.request("hostname") == "desk1" and agent2.request("hostname") == "desk2"
        assert agent1.request("write /home/user/work.txt saved on host1") == "ok 15"

        # Each host sees only its own desktops, and runs its own QEMU.
        assert conn1.listDefinedDomains() == [] and [d.name() for d in conn1.listAllDomains()] == ["desk1"]
        assert [d.name() for d in conn2.listAllDomains()] == ["desk2"]
        host1, host2 = cluster.pids("host1"), cluster.pids("host2")
        assert len(host1.qemu) == 1 and len(host2.qemu) == 1 and host1.qemu != host2.qemu
        libvirtds_outside = _processes_named("libvirtd") - {host1.libvirtd, host2.libvirtd}

        victims = cluster.kill_host("host1")

        assert set(host1.all()) <= set(victims)
        assert not any(_alive(pid) for pid in victims)
        assert not cluster.is_running("host1")
        assert all(_alive(pid) for pid in host2.all() if pid not in host2.other)
        assert all(_alive(pid) for pid in libvirtds_outside)  # nobody else's libvirtd was touched
        assert desk2.state()[0] == libvirt.VIR_DOMAIN_RUNNING
        assert agent2.request("ping") == "pong"
        with pytest.raises(libvirt.libvirtError):
            conn1.getVersion()

        # The dead host's desktop restarts on the survivor from the same overlay (QEMU's lock is gone),
        # with the user's file, as HA would do it.
        desk1_on_2 = conn2.defineXML(demo_domain_xml(image, "desk1", cluster.shared_dir / "desk1.qcow2",
                                                     cluster.shared_dir / "desk1.host2.serial.log"))
        desk1_on_2.create()
        moved = SerialLog(cluster.shared_dir / "desk1.host2.serial.log")
        moved.wait_for(r"VDI-USERFILE /home/user/work.txt exists: saved on host1")
        assert hashlib.sha256(image.template.read_bytes()).hexdigest() == template_sha

        # Power host1 on again: its /run is fresh (no ghost of desk1 running) but its definitions persist.
        cluster.start_host("host1")
        conn1b = libvirt.open(cluster.uri("host1"))
        try:
            assert conn1b.listDomainsID() == []
            assert conn1b.listDefinedDomains() == ["desk1"]
        finally:
            conn1b.close()
    finally:
        conn1.close()
        conn2.close()


def test_restarting_libvirtd_keeps_guests_running(host_cluster_factory, demo_image):
    cluster = host_cluster_factory(hosts=1)
    image = demo_image.publish(cluster.shared_dir / "templates")
    conn, domain, serial = _start_desktop(cluster, "host1", image, "desk1")
    conn.close()
    agent = _agent(cluster, "host1", libvirt.open(cluster.uri("host1")).lookupByName("desk1"))
    before = cluster.pids("host1")

    cluster.restart_libvirtd("host1")

    after = cluster.pids("host1")
    assert after.libvirtd != before.libvirtd and after.qemu == before.qemu
    conn = libvirt.open(cluster.uri("host1"))
    try:
        assert conn.lookupByName("desk1").state()[0] == libvirt.VIR_DOMAIN_RUNNING
        assert agent.request("ping") == "pong"
    finally:
        conn.close()


def _http_server_agent(cluster, host):
    """A stand-in for the node agent that only proves the network plumbing (an HTTP server)."""
    return [sys.executable, "-m", "http.server", "--bind", host.address, str(host.agent_port)]


def _reachable(url: str) -> bool:
    try:
        httpx.get(url, timeout=2.0)
        return True
    except httpx.TransportError:
        return False


def _netns_can_reach(netns: str, address: str, port: int) -> bool:
    probe = (f"import socket; socket.create_connection(({address!r}, {port}), timeout=2).close()")
    return subprocess.run(["ip", "netns", "exec", netns, sys.executable, "-c", probe],
                          capture_output=True).returncode == 0


def test_partition_cuts_the_agent_off_both_ways_and_heal_restores_it(host_cluster_factory):
    cluster = host_cluster_factory(hosts=2, agents=True, agent_argv=_http_server_agent)
    manager = socket.socket()
    manager.bind((cluster.manager_address, 0))
    manager.listen()
    manager_port = manager.getsockname()[1]
    try:
        url1, url2 = cluster.agent_url("host1"), cluster.agent_url("host2")
        assert url1 != url2 and _reachable(url1) and _reachable(url2)
        netns1 = cluster.host("host1").netns
        assert _netns_can_reach(netns1, cluster.manager_address, manager_port)
        agent_pid = cluster.pids("host1").agent

        cluster.partition_host("host1")

        assert not _reachable(url1)
        assert not _netns_can_reach(netns1, cluster.manager_address, manager_port)
        assert _reachable(url2)
        assert _alive(agent_pid)  # cut off, not dead
        with pytest.raises(OSError):  # the agent is not on the root namespace's loopback either
            socket.create_connection(("127.0.0.1", cluster.host("host1").agent_port), timeout=1).close()

        cluster.heal_host("host1")

        deadline = time.monotonic() + 10
        while not _reachable(url1) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert _reachable(url1)
        assert _netns_can_reach(netns1, cluster.manager_address, manager_port)
    finally:
        manager.close()


def test_power_off_takes_the_agent_down_and_restart_brings_it_back(host_cluster_factory):
    cluster = host_cluster_factory(hosts=1, agents=True, agent_argv=_http_server_agent)
    agent_pid = cluster.pids("host1").agent
    assert agent_pid and _reachable(cluster.agent_url("host1"))
    cluster.kill_host("host1")
    assert not _alive(agent_pid) and not _reachable(cluster.agent_url("host1"))
    cluster.restart_host("host1")
    assert _reachable(cluster.agent_url("host1"))
    assert cluster.pids("host1").agent != agent_pid


@pytest.mark.skipif(not agent_module_available(), reason="hypervisor_node.agent does not exist yet")
def test_real_node_agents_run_on_their_hosts_and_can_be_partitioned(host_cluster_factory):
    cluster = host_cluster_factory(hosts=2)
    assert cluster.agents
    for name in ("host1", "host2"):
        url = f"{cluster.agent_url(name)}/v1/health"
        assert httpx.get(url, timeout=10.0).status_code == 401  # the token is required
        health = httpx.get(url, headers={"Authorization": f"Bearer {cluster.token(name)}"}, timeout=10.0)
        assert health.status_code == 200, health.text
        assert health.json()["node"] == name
    # host1's token does not open host2's agent
    wrong = httpx.get(f"{cluster.agent_url('host2')}/v1/health",
                      headers={"Authorization": f"Bearer {cluster.token('host1')}"}, timeout=10.0)
    assert wrong.status_code == 401
    assert cluster.pids("host1").agent and cluster.pids("host1").agent != cluster.pids("host2").agent

    cluster.partition_host("host1")
    assert not _reachable(cluster.agent_url("host1")) and _reachable(cluster.agent_url("host2"))
    cluster.heal_host("host1")
    deadline = time.monotonic() + 10
    while not _reachable(cluster.agent_url("host1")) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert _reachable(cluster.agent_url("host1"))

    agent_pid = cluster.pids("host1").agent
    cluster.kill_host("host1")
    assert not _alive(agent_pid) and not _reachable(cluster.agent_url("host1"))
    cluster.start_host("host1")
    health = httpx.get(f"{cluster.agent_url('host1')}/v1/health",
                       headers={"Authorization": f"Bearer {cluster.token('host1')}"}, timeout=10.0)
    assert health.status_code == 200


@pytest.mark.skipif(not agent_module_available(), reason="hypervisor_node.agent does not exist yet")
def test_without_network_namespaces_agents_listen_on_loopback(host_cluster_factory):
    from tests.harness.hosts import HarnessError

    cluster = host_cluster_factory(hosts=2, network=False)
    urls = [cluster.agent_url(name) for name in ("host1", "host2")]
    assert all(url.startswith("http://127.0.0.1:") for url in urls) and urls[0] != urls[1]
    for name in ("host1", "host2"):
        health = httpx.get(f"{cluster.agent_url(name)}/v1/health",
                           headers={"Authorization": f"Bearer {cluster.token(name)}"}, timeout=10.0)
        assert health.status_code == 200 and health.json()["node"] == name
    with pytest.raises(HarnessError, match="network namespace"):
        cluster.partition_host("host1")


class _HeartbeatSink:
    """Stands where the manager would: records which node's heartbeat POSTs arrive, and when."""

    def __init__(self, address: str) -> None:
        import http.server
        import threading

        self.seen: list[tuple[str, float]] = []
        sink = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802 (http.server's naming)
                self.rfile.read(int(self.headers.get("Content-Length", 0)))
                sink.seen.append((self.path, time.monotonic()))
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.end_headers()
                self.wfile.write(b"{}")

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer((address, 0), Handler)
        self.url = f"http://{address}:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def count(self, node: str, since: float = 0.0) -> int:
        return sum(1 for path, at in self.seen if f"/nodes/{node}/" in path and at >= since)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.mark.skipif(not agent_module_available(), reason="hypervisor_node.agent does not exist yet")
def test_agents_reach_a_manager_on_the_bridge_until_partitioned():
    if os.geteuid() != 0:
        pytest.skip("needs root")
    with HostCluster(agent_options=["--heartbeat-seconds", "0.5"]) as probe_cluster:
        sink = _HeartbeatSink(probe_cluster.manager_address)
        try:
            probe_cluster.manager_url = sink.url
            for name in ("host1", "host2"):
                probe_cluster.start_host(name)
            _wait_until(lambda: sink.count("host1") and sink.count("host2"), 30)

            probe_cluster.partition_host("host1")
            time.sleep(2)  # let an in-flight heartbeat land
            cut = time.monotonic()
            time.sleep(3)
            assert sink.count("host1", since=cut) == 0
            assert sink.count("host2", since=cut) > 0

            probe_cluster.heal_host("host1")
            healed = time.monotonic()
            _wait_until(lambda: sink.count("host1", since=healed), 30)
        finally:
            sink.close()


def _wait_until(condition, seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"condition not met within {seconds} s")
        time.sleep(0.2)


def test_cluster_cleans_up_everything_it_made():
    if os.geteuid() != 0:
        pytest.skip("needs root")
    cluster = HostCluster(agents=True, agent_argv=_http_server_agent)
    cluster.start_host("host1")
    base, bridge, netns = cluster.base, cluster.bridge, cluster.host("host1").netns
    pids = cluster.pids("host1").all()
    assert pids and base.is_dir()
    cluster.close()
    assert not base.exists()
    assert not any(_alive(pid) for pid in pids)
    assert netns not in subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    assert subprocess.run(["ip", "link", "show", bridge], capture_output=True).returncode != 0


def test_host_paths_names_and_uris_without_starting_anything(tmp_path):
    if os.geteuid() != 0:
        pytest.skip("needs root")
    from tests.harness.hosts import HarnessError

    with HostCluster(tmp_path / "cluster", agents=False, network=False) as cluster:
        host = cluster._new_host("host1")
        assert cluster.uri("host1") == f"qemu:///system?socket={host.base}/run/libvirt/libvirt-sock"
        channel = "/var/lib/libvirt/qemu/channel/target/domain-1-d/org.vdi.guest_agent.0"
        assert cluster.host_path("host1", channel) == host.base / "lib/qemu/channel/target/domain-1-d/org.vdi.guest_agent.0"
        assert cluster.host_path("host1", "/run/libvirt/libvirt-sock") == host.base / "run/libvirt/libvirt-sock"
        assert cluster.host_path("host1", "/etc/libvirt/qemu/d.xml") == host.base / "etc-qemu/d.xml"
        assert cluster.host_path("host1", "/var/lib/libvirtx") == Path("/var/lib/libvirtx")
        assert list((host.base / "etc-qemu").glob("*.xml")) == []  # no domains copied from this machine
        assert 'host_uuid = "' in (host.base / "libvirtd.conf").read_text()
        assert cluster.pids("host1").all() == [] and not cluster.is_running("host1")
        for bad in ("Host1", "1host", "a" * 17, "a/b"):
            with pytest.raises(HarnessError, match="host name"):
                cluster.start_host(bad)
        with pytest.raises(HarnessError, match="no host named"):
            cluster.uri("absent")
    assert (tmp_path / "cluster").is_dir()  # a directory the caller gave is not deleted
