"""Three real guests on two harness hosts at once; their cpu_usage and mem_usage, and what their guest agents say
(address, host name, applications), reach the manager's database by heartbeat, where the search finds them. The
manager is a real `vdi serve` process on the test database; each host's node agent pushes its bulk stats to it."""
from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid

import pytest
from sqlalchemy import select

from broker.console import render_rdp
from core.enums import PowerState, Protocol
from core.specs import DesktopSpec
from image_manager import qcow2
from manager import db, node_secrets
from manager.api.search import run_search
from manager.embedded_nodes import free_port, wait_until_answers
from manager.models import Cluster, Desktop, Host
from manager.nodes.client import NodeClient
from manager.provisioning.consoles import issue_for_desktop
from tests.harness.fixtures import demo_image, host_cluster_factory  # noqa: F401

pytestmark = [pytest.mark.libvirt, pytest.mark.slow]
PLACEMENT = {"g1": "host1", "g2": "host1", "g3": "host2"}


@pytest.fixture
def manager_process(pg_url, tmp_path, clean_db):
    # clean_db first: emptying the tables under a running manager deletes its leader lease (test_host_failure)
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("VDI_")}
    env.update(VDI_DATABASE_URL=pg_url, VDI_PORT=str(port), VDI_DATA_DIR=str(tmp_path / "manager"),
               VDI_NODE_KEY_FILE=str(node_secrets.key_file()),  # opens the tokens this process sealed
               VDI_LOG_LEVEL="WARNING", VDI_HOST_DEAD_AFTER_SECONDS="3600")
    proc = subprocess.Popen([sys.executable, "-m", "manager.cli", "serve", "--no-upgrade"], env=env,
                            stdout=open(tmp_path / "manager.log", "wb"), stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    wait_until_answers(f"{url}/api/v1/health", proc, "vdi serve")
    yield url
    proc.terminate()
    proc.wait(timeout=30)


def test_three_guests_on_two_hosts_report_their_stats_and_facts_by_heartbeat(host_cluster_factory, demo_image,  # noqa: F811
                                                                   manager_process):
    cluster = host_cluster_factory(hosts=2, network=False, manager_url=manager_process,
                                   agent_options=["--heartbeat-seconds", "1"])
    image = demo_image.publish(cluster.shared_dir / "demo")
    ids = {name: str(uuid.uuid4()) for name in PLACEMENT}
    with db.session_scope() as session:
        group = Cluster(name="c1")
        session.add(group)
        session.flush()
        host_ids = {}
        for name in ("host1", "host2"):
            host = Host(name=name, cluster_id=group.id, agent_url=cluster.agent_url(name),
                        agent_token=cluster.token(name))
            session.add(host)
            session.flush()
            host_ids[name] = host.id
        for name, desktop_id in ids.items():
            session.add(Desktop(id=desktop_id, name=name, memory_mib=192))
    clients = {name: NodeClient(cluster.agent_url(name), cluster.token(name), timeout=120)
               for name in ("host1", "host2")}
    try:
        for name, host in PLACEMENT.items():
            disk = cluster.shared_dir / "disks" / f"{name}.qcow2"
            disk.parent.mkdir(exist_ok=True)
            qcow2.create_overlay(disk, image.template)
            os.chmod(disk, 0o666)
            clients[host].define(DesktopSpec(uuid=ids[name], name=name, vcpus=1, memory_mib=192, disk_path=str(disk),
                                             kernel=str(image.kernel), initrd=str(image.initrd),
                                             cmdline=image.cmdline(name), serial_log=str(disk.with_suffix(".log"))))
            clients[host].start(ids[name])

        seen_cpu: set[str] = set()
        deadline = time.monotonic() + 300
        while True:
            with db.session_scope() as session:
                rows = {d.name: d for d in session.scalars(select(Desktop))}
                hosts = {h.name: h for h in session.scalars(select(Host))}
            seen_cpu |= {name for name, d in rows.items() if d.cpu_usage > 0}
            done = all(rows[name].power_state == PowerState.UP and rows[name].host_id == host_ids[host]
                       and rows[name].mem_usage > 0 and rows[name].ip for name, host in PLACEMENT.items()) \
                and seen_cpu == set(PLACEMENT)
            if done:
                break
            assert time.monotonic() < deadline, (
                f"stats did not arrive: { {n: (d.power_state, d.cpu_usage, d.mem_usage, d.ip) for n, d in rows.items()} }")
            time.sleep(0.5)
        assert all(h.last_heartbeat_at is not None and h.active_desktops == sum(
            1 for host in PLACEMENT.values() if host == name) for name, h in hosts.items())
        # the guest agents' facts (issue 21 item 4): QEMU's user-mode network gives each guest 10.0.2.15
        assert {(n, d.ip, d.guest_hostname, d.installed_apps) for n, d in rows.items()} == \
            {(n, "10.0.2.15", n, ",".join(image.apps)) for n in PLACEMENT}
        with db.session_scope() as session:
            found = run_search(session, "Vms: apps = *office* sortby name", page_size=10)
        assert [row.name for row in found["items"]] == sorted(PLACEMENT)
        # an RDP connect goes to the address the guest reported: no hand-written IP
        with db.session_scope() as session:
            rdp = issue_for_desktop(session, session.scalar(select(Desktop).where(Desktop.name == "g1")),
                                    Protocol.RDP, username="alice")
        assert "full address:s:10.0.2.15:3389" in render_rdp(rdp)
    finally:
        for name, host in PLACEMENT.items():
            try:
                clients[host].poweroff(ids[name])
                clients[host].undefine(ids[name])
            except Exception:  # the cluster teardown kills whatever is left
                pass
        for client in clients.values():
            client.close()
