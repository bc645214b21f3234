"""Node agents run by the manager itself, for the embedded default (`make run`) and for tests.

A production host runs `vdi node` under its own service manager. On a single machine the manager starts one
agent process per configured embedded host and stops it on exit; the guests keep running (libvirt holds
them) and a restarted agent reports them again. The list lives in <data_dir>/embedded-nodes.json, written
by `vdi demo`; tokens travel to the agents in their environment, never on the command line.
"""
from __future__ import annotations

import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import httpx

from manager.config import write_private

log = logging.getLogger(__name__)

CONFIG_NAME = "embedded-nodes.json"
EMPTY_TEST_NODE = ("<node><cpu><nodes>1</nodes><sockets>1</sockets><cores>8</cores><threads>1</threads>"
                   "<mhz>2400</mhz><model>test-driver</model></cpu><memory>16777216</memory></node>\n")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def libvirt_test_driver_uri(node_xml: Path) -> str:
    """A private libvirt test-driver hypervisor backed by `node_xml` (created if missing)."""
    if not node_xml.exists():
        node_xml.parent.mkdir(parents=True, exist_ok=True)
        node_xml.write_text(EMPTY_TEST_NODE)
    return f"test://{node_xml.resolve()}"


def stop_process(proc: subprocess.Popen, timeout: float = 15.0) -> int:
    """The orderly stop of a child process: SIGTERM, up to `timeout` s to exit, then SIGKILL. Returns its exit
    status. (Tests that must see a whole process tree gone use tests.harness.processes.kill_process_tree.)"""
    if proc.poll() is not None:
        return proc.returncode
    proc.send_signal(signal.SIGTERM)
    try:
        return proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        return proc.wait(5)


def wait_until_answers(url: str, proc: subprocess.Popen, what: str, *, headers: dict[str, str] | None = None,
                       timeout: float = 60.0, request_timeout: float = 2.0) -> None:
    """Poll `url` until it answers 200 while the child process `proc` that serves it lives. RuntimeError naming
    `what` if the process exits first or `timeout` s pass (each request waits up to `request_timeout` s)."""
    deadline = time.monotonic() + timeout
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode}")
        try:
            if httpx.get(url, headers=headers, timeout=request_timeout).status_code == 200:
                return
        except httpx.TransportError:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what} did not answer within {timeout:.0f} s")
        time.sleep(0.2)


@dataclass
class EmbeddedNode:
    name: str
    libvirt_uri: str
    port: int
    token: str
    domain_types: str = "qemu"  # TCG: nested KVM does not work on the machines we test on

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


def load_config(data_dir: Path) -> list[EmbeddedNode]:
    path = data_dir / CONFIG_NAME
    if not path.exists():
        return []
    return [EmbeddedNode(**item) for item in json.loads(path.read_text())]


def save_config(data_dir: Path, nodes: list[EmbeddedNode]) -> None:
    write_private(data_dir / CONFIG_NAME, json.dumps([asdict(n) for n in nodes], indent=2))  # the node tokens


class NodeAgentProcess:
    """One `python -m hypervisor_node.agent` child process, answered on /v1/health before start() returns."""

    def __init__(self, node: EmbeddedNode, *, manager_url: str | None, log_path: Path,
                 heartbeat_seconds: float = 5.0, manager_id: str | None = None, log_level: str = "WARNING") -> None:
        self.node = node
        self.manager_url = manager_url
        self.log_path = log_path
        self.heartbeat_seconds = heartbeat_seconds
        self.manager_id = manager_id  # None: the agent's default ($VDI_MANAGER_ID or its built-in id)
        self.log_level = log_level
        self.process: subprocess.Popen | None = None

    def start(self, timeout: float = 60.0, request_timeout: float = 2.0) -> "NodeAgentProcess":
        """Start the agent and wait up to `timeout` s for a 200 from /v1/health (each request waits up to
        `request_timeout` s: its first libvirt call can be slow on a busy machine)."""
        argv = [sys.executable, "-m", "hypervisor_node.agent", "--name", self.node.name, "--libvirt-uri",
                self.node.libvirt_uri, "--listen", f"127.0.0.1:{self.node.port}", "--log-level", self.log_level,
                "--heartbeat-seconds", str(self.heartbeat_seconds)]
        if self.node.domain_types:
            argv += ["--domain-types", self.node.domain_types]
        if self.manager_url:
            argv += ["--manager", self.manager_url]
        if self.manager_id:
            argv += ["--manager-id", self.manager_id]
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        env = {**os.environ, "VDI_NODE_TOKEN": self.node.token}
        with open(self.log_path, "ab") as out:
            self.process = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, env=env,
                                            stdin=subprocess.DEVNULL)
        try:
            wait_until_answers(f"{self.node.url}/v1/health", self.process, f"node agent {self.node.name}",
                               headers={"Authorization": f"Bearer {self.node.token}"}, timeout=timeout,
                               request_timeout=request_timeout)
        except RuntimeError as exc:
            self.stop()
            raise RuntimeError(f"{exc}; see {self.log_path}") from None
        return self

    def stop(self, timeout: float = 15.0) -> int | None:
        """SIGTERM (the agent leaves guests running), then SIGKILL if it lingers; returns the exit status
        (None if it was never started)."""
        return stop_process(self.process, timeout) if self.process is not None else None


class EmbeddedNodes:
    """Start every configured embedded node agent; stop them all on exit."""

    def __init__(self, data_dir: Path, manager_url: str | None, heartbeat_seconds: float = 5.0) -> None:
        self.processes = [NodeAgentProcess(node, manager_url=manager_url,
                                           log_path=data_dir / "logs" / f"node-{node.name}.log",
                                           heartbeat_seconds=heartbeat_seconds)
                          for node in load_config(data_dir)]

    def __enter__(self) -> "EmbeddedNodes":
        try:
            for proc in self.processes:
                proc.start()
                log.info("embedded node agent %s on %s (%s)", proc.node.name, proc.node.url, proc.node.libvirt_uri)
        except Exception:
            self.__exit__(None, None, None)
            raise
        return self

    def __exit__(self, *exc) -> None:
        for proc in self.processes:
            proc.stop()
