"""Real demo guests for tests: domain XML from the project's designer, the guest agent, the serial log.

The demo desktop (image_manager.demo_image) prints markers on its serial console and answers a line
protocol on the virtio-serial channel org.vdi.guest_agent.0; these helpers read and speak them.
Only tests import this module (it may touch libvirt's live XML, never the libvirt API itself).
"""
from __future__ import annotations

import os
import re
import time
import uuid
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import TYPE_CHECKING

from core.errors import DomainNotFound, GatewayTimeout, Unavailable
from core.specs import DesktopSpec, HostCaps
from hypervisor_node import guest_agent
from hypervisor_node.domxml.designer import GUEST_AGENT_CHANNEL, design_domain
from image_manager import qemu_img
from image_manager.demo_image import DemoImage

if TYPE_CHECKING:
    from hypervisor_node.driver import LibvirtDriver

DEMO_MEMORY_MIB = 192


def make_overlay(template: Path, path: Path) -> Path:
    """A desktop disk: a qcow2 overlay whose backing file is the (immutable) template."""
    return qemu_img.create(path, backing=template, backing_fmt="qcow2")


def demo_domain_xml(image: DemoImage, name: str, disk: Path, serial_log: Path, *,
                    memory_mib: int = DEMO_MEMORY_MIB, host_name: str = "harness") -> str:
    """The designer's domain for a demo desktop: direct kernel boot, TCG, console to `serial_log`."""
    spec = DesktopSpec(
        uuid=str(uuid.uuid5(uuid.NAMESPACE_URL, f"vdi-harness/{name}")),
        name=name,
        vcpus=1,
        memory_mib=memory_mib,
        disk_path=str(disk),
        kernel=str(image.kernel),
        initrd=str(image.initrd),
        cmdline=image.cmdline(hostname=name),
        serial_log=str(serial_log),
        sound=False,
        domain_type="qemu",  # nested KVM cannot run guests on these machines (docs/hypervisors.md)
    )
    caps = HostCaps(hostname=host_name, domain_types=["qemu"], cpus=os.cpu_count() or 1,
                    memory_mib=1024, free_memory_mib=1024)
    return design_domain(spec, caps).to_xml()


def remove_owned_domains(driver: "LibvirtDriver") -> None:
    """Power off and undefine every domain `driver` owns (test clean-up; never touches other domains).

    Every domain is tried; then AssertionError names any that is still defined: a domain left on the
    machine's libvirtd is a bug to see (in the test's teardown), not to hide in a log.
    """
    failures = []
    for info in driver.list_domains():
        try:
            driver.poweroff(info.uuid)
            driver.undefine(info.uuid)
        except DomainNotFound:
            pass  # undefined meanwhile: gone is what we want
        except Exception as exc:  # noqa: BLE001 (clean-up goes on; the assertion below reports it)
            failures.append(f"{info.name} ({info.uuid}): {exc}")
    leftover = [f"{info.name} ({info.uuid})" for info in driver.list_domains()]
    if leftover:
        raise AssertionError(f"domains of {driver.manager_id} left on {driver.uri}: {leftover}; "
                             f"errors while removing them: {failures or 'none'}")


def agent_channel_path(live_xml: str) -> str:
    """The host-side socket of the guest agent channel, as the host sees it, from a RUNNING domain's XML."""
    root = ET.fromstring(live_xml)
    for channel in root.iter("channel"):
        target = channel.find("target")
        source = channel.find("source")
        if target is not None and target.get("name") == GUEST_AGENT_CHANNEL and source is not None:
            path = source.get("path")
            if path:
                return path
    raise LookupError(f"the domain has no unix channel named {GUEST_AGENT_CHANNEL}")


class GuestAgent:
    """A client for the demo guest agent at a channel socket the test can reach (e.g. through a harness
    host's private paths); it speaks through hypervisor_node.guest_agent, like the node driver does."""

    def __init__(self, socket_path: str | os.PathLike[str], timeout: float = 60.0) -> None:
        self.socket_path = str(socket_path)
        self.timeout = timeout

    def request(self, line: str, timeout: float | None = None) -> str:
        """The agent's reply to `line`; raises GatewayTimeout or Unavailable like guest_agent.call."""
        return guest_agent.call(self.socket_path, line, timeout or self.timeout,
                                what=f"the guest agent at {self.socket_path}")

    def wait_ready(self, timeout: float = 120.0) -> None:
        """Wait until the agent answers ping (the guest has booted and opened its port)."""
        deadline = time.monotonic() + timeout
        last: Exception | None = None
        while time.monotonic() < deadline:
            try:
                if self.request("ping", timeout=min(10.0, max(1.0, deadline - time.monotonic()))) == "pong":
                    return
            except (GatewayTimeout, Unavailable) as exc:
                last = exc
            time.sleep(0.5)
        raise TimeoutError(f"the guest agent at {self.socket_path} did not answer ping within {timeout} s ({last})")


class SerialLog:
    """The guest's serial console as QEMU writes it to a file."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)

    def text(self) -> str:
        try:
            return self.path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def wait_for(self, pattern: str, timeout: float = 120.0, count: int = 1) -> list[re.Match[str]]:
        """Wait until `pattern` (a regex) matched at least `count` lines; return all matches so far."""
        regex = re.compile(pattern)
        deadline = time.monotonic() + timeout
        while True:
            matches = [m for m in (regex.search(line) for line in self.text().splitlines()) if m]
            if len(matches) >= count:
                return matches
            if time.monotonic() > deadline:
                tail = "\n".join(self.text().splitlines()[-20:])
                raise TimeoutError(f"{pattern!r} x{count} not on the serial console {self.path} within "
                                   f"{timeout} s; last lines:\n{tail}")
            time.sleep(0.25)
