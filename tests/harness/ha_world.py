"""Host failover scenarios on harness hosts, shared by tests/integration/ha and bench/ha_failover.py: the database
rows of a cluster whose hosts have BMCs (tests/harness/bmc.py) as fence agents, demo desktops on overlays on the
shared storage, started through the node agents; a host failing by hanging; a `vdi serve` to judge them."""
from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

from ha_manager.failover import set_fence_agents
from core.specs import DesktopSpec
from image_manager import qcow2
from manager import db, node_secrets
from manager.embedded_nodes import free_port, wait_until_answers
from manager.models import Cluster, Desktop, Host, Template, TemplateVersion, Volume
from manager.nodes.client import NodeClient
from manager.provisioning.service import desktop_spec
from tests.harness.bmc import HarnessBmc
from tests.harness.hosts import HostCluster


@dataclass
class World:
    cluster: HostCluster
    host_ids: dict[str, str]
    desktop_ids: dict[str, str]  # name -> id (the domain uuid)
    bmcs: dict[str, HarnessBmc]
    clients: dict[str, NodeClient] = field(default_factory=dict)
    specs: dict[str, DesktopSpec] = field(default_factory=dict)  # name -> the spec it was started with

    def close(self) -> None:
        for bmc in self.bmcs.values():
            bmc.stop()
        for client in self.clients.values():
            for desktop_id in self.desktop_ids.values():
                with contextlib.suppress(Exception):
                    client.poweroff(desktop_id)
                with contextlib.suppress(Exception):
                    client.undefine(desktop_id)
            client.close()


def build(cluster: HostCluster, image, desktops: dict[str, tuple[str, bool, int]], *, memory_mib: int = 192,
          fence_agents: bool = True) -> World:
    """Rows for every running host of `cluster` (each with its own BMC as fence agent, unless `fence_agents` is
    False: then no host can be fenced), a demo template and `desktops` (name -> (host, ha_enabled, ha_priority)),
    each defined and started on its host."""
    bmcs = {name: HarnessBmc(cluster, name).start() for name in cluster.names()} if fence_agents else {}
    clients = {name: NodeClient(cluster.agent_url(name), cluster.token(name), timeout=120) for name in cluster.names()}
    with db.session_scope() as session:
        group = Cluster(name="ha")
        session.add(group)
        session.flush()
        hosts = {}
        for name in cluster.names():
            host = Host(name=name, cluster_id=group.id, agent_url=cluster.agent_url(name),
                        agent_token=cluster.token(name), address="127.0.0.1", memory_mib=4096, free_memory_mib=2048)
            session.add(host)
            session.flush()
            if fence_agents:
                set_fence_agents(session, host.id, [bmcs[name].agent_config()], actor="harness")
            hosts[name] = host
        template_volume = Volume(path=str(image.template), role="template", virtual_size=64 << 20)
        template = Template(name="demo", memory_mib=memory_mib, boot_kernel=str(image.kernel),
                            boot_initrd=str(image.initrd), boot_cmdline=image.cmdline())
        session.add_all([template_volume, template])
        session.flush()
        version = TemplateVersion(template_id=template.id, number=1, volume_id=template_volume.id)
        session.add(version)
        session.flush()
        specs = {}
        for name, (host_name, ha, priority) in desktops.items():
            desktop = Desktop(name=name, template_version_id=version.id, host_id=hosts[host_name].id,
                              memory_mib=memory_mib, ha_enabled=ha, ha_priority=priority)
            session.add(desktop)
            session.flush()
            disk = Path(cluster.shared_dir) / "desktops" / desktop.id / "disk.qcow2"
            disk.parent.mkdir(parents=True)
            os.chmod(disk.parent, 0o777)  # QEMU (libvirt-qemu) writes the serial log beside the disk
            qcow2.create_overlay(disk, image.template)
            os.chmod(disk, 0o666)
            volume = Volume(path=str(disk), desktop_id=desktop.id, role="desktop", parent_id=template_volume.id)
            session.add(volume)
            session.flush()
            desktop.volume_id = volume.id
            specs[name] = (host_name, desktop_spec(desktop, template, str(disk), hosts[host_name].display_listen))
        host_ids = {name: h.id for name, h in hosts.items()}
    world = World(cluster, host_ids, {name: spec.uuid for name, (_h, spec) in specs.items()}, bmcs, clients,
                  {name: spec for name, (_h, spec) in specs.items()})
    for host_name, spec in specs.values():
        clients[host_name].define(spec)
        clients[host_name].start(spec.uuid)
    return world


def hang(cluster: HostCluster, name: str) -> None:
    """The host hangs (as a kernel hang): every process of it frozen, its guests still holding their disks. Only a
    power-off (its BMC) ends it."""
    for pid in cluster.pids(name).all():
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGSTOP)


def running_guests(cluster: HostCluster, name: str) -> set[str]:
    """UUIDs of the QEMU processes alive (frozen or not) on a host, read from their command lines."""
    found = set()
    for pid in cluster.pids(name).qemu:
        with contextlib.suppress(OSError):
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
            if b"-uuid" in argv:
                found.add(argv[argv.index(b"-uuid") + 1].decode())
    return found


@contextlib.contextmanager
def manager(database_url: str, data_dir: Path, address: str = "127.0.0.1", **settings: str):
    """A `vdi serve` on `address` (no embedded nodes, no quiet period after its election) with extra VDI_* settings;
    yields (url, log path)."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("VDI_")}
    env.update(VDI_DATABASE_URL=database_url, VDI_HOST=address, VDI_PORT=str(port), VDI_DATA_DIR=str(data_dir),
               VDI_NODE_KEY_FILE=str(node_secrets.key_file()),  # opens the tokens and passwords sealed here
               VDI_LOG_LEVEL="INFO", VDI_HA_TAKEOVER_QUIET_SECONDS="0", VDI_EMBEDDED_NODES="false")
    env.update({f"VDI_{k.upper()}": v for k, v in settings.items()})
    data_dir.mkdir(parents=True, exist_ok=True)
    log = data_dir / "manager.log"
    proc = subprocess.Popen([sys.executable, "-m", "manager.cli", "serve", "--no-upgrade"], env=env,
                            stdout=open(log, "wb"), stderr=subprocess.STDOUT)
    url = f"http://{address}:{port}"
    try:
        try:
            wait_until_answers(f"{url}/api/v1/health", proc, "vdi serve")
        except RuntimeError as exc:
            raise RuntimeError(f"{exc}: {log.read_text()[-3000:]}") from None
        yield url, log
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
