"""Fixtures for the node agent against real libvirt: the system libvirtd, shared storage, demo guests,
agent processes and a heartbeat receiver standing in for the manager's endpoint.

`system_libvirtd` is reusable by any area: it connects to qemu:///system, starting virtlogd and libvirtd
first when they are not running (as docs/hypervisors.md describes). It leaves them running at the
end, like the Postgres and Redis servers the suite also expects: other test sessions may be using them.
"""
from __future__ import annotations

import http.server
import json
import os
import shutil
import signal
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from core.specs import DesktopSpec
from manager.embedded_nodes import EmbeddedNode, NodeAgentProcess, free_port
from tests.harness.guests import remove_owned_domains  # noqa: F401 (the node tests import it from here)
from tests.unit.node.conftest import private_test_uri
from tests.harness.hosts import ensure_kvm_device_group

SYSTEM_URI = "qemu:///system"
LIBVIRTD_SOCKET = Path("/var/run/libvirt/libvirt-sock")
# Somewhere QEMU (running as libvirt-qemu) can reach: pytest's tmp dirs are private to root.
SHARED_ROOT = Path(os.environ.get("VDI_TEST_SHARED_DIR", "/var/tmp/vdi-node-tests"))


def _libvirt_answers(uri: str = SYSTEM_URI) -> bool:
    result = subprocess.run(["virsh", "-c", uri, "version"], capture_output=True, timeout=30)
    return result.returncode == 0


def ensure_system_libvirtd(timeout: float = 60.0) -> None:
    """Make qemu:///system answer, starting virtlogd and libvirtd (daemonised) if needed."""
    ensure_kvm_device_group()
    missing = [t for t in ("libvirtd", "virtlogd", "virsh", "qemu-system-x86_64", "qemu-img") if not shutil.which(t)]
    if missing:
        pytest.skip(f"missing {missing}: install libvirt-daemon-system, libvirt-clients, qemu-system-x86, qemu-utils")
    if _libvirt_answers():
        return
    if os.geteuid() != 0:
        pytest.skip("qemu:///system does not answer and only root can start libvirtd")
    for directory in ("/var/log/libvirt", "/var/run/libvirt"):
        os.makedirs(directory, exist_ok=True)
    if subprocess.run(["pgrep", "-x", "virtlogd"], capture_output=True).returncode != 0:
        subprocess.run(["virtlogd", "-d"], check=True)
    if subprocess.run(["pgrep", "-x", "libvirtd"], capture_output=True).returncode != 0:
        subprocess.run(["libvirtd", "-d"], check=True)
    deadline = time.monotonic() + timeout
    while not _libvirt_answers():
        if time.monotonic() > deadline:
            pytest.fail(f"libvirtd did not answer on {SYSTEM_URI} within {timeout} s")
        time.sleep(0.5)


@pytest.fixture(scope="session")
def system_libvirtd() -> str:
    """The URI of the machine's real libvirtd (qemu:///system), started if it was not running."""
    ensure_system_libvirtd()
    return SYSTEM_URI


@pytest.fixture(scope="session")
def shared_storage() -> Iterator[Path]:
    """A directory playing the shared image store, readable by QEMU's user; removed at the end."""
    base = SHARED_ROOT / f"run-{os.getpid()}-{uuid.uuid4().hex[:6]}"
    base.mkdir(parents=True)
    for directory in (SHARED_ROOT, base):
        os.chmod(directory, 0o755)
    yield base
    shutil.rmtree(base, ignore_errors=True)


@pytest.fixture(scope="session")
def published_demo_image(shared_storage):
    """The demo desktop (image_manager.demo_image) copied onto the test's shared storage."""
    from image_manager.demo_image import ensure_demo_image

    return ensure_demo_image().publish(shared_storage / "templates")


def make_overlay(template: Path, path: Path) -> Path:
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-b", str(template), "-F", "qcow2", str(path)],
                   check=True)
    return path


def make_blank_disk(path: Path) -> Path:
    """An empty disk: the guest sits in the BIOS ('no bootable device') and ignores ACPI power buttons."""
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(path), "16M"], check=True)
    return path


def unique_manager_id(prefix: str = "node-tests") -> str:
    """A manager id of its own, so this test sees only its domains on the shared system libvirtd."""
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def demo_spec(image, disk: Path, serial_log: Path, name: str | None = None, **overrides) -> DesktopSpec:
    name = name or f"node-it-{uuid.uuid4().hex[:8]}"
    fields = dict(uuid=str(uuid.uuid4()), name=name, vcpus=1, memory_mib=192, disk_path=str(disk),
                  kernel=str(image.kernel), initrd=str(image.initrd), cmdline=image.cmdline(hostname=name),
                  serial_log=str(serial_log), sound=False, spice_password="first-ticket",
                  spice_password_valid_to="2099-01-01T00:00:00", domain_type="qemu")
    fields.update(overrides)
    return DesktopSpec(**fields)


# ---- processes ------------------------------------------------------------------------------------------
class AgentProcess(NodeAgentProcess):
    """`python -m hypervisor_node.agent` (manager.embedded_nodes.NodeAgentProcess) as a real process on loopback,
    named node-it, offering qemu and test domains; stopped by its own pid."""

    def __init__(self, libvirt_uri: str, token: str, *, manager_url: str = "", manager_id: str = "",
                 heartbeat_seconds: float = 0.5, log_path: Path | None = None) -> None:
        node = EmbeddedNode(name="node-it", libvirt_uri=libvirt_uri, port=free_port(), token=token,
                            domain_types="qemu,test")
        super().__init__(node, manager_url=manager_url or None, log_path=log_path or Path(os.devnull),
                         heartbeat_seconds=heartbeat_seconds, manager_id=manager_id or None, log_level="INFO")

    @property
    def url(self) -> str:
        return self.node.url

    def start(self, timeout: float = 30.0) -> "AgentProcess":
        super().start(timeout)
        return self

    def kill(self) -> None:
        """SIGKILL: the agent dies without any chance to clean up."""
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(timeout=30)

    def stop(self) -> int:
        """SIGTERM, the orderly stop; returns the exit status."""
        return super().stop(timeout=30) or 0


@pytest.fixture
def agent_processes() -> Iterator[list[AgentProcess]]:
    """Agents a test starts (append them); each is stopped by pid at the end."""
    started: list[AgentProcess] = []
    yield started
    for agent in started:
        agent.stop()


@dataclass
class Beat:
    path: str
    authorization: str
    body: dict


class HeartbeatReceiver:
    """An HTTP endpoint on loopback that accepts heartbeats the way the manager's does, and keeps them."""

    def __init__(self) -> None:
        self.beats: list[Beat] = []
        self._lock = threading.Lock()
        receiver = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (http.server's naming)
                length = int(self.headers.get("Content-Length", "0"))
                body = json.loads(self.rfile.read(length))
                with receiver._lock:
                    receiver.beats.append(Beat(self.path, self.headers.get("Authorization", ""), body))
                payload = b'{"ok": true}'
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, *_args) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self._thread.start()

    def received(self) -> list[Beat]:
        with self._lock:
            return list(self.beats)

    def wait_for(self, predicate, timeout: float = 30.0) -> Beat:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for beat in self.received():
                if predicate(beat):
                    return beat
            time.sleep(0.1)
        raise TimeoutError(f"no matching heartbeat within {timeout} s ({len(self.received())} received)")

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def heartbeat_receiver() -> Iterator[HeartbeatReceiver]:
    receiver = HeartbeatReceiver()
    yield receiver
    receiver.close()


@pytest.fixture
def test_driver_uri(tmp_path) -> str:
    return private_test_uri(tmp_path)
