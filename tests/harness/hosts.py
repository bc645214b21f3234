"""Several independent hypervisor hosts on one machine, for multi-host, HA and migration tests.

Each host is a libvirtd (with its own virtlogd) in private mount and PID namespaces, so it has its own
/run, /var/lib/libvirt, /var/log/libvirt, /var/cache/libvirt and /etc/libvirt/qemu (persistent domain
definitions), its own QEMU processes and its own host UUID, exactly as separate machines would. All
hosts share ONE image directory, `cluster.shared_dir`, which plays the shared storage (NFS).

When the node agent exists (`hypervisor_node.agent`), each host also runs one, inside the host's
namespaces plus a network namespace of its own, wired to a bridge in the root namespace:

    root namespace:  bridge vdib<K> 198.18.<K>.1/24  ── veth ──  netns of host i: eth0 198.18.<K>.<10+i>
                                                                 agent listens on <that address>:8470

So `agent_url(name)` is reachable from the tests, and a manager the agents should reach listens on
`cluster.manager_address` (the bridge address; root-namespace programs reach it too): make the
cluster, start the manager on that address, set `cluster.manager_url`, then start the hosts.
`partition_host()` takes the host's link down: neither side can reach the other, while the host's
guests and libvirtd carry on. With storage=True the host also loses the shared storage, as a host whose NFS goes
over the same link: the shared directory disappears from the host's own mount namespace (files its processes
hold open, its guests' disks, stay as they are). Addresses come from 198.18.0.0/15 (reserved for network testing) and
exist only on the bridge and veth pairs the cluster creates; traffic never leaves this machine.

Life cycle (all by name; every process is tracked by PID, nothing is ever killed by name):
    start_host(name)        boot the host (fresh /run, as after a power-on; persistent state kept)
    stop_host(name)         orderly shutdown: SIGTERM to everything on the host, SIGKILL after a grace
    kill_host(name)         hard power-off: freeze, then SIGKILL, every process of that host at once
    restart_host(name)      stop (or kill, hard=True) and start again
    restart_libvirtd(name)  restart only libvirtd; QEMU guests keep running
    partition_host(name, storage=False) / heal_host(name)
    client_namespace(name)  a network namespace on the bridge for a client program (a console viewer on
                            "another machine": it reaches the bridge address, not this machine's 127.0.0.1)
    uri(name), agent_url(name), token(name), pids(name), host_path(name, path), shared_dir
    close()                 stop every host, remove namespaces, bridge and the cluster directory

Example:
    with HostCluster() as cluster:
        cluster.start_host("host1"); cluster.start_host("host2")
        conn = libvirt.open(cluster.uri("host1"))
        ...
        cluster.kill_host("host1")

Needs root, util-linux (unshare, nsenter), iproute2 and libvirt-daemon-system.
"""
from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
HOST_INIT = Path(__file__).with_name("host_init.py")
AGENT_PORT = 8470
SUBNET_PREFIXES = ("198.18", "198.19")  # RFC 2544: reserved for network device testing
REGISTRY_DIR = Path("/run/vdi-harness")  # which cluster owns which bridge, for cleaning up after crashes
_NAME = re.compile(r"^[a-z][a-z0-9-]{0,15}$")

# In-host path -> sub-directory of the host's state directory (see host_init.PRIVATE_DIRS).
_PRIVATE_DIRS = {
    "/run": "run",
    "/var/lib/libvirt": "lib",
    "/var/log/libvirt": "log",
    "/var/cache/libvirt": "cache",
    "/etc/libvirt/qemu": "etc-qemu",
}


class HarnessError(RuntimeError):
    """The harness could not do what was asked; the message says what happened and where the logs are."""


@dataclass
class HostPids:
    """Root-namespace PIDs of one host's processes at one moment."""

    init: int | None = None
    libvirtd: int | None = None
    virtlogd: int | None = None
    virtlockd: int | None = None
    agent: int | None = None
    qemu: list[int] = field(default_factory=list)
    other: list[int] = field(default_factory=list)

    def all(self) -> list[int]:
        singles = [pid for pid in (self.init, self.libvirtd, self.virtlogd, self.virtlockd, self.agent) if pid]
        return singles + self.qemu + self.other


