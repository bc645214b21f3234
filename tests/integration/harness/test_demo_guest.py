"""A real demo desktop boots on a harness host from a qcow2 overlay of the template."""
from __future__ import annotations

import hashlib
import subprocess
import time

import libvirt
import pytest

from image_manager import qemu_img
from tests.harness.guests import GuestAgent, SerialLog, agent_channel_path, demo_domain_xml, make_overlay

pytestmark = [pytest.mark.libvirt, pytest.mark.slow]


def _sha256(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _read_from_disk(disk, path, scratch):
    """A file as the guest's file system holds it, read from the whole qcow2 chain (overlay + template)."""
    raw = scratch / f"flat-{time.monotonic_ns()}.raw"
    qemu_img.convert(disk, raw, out_fmt="raw", force_share=True)
    try:
        # What the running guest synced may still sit in the ext4 journal: replay it, as a mount would.
        subprocess.run(["e2fsck", "-E", "journal_only", "-y", str(raw)], capture_output=True)
        result = subprocess.run(["debugfs", "-R", f"cat {path}", str(raw)], capture_output=True, text=True)
        return result.stdout
    finally:
        raw.unlink()


def _wait_state(domain, state, timeout=60.0):
    deadline = time.monotonic() + timeout
    while domain.state()[0] != state:
        if time.monotonic() > deadline:
            raise TimeoutError(f"{domain.name()} stayed in state {domain.state()} instead of {state}")
        time.sleep(0.25)


def test_guest_boots_answers_and_keeps_user_data_in_its_overlay(host_cluster_factory, demo_image, tmp_path):
    cluster = host_cluster_factory(hosts=1)
    image = demo_image.publish(cluster.shared_dir / "templates")
    template_sha = _sha256(image.template)
    disk = make_overlay(image.template, cluster.shared_dir / "desk1.qcow2")
    overlay_bytes_before = qemu_img.info(disk).actual_size
    serial = SerialLog(cluster.shared_dir / "desk1.serial.log")

    conn = libvirt.open(cluster.uri("host1"))
    try:
        domain = conn.defineXML(demo_domain_xml(image, "desk1", disk, serial.path))
        domain.create()

        boot = serial.wait_for(r"VDI-BOOT template=(\S+) hostname=(\S+) boot=(\d+)")[0]
        assert boot.groups() == (image.template_id, "desk1", "1")
        serial.wait_for(r"VDI-USERFILE none")
        serial.wait_for(r"VDI-AGENT ready")

        agent = GuestAgent(cluster.host_path("host1", agent_channel_path(domain.XMLDesc())))
        agent.wait_ready()
        assert agent.request("ping") == "pong"
        assert agent.request("hostname") == "desk1"
        assert agent.request("apps").split(",") == image.apps
        assert int(agent.request("uptime")) >= 0
        operation, milliseconds = agent.request("run compress").split()
        assert operation == "compress" and int(milliseconds) >= 0
        assert agent.request("run nonsense").startswith("ERR unknown operation")
        assert agent.request("write /home/user/notes.txt quarterly report draft") == "ok 23"
        assert agent.request("read /home/user/notes.txt") == "quarterly report draft"

        # The user's write lives in the overlay; the shared template is untouched.
        assert _sha256(image.template) == template_sha
        assert qemu_img.info(disk, force_share=True).actual_size > overlay_bytes_before
        assert _read_from_disk(disk, "/home/user/notes.txt", tmp_path) == "quarterly report draft\n"
        assert _read_from_disk(image.template, "/home/user/notes.txt", tmp_path) == ""

        # A reboot from inside the guest: same QEMU, the disk keeps the file.
        assert agent.request("reboot") == "ok"
        serial.wait_for(r"VDI-SHUTDOWN reboot")
        assert serial.wait_for(r"VDI-BOOT .* boot=2", timeout=180)
        serial.wait_for(r"VDI-USERFILE /home/user/notes.txt exists: quarterly report draft")
        agent.wait_ready()
        assert agent.request("read /home/user/notes.txt") == "quarterly report draft"

        # A clean power-off through ACPI (libvirt shutdown), then a cold boot.
        domain.shutdown()
        _wait_state(domain, libvirt.VIR_DOMAIN_SHUTOFF, timeout=120)
        assert "VDI-SHUTDOWN poweroff" in serial.text()
        domain.create()
        serial.wait_for(r"VDI-BOOT .* boot=3", timeout=180)
        serial.wait_for(r"VDI-USERFILE /home/user/notes.txt exists: quarterly report draft")
        assert _sha256(image.template) == template_sha
        domain.destroy()
    finally:
        conn.close()