@dataclass
class Host:
    name: str
    index: int
    base: Path
    token: str
    host_uuid: str
    netns: str | None = None
    veth: str | None = None
    address: str = "127.0.0.1"
    agent_port: int = AGENT_PORT
    init_process: subprocess.Popen | None = None
    init_pid: int | None = None
    agent_process: subprocess.Popen | None = None
    partitioned: bool = False
    storage_cut: bool = False

    @property
    def running(self) -> bool:
        return self.init_process is not None and self.init_process.poll() is None


class HostCluster:
    """N independent libvirt hosts sharing one storage directory. See the module docstring."""

    def __init__(
        self,
        base_dir: str | os.PathLike[str] | None = None,
        *,
        agents: bool | None = None,
        manager_url: str | None = None,
        network: bool = True,
        agent_argv: Callable[["HostCluster", Host], list[str]] | None = None,
        agent_options: list[str] | None = None,
        domain_types: str = os.environ.get("VDI_NODE_DOMAIN_TYPES", "qemu"),
        python: str = sys.executable,
        qemu_conf_extra: str = "",
        lock_manager: str | None = None,
        lockd_conf: str = "",
    ) -> None:
        """Prepare an empty cluster (no host runs yet).

        base_dir: where host state and shared storage go (default: a new /tmp/vdi-cluster-* directory,
            world-traversable because QEMU runs as its own user and must reach the shared images).
        agents: start a node agent per host; None = when hypervisor_node.agent is importable.
        manager_url: passed to the agents as --manager; None = agents send no heartbeat. A manager the
            agents must reach listens on `manager_address` (the cluster's bridge address).
        network: give each agent its own network namespace (needed by partition_host); when False the
            agents listen on free 127.0.0.1 ports instead.
        agent_argv: build a different agent command line (e.g. to plug in a test server).
        agent_options: extra agent arguments, e.g. ["--heartbeat-seconds", "1"]; "{shared_dir}" in one stands for the
            shared storage, "{host_dir}" for
            the host's own directory.
        qemu_conf_extra: lines added to every host's qemu.conf, "{host_dir}" as above (e.g. spice_tls settings).
        lock_manager: "lockd" gives every host libvirt's lock manager (qemu.conf lock_manager = "lockd") and a
            virtlockd of its own, so a second QEMU cannot start on a disk a running one holds, even on another
            host (docs/ha.md, "Storage leases").
        lockd_conf: the hosts' qemu-lockd.conf ("{shared_dir}" stands for the shared storage, e.g.
            'file_lockspace_dir = "{shared_dir}/lockd"'); empty: libvirt's defaults (locks on the disk files).
        domain_types: the agents' --domain-types ("qemu": TCG, because nested KVM fails on these
            machines; see docs/hypervisors.md). The shared directory is a local directory libvirt
            cannot recognise as shared, so agents also get --trust-shared-storage (live migration).
        """
        _require_root_tools()
        ensure_kvm_device_group()
        if base_dir is None:
            base_dir = tempfile.mkdtemp(prefix="vdi-cluster-", dir="/tmp")
            self._owns_base = True
        else:
            self._owns_base = False
        self.base = Path(base_dir).resolve()
        self.base.mkdir(parents=True, exist_ok=True)
        os.chmod(self.base, 0o755)
        self.shared_dir = self.base / "shared"
        self.shared_dir.mkdir(exist_ok=True)
        os.chmod(self.shared_dir, 0o755)
        self.python = python
        self.agents = agents if agents is not None else agent_module_available()
        self.agent_argv = agent_argv
        self.agent_options = list(agent_options or [])
        self.domain_types = domain_types
        self.qemu_conf_extra = qemu_conf_extra
        if lock_manager not in (None, "lockd"):
            raise HarnessError(f"lock_manager {lock_manager!r}: the harness runs only virtlockd ('lockd')")
        self.lock_manager = lock_manager
        self.lockd_conf = lockd_conf
        self.network = network
        self._hosts: dict[str, Host] = {}
        self._clients: dict[str, tuple[str, str, str]] = {}  # name -> (netns, root-side veth, address)
        self._closed = False
        self.subnet: str | None = None
        self.bridge: str | None = None
        self.manager_address = "127.0.0.1"
        if network:
            _clean_stale_clusters()
            self._create_bridge()
        self.manager_url = manager_url

    # ---- context manager ------------------------------------------------------------------------
    def __enter__(self) -> "HostCluster":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---- queries --------------------------------------------------------------------------------
    def names(self) -> list[str]:
        return list(self._hosts)

    def host(self, name: str) -> Host:
        try:
            return self._hosts[name]
        except KeyError:
            raise HarnessError(f"no host named {name!r} in this cluster; hosts: {sorted(self._hosts)}") from None

    def uri(self, name: str) -> str:
        """The libvirt URI of the host, usable from the root namespace (and from inside the host)."""
        return f"qemu:///system?socket={self.host(name).base}/run/libvirt/libvirt-sock"

    def agent_url(self, name: str) -> str:
        host = self.host(name)
        return f"http://{host.address}:{host.agent_port}"

    def token(self, name: str) -> str:
        return self.host(name).token

    def is_running(self, name: str) -> bool:
        return self.host(name).running

    def host_path(self, name: str, path: str | os.PathLike[str]) -> Path:
        """Where a path as the host sees it (e.g. a channel socket under /var/lib/libvirt) is from here."""
        text = str(path)
        for prefix in sorted(_PRIVATE_DIRS, key=len, reverse=True):
            if text == prefix or text.startswith(prefix + "/"):
                return self.host(name).base / _PRIVATE_DIRS[prefix] / text[len(prefix):].lstrip("/")
        return Path(text)

    def log_path(self, name: str, which: str = "libvirtd") -> Path:
        """libvirtd / libvirtd.stderr / virtlogd.stderr / agent / init log of a host."""
        base = self.host(name).base
        if which == "agent":
            return base / "agent.log"
        if which == "init":
            return base / "init.log"
        suffix = "" if which.endswith(".stderr") else ".log"
        return base / "log" / f"{which}{suffix}"

    def pids(self, name: str) -> HostPids:
        """The host's processes now (root-namespace PIDs), found through its PID namespace."""
        host = self.host(name)
        result = HostPids()
        if not host.running or host.init_pid is None:
            return result
        members = _pid_namespace_members(host.init_pid)
        agent_pid = self._agent_pid(host)
        for pid in members:
            comm = _read(f"/proc/{pid}/comm").strip()
            if pid == host.init_pid:
                result.init = pid
            elif pid == agent_pid:
                result.agent = pid
            elif comm == "libvirtd":
                result.libvirtd = pid
            elif comm == "virtlogd":
                result.virtlogd = pid
            elif comm == "virtlockd":
                result.virtlockd = pid
            elif comm.startswith("qemu-system"):
                result.qemu.append(pid)
            else:
                result.other.append(pid)
        return result

    # ---- life cycle -----------------------------------------------------------------------------
    def start_host(self, name: str) -> Host:
        """Boot a host (new or stopped): fresh /run, persistent definitions kept, agent started.

        Raises HarnessError (with the log to read) if libvirtd or the agent does not come up.
        """
        if self._closed:
            raise HarnessError("this cluster is closed; make a new one")
        host = self._hosts.get(name) or self._new_host(name)
        if host.running:
            raise HarnessError(f"host {name} is already running")
        run_dir = host.base / "run"
        if run_dir.exists():
            shutil.rmtree(run_dir)  # /run is a tmpfs on a real host: nothing survives a power cycle
        run_dir.mkdir()
        host.storage_cut = False  # a new mount namespace sees the shared storage
        init_log = open(host.base / "init.log", "ab")
        host.init_process = subprocess.Popen(
            ["unshare", "--mount", "--pid", "--fork", "--mount-proc", "--propagation", "private", "--",
             self.python, str(HOST_INIT), "--base", str(host.base), "--config", str(host.base / "libvirtd.conf")]
            + (["--virtlockd"] if self.lock_manager == "lockd" else []),
            stdout=subprocess.PIPE, stderr=init_log, stdin=subprocess.DEVNULL, cwd=host.base,
        )
        init_log.close()
        line = _read_line(host.init_process, timeout=60.0)
        if line != "READY":
            self._reap_init(host, timeout=15.0)
            raise HarnessError(f"host {name} did not start: {line or 'no answer'}; see {host.base}/log/ and "
                               f"{host.base}/init.log")
        host.init_pid = _only_child(host.init_process.pid)
        if self.agents:
            self._start_agent(host)
        return host

    def stop_host(self, name: str, grace: float = 10.0) -> None:
        """Orderly shutdown: the agent first, then SIGTERM to every process (QEMU, libvirtd, virtlogd)."""
        host = self.host(name)
        if not host.running:
            return
        self._stop_agent(host, grace)
        with contextlib.suppress(ProcessLookupError):
            os.kill(host.init_pid, signal.SIGTERM)
        self._reap_init(host, timeout=grace + 20.0)

    def kill_host(self, name: str) -> list[int]:
        """Hard power-off: freeze every process of the host, then SIGKILL each by PID. Returns the PIDs.

        Nothing of the host gets to react (no agent report, no libvirt bookkeeping); other hosts and
        any libvirtd outside this cluster are untouched. Waits until the processes are gone, so QEMU's
        locks on shared images are released when this returns.
        """
        host = self.host(name)
        if not host.running:
            return []
        victims = self.pids(name).all()
        for pid in victims:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGSTOP)
        for pid in victims:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        if host.agent_process is not None and host.agent_process.poll() is None:
            # nsenter (outside the host, our child) stops itself when the agent is stopped; wake it so
            # it reaps the dead agent, or the PID namespace can never finish dying.
            with contextlib.suppress(ProcessLookupError):
                os.kill(host.agent_process.pid, signal.SIGCONT)
        self._reap_init(host, timeout=30.0)
        if host.agent_process is not None:
            _wait_process(host.agent_process, 10.0)
            host.agent_process = None
        return victims

    def restart_host(self, name: str, hard: bool = False) -> Host:
        """Power-cycle: kill_host (hard=True) or stop_host, then start_host."""
        if hard:
            self.kill_host(name)
        else:
            self.stop_host(name)
        return self.start_host(name)

    def restart_libvirtd(self, name: str, timeout: float = 60.0) -> None:
        """Restart only the host's libvirtd (as after a package upgrade); guests keep running."""
        host = self.host(name)
        if not host.running:
            raise HarnessError(f"host {name} is not running")
        os.kill(host.init_pid, signal.SIGUSR1)
        line = _read_line(host.init_process, timeout=timeout)
        if line != "RESTARTED":
            raise HarnessError(f"libvirtd of {name} did not restart: {line or 'no answer'}; "
                               f"see {self.log_path(name, 'libvirtd.stderr')}")

    def partition_host(self, name: str, storage: bool = False) -> None:
        """Cut the host's agent off the network (both directions); its guests keep running. storage=True: the host
        loses the shared storage too (an empty read-only file system over the shared directory, in the host's
        mount namespace only): new files there cannot be opened or written, open ones stay usable."""
        host = self._networked(name)
        _ip("link", "set", host.veth, "down")
        host.partitioned = True
        if storage:
            subprocess.run(["nsenter", f"--target={host.init_pid}", "--mount", "--", "mount", "-t", "tmpfs", "-o",
                            "ro,size=4k", "vdi-storage-cut", str(self.shared_dir)], check=True)
            host.storage_cut = True

    def heal_host(self, name: str) -> None:
        """Undo partition_host."""
        host = self._networked(name)
        if host.storage_cut and host.running:
            subprocess.run(["nsenter", f"--target={host.init_pid}", "--mount", "--", "umount", str(self.shared_dir)],
                           check=True)
        host.storage_cut = False
        _ip("link", "set", host.veth, "up")
        host.partitioned = False

    def client_namespace(self, name: str) -> tuple[str, str]:
        """A network namespace `vdi<N>-client-<name>` wired to the cluster's bridge, as a client machine on the hosts'
        network: (namespace, its address). Run programs in it with `ip netns exec`. Its loopback is its own, so
        nothing there reaches a service listening on this machine's 127.0.0.1. Removed by close()."""
        if name in self._clients:
            netns, _, address = self._clients[name]
            return netns, address
        if not self.bridge:
            raise HarnessError("client namespaces need the cluster's bridge: make the cluster with network=True")
        if not _NAME.match(name):
            raise HarnessError(f"client name {name!r} must be 1-16 lower-case letters, digits or '-'")
        number = self.bridge.removeprefix("vdib")
        index = len(self._clients) + 1
        netns, veth, address = f"vdi{number}-client-{name}", f"vdi{number}c{index}", f"{self.subnet}.{200 + index}"
        _ip("netns", "add", netns)
        _ip("link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", netns)
        _ip("-n", netns, "addr", "add", f"{address}/24", "dev", "eth0")
        _ip("-n", netns, "link", "set", "lo", "up")
        _ip("-n", netns, "link", "set", "eth0", "up")
        _ip("link", "set", veth, "master", self.bridge)
        _ip("link", "set", veth, "up")
        self._clients[name] = (netns, veth, address)
        return netns, address

    def close(self) -> None:
        """Stop every host, remove namespaces, veths, the bridge and (if the cluster made it) its directory."""
        if self._closed:
            return
        self._closed = True
        for host in self._hosts.values():
            try:
                self.stop_host(host.name, grace=5.0)
            except Exception:  # never leave processes behind because one host misbehaved
                with contextlib.suppress(Exception):
                    self.kill_host(host.name)
        for netns, veth, _ in self._clients.values():
            _ip("netns", "delete", netns, check=False)
            _ip("link", "delete", veth, check=False)
        for host in self._hosts.values():
            if host.netns:
                _ip("netns", "delete", host.netns, check=False)
            if host.veth:
                _ip("link", "delete", host.veth, check=False)
        if self.bridge:
            _ip("link", "delete", self.bridge, check=False)
            with contextlib.suppress(FileNotFoundError):
                (REGISTRY_DIR / f"{self.bridge}.json").unlink()
        if self._owns_base:
            shutil.rmtree(self.base, ignore_errors=True)

    # ---- internals ------------------------------------------------------------------------------
    def _new_host(self, name: str) -> Host:
        if not _NAME.match(name):
            raise HarnessError(f"host name {name!r} must be 1-16 lower-case letters, digits or '-', "
                               "starting with a letter")
        index = len(self._hosts) + 1
        if index > 200:
            raise HarnessError("a cluster holds at most 200 hosts")
        base = self.base / "hosts" / name
        for sub in _PRIVATE_DIRS.values():
            (base / sub).mkdir(parents=True, exist_ok=True)
        os.chmod(base, 0o755)
        _copy_qemu_config(base / "etc-qemu")
        host = Host(name=name, index=index, base=base, token=secrets.token_urlsafe(24),
                    host_uuid=str(uuid.uuid4()))
        # A distinct host UUID: libvirt refuses to migrate "to the same host" when they match.
        (base / "libvirtd.conf").write_text(
            f'host_uuid = "{host.host_uuid}"\n'
            'log_outputs = "3:file:/var/log/libvirt/libvirtd.log"\n'
        )
        qemu_conf = _qemu_conf(index) + self.qemu_conf_extra.replace("{host_dir}", str(base))
        if self.lock_manager:
            qemu_conf += f'lock_manager = "{self.lock_manager}"\n'
            lockd_conf = self.lockd_conf.replace("{shared_dir}", str(self.shared_dir))
            (base / "qemu-lockd.conf").write_text(f"# harness host {name}\n{lockd_conf}\n".replace("\n\n", "\n"))
        (base / "qemu.conf").write_text(qemu_conf)
        if self.network and self.agents:
            self._create_host_network(host)
        elif self.agents:
            host.agent_port = _free_port()
        self._hosts[name] = host
        return host

    def _create_bridge(self) -> None:
        REGISTRY_DIR.mkdir(exist_ok=True)
        used = _used_subnets()
        for number in range(len(SUBNET_PREFIXES) * 256):
            prefix, third = SUBNET_PREFIXES[number // 256], number % 256
            subnet = f"{prefix}.{third}"
            bridge = f"vdib{number}"
            if subnet in used:
                continue
            # Creating the link is atomic: whoever creates vdib<N> owns subnet N, even across processes.
            if _ip("link", "add", bridge, "type", "bridge", check=False).returncode != 0:
                continue
            self.bridge, self.subnet = bridge, subnet
            (REGISTRY_DIR / f"{bridge}.json").write_text(json.dumps({
                "owner_pid": os.getpid(), "owner_start": _start_time(os.getpid()), "base": str(self.base),
            }))
            _ip("addr", "add", f"{subnet}.1/24", "dev", bridge)
            _ip("link", "set", bridge, "up")
            self.manager_address = f"{subnet}.1"
            return
        raise HarnessError("no free 198.18.0.0/15 subnet for the cluster's bridge; delete stale vdib* links")

    def _create_host_network(self, host: Host) -> None:
        number = self.bridge.removeprefix("vdib")
        host.netns = f"vdi{number}-{host.name}"
        host.veth = f"vdi{number}h{host.index}"
        inner = f"vdi{number}g{host.index}"
        host.address = f"{self.subnet}.{10 + host.index}"
        _ip("netns", "add", host.netns)
        _ip("link", "add", host.veth, "type", "veth", "peer", "name", inner, "netns", host.netns)
        _ip("-n", host.netns, "link", "set", inner, "name", "eth0")
        _ip("-n", host.netns, "addr", "add", f"{host.address}/24", "dev", "eth0")
        _ip("-n", host.netns, "link", "set", "lo", "up")
        _ip("-n", host.netns, "link", "set", "eth0", "up")
        _ip("-n", host.netns, "route", "add", "default", "via", f"{self.subnet}.1")
        _ip("link", "set", host.veth, "master", self.bridge)
        _ip("link", "set", host.veth, "up")

    def _networked(self, name: str) -> Host:
        host = self.host(name)
        if not host.veth:
            raise HarnessError(f"host {name} has no network namespace: make the cluster with network=True and "
                               "agents enabled to partition hosts")
        return host

    def _default_agent_argv(self, host: Host) -> list[str]:
        argv = [self.python, "-m", "hypervisor_node.agent", "--name", host.name,
                "--libvirt-uri", self.uri(host.name), "--listen", f"{host.address}:{host.agent_port}",
                f"--token={host.token}", "--trust-shared-storage"]  # one word: a token may start with '-' 
        if self.domain_types:
            argv += ["--domain-types", self.domain_types]
        if self.manager_url:
            argv += ["--manager", self.manager_url]
        return argv + [option.replace("{host_dir}", str(host.base)).replace("{shared_dir}", str(self.shared_dir))
                       for option in self.agent_options]

    def _start_agent(self, host: Host) -> None:
        argv = (self.agent_argv or HostCluster._default_agent_argv)(self, host)
        enter = ["nsenter", f"--target={host.init_pid}", "--mount", "--pid", f"--wd={REPO_ROOT}"]
        if host.netns:
            enter.append(f"--net=/run/netns/{host.netns}")
        log = open(host.base / "agent.log", "ab")
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(REPO_ROOT),
                                                                         os.environ.get("PYTHONPATH")])))
        host.agent_process = subprocess.Popen([*enter, "--", *argv], stdout=log, stderr=log,
                                              stdin=subprocess.DEVNULL, env=env)
        log.close()
        deadline = time.monotonic() + 60.0
        while time.monotonic() < deadline:
            if host.agent_process.poll() is not None:
                raise HarnessError(f"the agent of {host.name} exited with {host.agent_process.returncode}: "
                                   f"{_tail(host.base / 'agent.log')}")
            if _tcp_open(host.address, host.agent_port):
                return
            time.sleep(0.1)
        raise HarnessError(f"the agent of {host.name} did not listen on {host.address}:{host.agent_port} "
                           f"within 60 s: {_tail(host.base / 'agent.log')}")

    def _agent_pid(self, host: Host) -> int | None:
        if host.agent_process is None or host.agent_process.poll() is not None:
            return None
        return _only_child(host.agent_process.pid, required=False)  # nsenter forks the agent

    def _stop_agent(self, host: Host, grace: float) -> None:
        if host.agent_process is None:
            return
        pid = self._agent_pid(host)
        if pid:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
        if not _wait_process(host.agent_process, grace):
            pid = self._agent_pid(host)
            if pid:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            _wait_process(host.agent_process, 10.0)
        host.agent_process = None

    def _reap_init(self, host: Host, timeout: float) -> None:
        process = host.init_process
        if process is None:
            return
        if not _wait_process(process, timeout):
            # The namespace's init ignored us: SIGKILL on it takes the whole PID namespace down.
            if host.init_pid:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(host.init_pid, signal.SIGKILL)
            if not _wait_process(process, 30.0):
                raise HarnessError(f"host {host.name} (unshare PID {process.pid}) would not stop")
        if process.stdout:
            process.stdout.close()
        host.init_process = None
        host.init_pid = None


# ---- helpers ------------------------------------------------------------------------------------


def agent_module_available() -> bool:
    """Whether the node agent (hypervisor_node.agent) exists in this tree."""
    try:
        return importlib.util.find_spec("hypervisor_node.agent") is not None
    except ModuleNotFoundError:
        return False


def ensure_kvm_device_group() -> None:
    """Give /dev/kvm the owner udev gives it on Debian (root:kvm 0660) where no udev ran (containers).

    With /dev/kvm root-only, libvirt 9.0 probes QEMU's capabilities as root but then checks KVM as the
    libvirt-qemu user, decides its cache is stale and re-probes QEMU on every define/start (seconds each,
    per host). Guests stay TCG either way: the designer picks the domain type.
    """
    import grp
    import stat

    try:
        info = os.stat("/dev/kvm")
        kvm_gid = grp.getgrnam("kvm").gr_gid
    except (FileNotFoundError, KeyError):
        return
    if os.geteuid() == 0 and (info.st_gid != kvm_gid or not info.st_mode & stat.S_IRWXG):
        os.chown("/dev/kvm", 0, kvm_gid)
        os.chmod("/dev/kvm", 0o660)


def _require_root_tools() -> None:
    if os.geteuid() != 0:
        raise HarnessError("the host harness needs root (private mounts, namespaces, libvirtd)")
    missing = [tool for tool in ("unshare", "nsenter", "ip", "libvirtd", "virtlogd") if shutil.which(tool) is None]
    if missing:
        raise HarnessError(f"missing tools {missing}: install util-linux, iproute2 and libvirt-daemon-system")


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    result = subprocess.run(["ip", *args], capture_output=True, text=True)
    if check and result.returncode != 0:
        raise HarnessError(f"ip {' '.join(args)} failed: {result.stderr.strip()}")
    return result


def _used_subnets() -> set[str]:
    text = _ip("-o", "-4", "addr", "show", check=False).stdout
    return {".".join(match.split(".")[:3]) for match in re.findall(r"inet (\d+\.\d+\.\d+\.\d+)", text)}


DISPLAY_PORTS_PER_HOST = 100


def _qemu_conf(index: int) -> str:
    """This machine's qemu.conf with a display port range of the host's own. Harness hosts have private mount
    and PID namespaces, but their QEMU processes share the machine's network namespace: two libvirtds each
    allocating SPICE ports from 5900 would collide ("binding socket to 127.0.0.1:5901 failed")."""
    system = Path("/etc/libvirt/qemu.conf")
    own = ("remote_display_port_min", "remote_display_port_max")
    lines = [line for line in (system.read_text().splitlines() if system.exists() else [])
             if not line.strip().startswith(own)]
    first = 5900 + DISPLAY_PORTS_PER_HOST * index  # 5900-5999 stays with the machine's own libvirtd
    lines += [f"remote_display_port_min = {first}", f"remote_display_port_max = {first + DISPLAY_PORTS_PER_HOST - 1}"]
    return "\n".join(lines) + "\n"


def _copy_qemu_config(target: Path) -> None:
    """A private /etc/libvirt/qemu for a new host: the network definitions of this machine, but none
    of its domains (a fresh host has none) and no autostarted network (all hosts would fight for virbr0)."""
    networks = target / "networks"
    (networks / "autostart").mkdir(parents=True, exist_ok=True)
    source = Path("/etc/libvirt/qemu/networks")
    if source.is_dir():
        for definition in source.glob("*.xml"):
            shutil.copy2(definition, networks / definition.name)


def _read(path: str) -> str:
    try:
        with open(path) as handle:
            return handle.read()
    except OSError:
        return ""


def _start_time(pid: int) -> str:
    stat = _read(f"/proc/{pid}/stat")
    return stat.rsplit(")", 1)[1].split()[19] if stat else ""


def _pid_namespace_members(init_pid: int) -> list[int]:
    try:
        target = os.readlink(f"/proc/{init_pid}/ns/pid")
    except OSError:
        return []
    members = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            if os.readlink(f"/proc/{entry}/ns/pid") == target:
                members.append(int(entry))
        except OSError:
            continue
    return sorted(members)


def _only_child(pid: int, required: bool = True) -> int | None:
    deadline = time.monotonic() + 5.0
    while True:
        children = _read(f"/proc/{pid}/task/{pid}/children").split()
        if children:
            return int(children[0])
        if not required or time.monotonic() > deadline:
            if required:
                raise HarnessError(f"process {pid} has no child process")
            return None
        time.sleep(0.02)


def _read_line(process: subprocess.Popen, timeout: float) -> str:
    """One line from the host init's stdout, or '' on timeout or exit. Reads the pipe byte-wise (no
    buffering) so a later line is never swallowed into a buffer that select() cannot see."""
    import select

    assert process.stdout is not None
    fd = process.stdout.fileno()
    deadline = time.monotonic() + timeout
    line = b""
    while time.monotonic() < deadline:
        ready, _, _ = select.select([fd], [], [], max(0.0, deadline - time.monotonic()))
        if not ready:
            break
        byte = os.read(fd, 1)
        if not byte:
            break
        if byte == b"\n":
            return line.decode(errors="replace").strip()
        line += byte
    return line.decode(errors="replace").strip()


def _wait_process(process: subprocess.Popen, timeout: float) -> bool:
    try:
        process.wait(timeout=timeout)
        return True
    except subprocess.TimeoutExpired:
        return False


def _tcp_open(address: str, port: int) -> bool:
    with contextlib.suppress(OSError), socket.create_connection((address, port), timeout=0.5):
        return True
    return False


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _tail(path: Path, lines: int = 15) -> str:
    return "\n".join(_read(str(path)).splitlines()[-lines:]) or f"(nothing in {path})"


def _clean_stale_clusters() -> None:
    """Remove bridges, namespaces and hosts left by a test run that died without closing its cluster.

    Only clusters whose owning process is gone are touched, and only processes whose command line names
    that cluster's directory are killed.
    """
    if not REGISTRY_DIR.is_dir():
        return
    for record in REGISTRY_DIR.glob("vdib*.json"):
        try:
            data = json.loads(record.read_text())
        except (OSError, ValueError):
            continue
        owner = int(data.get("owner_pid", 0))
        if owner and _start_time(owner) == data.get("owner_start"):
            continue  # its owner is alive
        base = data.get("base", "")
        bridge = record.stem
        number = bridge.removeprefix("vdib")
        if base:
            for entry in os.listdir("/proc"):
                if entry.isdigit() and f"--base {base}/hosts/" in _read(f"/proc/{entry}/cmdline").replace("\0", " "):
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(int(entry), signal.SIGKILL)
        for netns in _ip("netns", "list", check=False).stdout.split("\n"):
            netns_name = netns.split(" ")[0]
            if netns_name.startswith(f"vdi{number}-"):
                _ip("netns", "delete", netns_name, check=False)
        _ip("link", "delete", bridge, check=False)
        if base and Path(base).name.startswith("vdi-cluster-"):
            shutil.rmtree(base, ignore_errors=True)
        record.unlink(missing_ok=True)


@contextlib.contextmanager
def host_cluster(hosts: int = 2, **options: object) -> Iterator[HostCluster]:
    """A cluster with `hosts` running hosts named host1..hostN, closed on exit."""
    cluster = HostCluster(**options)  # type: ignore[arg-type]
    try:
        for number in range(1, hosts + 1):
            cluster.start_host(f"host{number}")
        yield cluster
    finally:
        cluster.close()
