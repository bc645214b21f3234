"""The node driver and agent with a real QEMU (TCG) demo desktop booted from a qcow2 overlay.

One guest for the module (the machine has 2 cores): it boots once and the tests look at it in turn.
"""
from __future__ import annotations

import os
import signal
import socket
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import httpx
import libvirt
import pytest

from core.errors import Conflict, GatewayTimeout, Invalid
from hypervisor_node import guest_agent
from hypervisor_node.driver import LibvirtDriver
from tests.harness.guests import SerialLog, agent_channel_path
from tests.harness.screens import keycodes_for, share_of_colour

from .conftest import AgentProcess, demo_spec, make_overlay, remove_owned_domains, unique_manager_id

pytestmark = [pytest.mark.libvirt, pytest.mark.slow]

TOKEN = "real-guest-agent-token"
VGA_BLUE = (0, 0, 170)  # the VGA palette's blue, the demo screen's background


class RunningDesktop:
    def __init__(self, driver: LibvirtDriver, spec, serial: SerialLog, disk: Path, image) -> None:
        self.driver = driver
        self.spec = spec
        self.serial = serial
        self.disk = disk
        self.image = image

    @property
    def uuid(self) -> str:
        return self.spec.uuid

    def live_xml(self, flags: int = 0) -> ET.Element:
        return ET.fromstring(self.driver._run(lambda conn: conn.lookupByUUIDString(self.uuid).XMLDesc(flags)))

    def qemu_pid(self) -> int:
        return int(Path(f"/var/run/libvirt/qemu/{self.spec.name}.pid").read_text().strip())


@pytest.fixture(scope="module")
def desktop(system_libvirtd, shared_storage, published_demo_image):
    manager_id = unique_manager_id("node-real")
    driver = LibvirtDriver(system_libvirtd, manager_id=manager_id, domain_types=["qemu"])
    workdir = shared_storage / manager_id
    workdir.mkdir()
    os.chmod(workdir, 0o755)
    disk = make_overlay(published_demo_image.template, workdir / "desk.qcow2")
    serial = SerialLog(workdir / "serial.log")
    spec = demo_spec(published_demo_image, disk, serial.path)
    try:  # a boot that fails or times out must not leave the domain behind either
        driver.define(spec)
        driver.start(spec.uuid)
        serial.wait_for(r"VDI-AGENT ready", timeout=240)
        yield RunningDesktop(driver, spec, serial, disk, published_demo_image)
    finally:
        try:
            remove_owned_domains(driver)
        finally:
            driver.close()


def test_guest_boots_from_an_overlay_of_the_template(desktop):
    boot = desktop.serial.wait_for(r"VDI-BOOT template=(\S+) hostname=(\S+)")[0]
    # /template-id exists only in the template: reading it proves the overlay's backing chain works
    assert boot.group(1) == desktop.image.template_id
    assert boot.group(2) == desktop.spec.name
    disk = desktop.live_xml().find("devices/disk")
    assert disk.find("source").get("file") == str(desktop.disk)
    assert disk.find("driver").get("type") == "qcow2"
    assert disk.find("backingStore/source").get("file") == str(desktop.image.template)


def test_guest_agent_answers_over_the_virtio_serial_socket(desktop):
    assert desktop.driver.guest_call(desktop.uuid, "ping", timeout=30) == "pong"
    assert desktop.driver.guest_call(desktop.uuid, "apps", timeout=30).split(",") == desktop.image.apps
    assert desktop.driver.guest_call(desktop.uuid, "hostname", timeout=30) == desktop.spec.name


def test_a_late_reply_to_a_timed_out_call_is_never_the_next_calls_answer(desktop):
    """The stale-reply case, made deterministic: `sleep 10` times out after 2 s; the guest writes its late
    `ok` while the next call is connected and waiting for `ping`'s reply. That call must skip it."""
    with pytest.raises(GatewayTimeout):
        desktop.driver.guest_call(desktop.uuid, "sleep 10", timeout=2)
    assert desktop.driver.guest_call(desktop.uuid, "ping", timeout=120) == "pong"
    assert desktop.driver.guest_call(desktop.uuid, "hostname", timeout=60) == desktop.spec.name


def test_a_person_can_still_send_plain_commands(desktop):
    """Untagged requests (socat on the channel socket) get untagged replies; lines tagged for other callers
    (late replies to their requests) are the only other thing that may come first."""
    path = agent_channel_path(ET.tostring(desktop.live_xml(), encoding="unicode"))
    with socket.socket(socket.AF_UNIX) as sock:
        sock.settimeout(120)
        sock.connect(path)
        sock.sendall(b"hostname\n")
        with sock.makefile("rb") as replies:
            line = replies.readline().decode().rstrip("\n")
            while guest_agent.parse_reply(line)[0] is not None:
                line = replies.readline().decode().rstrip("\n")
    assert line == desktop.spec.name


def test_ticket_changes_the_spice_password_live_without_a_restart(desktop):
    domain_id = desktop.live_xml().get("id")
    qemu_pid = desktop.qemu_pid()
    before = desktop.live_xml(libvirt.VIR_DOMAIN_XML_SECURE).find("devices/graphics[@type='spice']")
    assert before.get("passwd") == "first-ticket"

    valid_to = desktop.driver.set_ticket(desktop.uuid, "second-ticket", 120)

    live = desktop.live_xml(libvirt.VIR_DOMAIN_XML_SECURE)
    spice = live.find("devices/graphics[@type='spice']")
    assert (spice.get("passwd"), spice.get("passwdValidTo")) == ("second-ticket", valid_to)
    assert spice.get("port") == before.get("port")
    assert live.find("devices/graphics[@type='vnc']").get("passwd") == "second-t"
    # the same QEMU process, still running: no restart happened
    assert (live.get("id"), desktop.qemu_pid()) == (domain_id, qemu_pid)
    assert desktop.driver.state(desktop.uuid).value == "up"
    # and the next boot keeps it (CONFIG as well as LIVE)
    config = desktop.live_xml(libvirt.VIR_DOMAIN_XML_SECURE | libvirt.VIR_DOMAIN_XML_INACTIVE)
    assert config.find("devices/graphics[@type='spice']").get("passwd") == "second-ticket"
    # without SECURE the password never leaves libvirt
    assert desktop.live_xml().find("devices/graphics[@type='spice']").get("passwd") is None


def test_bulk_stats_report_cpu_and_memory_of_the_running_guest(desktop):
    desktop.driver.bulk_stats()  # the baseline sample for the CPU delta
    assert desktop.driver.guest_call(desktop.uuid, "run cpu", timeout=120).startswith("cpu ")
    stats = {s.uuid: s for s in desktop.driver.bulk_stats()}
    mine = stats[desktop.uuid]
    assert mine.state == "up" and mine.vcpus == 1
    assert mine.memory_kib == desktop.spec.memory_mib * 1024
    assert mine.cpu_time_ns > 0
    assert 0 < mine.cpu_usage <= 100  # the guest just hashed 8 MiB under TCG
    assert 0 < mine.mem_usage < 100  # from the guest's balloon driver


def test_the_screen_shows_the_desktop_and_typing_on_it_reaches_its_shell(desktop):
    """The screen (VGA text console) is the demo's white on blue, not SeaBIOS's grey on black; keys pressed
    through libvirt log "user" in at the getty prompt and run a command whose output the agent reads back."""
    desktop.serial.wait_for(r"VDI-SCREEN login prompt on tty1", timeout=60)
    login_screen = desktop.driver.screenshot(desktop.uuid)
    assert login_screen.startswith(b"\x89PNG")
    assert share_of_colour(login_screen, VGA_BLUE) > 0.8  # SeaBIOS's screen has none of it
    assert desktop.driver.guest_call(desktop.uuid, "user", timeout=30) == ""  # nobody logged in yet

    for chord in keycodes_for("user\n"):
        desktop.driver.send_key(desktop.uuid, chord)
    deadline = time.monotonic() + 60
    while desktop.driver.guest_call(desktop.uuid, "user", timeout=30) != "user":
        assert time.monotonic() < deadline, "typing 'user' at the login prompt did not log anyone in"
        time.sleep(0.5)
    for chord in keycodes_for("hostname > /tmp/typed-on-the-console\n"):
        desktop.driver.send_key(desktop.uuid, chord)
    deadline = time.monotonic() + 60
    while (typed := desktop.driver.guest_call(desktop.uuid, "read /tmp/typed-on-the-console", timeout=30)) \
            .startswith("ERR"):
        assert time.monotonic() < deadline, f"the typed command wrote nothing: {typed}"
        time.sleep(0.5)
    assert typed == desktop.spec.name
    shell_screen = desktop.driver.screenshot(desktop.uuid)
    assert shell_screen != login_screen and share_of_colour(shell_screen, VGA_BLUE) > 0.8
    with pytest.raises(Invalid, match="key codes"):
        desktop.driver.send_key(desktop.uuid, [])


def test_the_guest_agent_reports_its_address_from_dhcp(desktop):
    """QEMU's user-mode network (the designer's default) answers DHCP with 10.0.2.15."""
    desktop.serial.wait_for(r"VDI-NET addresses=", timeout=120)
    addresses = desktop.driver.guest_call(desktop.uuid, "ip", timeout=30).split(",")
    assert addresses[0] == "10.0.2.15"


def test_heartbeats_carry_what_the_guest_agent_reports(desktop, heartbeat_receiver, agent_processes, tmp_path):
    """The node agent asks the running guest for its facts and sends them once, not in every heartbeat."""
    agent = AgentProcess(desktop.driver.uri, TOKEN, manager_url=heartbeat_receiver.url,
                         manager_id=desktop.driver.manager_id, heartbeat_seconds=0.5, log_path=tmp_path / "agent.log")
    agent_processes.append(agent.start())

    def with_address(beat) -> bool:
        facts = beat.body.get("guest", {}).get(desktop.uuid)
        return bool(facts and facts["ips"])

    beat = heartbeat_receiver.wait_for(with_address, timeout=120)
    facts = beat.body["guest"][desktop.uuid]
    assert facts["ips"][0] == "10.0.2.15" and facts["hostname"] == desktop.spec.name
    assert facts["apps"] == desktop.image.apps and facts["users"] in ([], ["user"])
    later = heartbeat_receiver.wait_for(lambda b: b.body["seq"] >= beat.body["seq"] + 3)
    assert desktop.uuid not in later.body["guest"]  # unchanged facts are not sent again
    agent.stop()


def test_killing_and_restarting_the_agent_leaves_the_guest_running(desktop, heartbeat_receiver,
                                                                    agent_processes, tmp_path):
    qemu_pid = desktop.qemu_pid()

    def start_agent() -> AgentProcess:
        agent = AgentProcess(desktop.driver.uri, TOKEN, manager_url=heartbeat_receiver.url,
                             manager_id=desktop.driver.manager_id, heartbeat_seconds=0.5,
                             log_path=tmp_path / "agent.log")
        agent_processes.append(agent)
        return agent.start()

    def our_guest_up(beat) -> bool:
        return any(d["uuid"] == desktop.uuid and d["state"] == "up" for d in beat.body["domains"])

    first = start_agent()
    beat = heartbeat_receiver.wait_for(our_guest_up)
    assert beat.path == "/api/v1/nodes/node-it/heartbeat" and beat.authorization == f"Bearer {TOKEN}"
    first.kill()
    assert desktop.driver.state(desktop.uuid).value == "up"
    assert desktop.qemu_pid() == qemu_pid

    second = start_agent()
    started_at = httpx.get(f"{second.url}/v1/health", headers={"Authorization": f"Bearer {TOKEN}"}) \
        .json()["agent_started_at"]
    recovered = heartbeat_receiver.wait_for(lambda b: b.body["agent_started_at"] == started_at)
    # the restarted agent's very first heartbeat already reports the running guest
    assert recovered.body["seq"] == 1 and our_guest_up(recovered)
    listed = httpx.get(f"{second.url}/v1/domains", headers={"Authorization": f"Bearer {TOKEN}"}).json()
    assert {"uuid": desktop.uuid, "name": desktop.spec.name, "state": "up",
            "desktop_id": desktop.uuid} in listed["domains"]

    # an orderly stop (SIGTERM; uvicorn re-raises it after its graceful shutdown) leaves guests alone too
    assert second.stop() in (0, -signal.SIGTERM)
    assert "Application shutdown complete" in (tmp_path / "agent.log").read_text()
    assert desktop.driver.state(desktop.uuid).value == "up"
    assert desktop.qemu_pid() == qemu_pid
    assert desktop.driver.guest_call(desktop.uuid, "ping", timeout=30) == "pong"


def test_suspend_resume_and_a_graceful_shutdown_the_guest_obeys(desktop):
    # last in the module: it stops the shared guest
    assert desktop.driver.suspend(desktop.uuid).state == "paused"
    with pytest.raises(Conflict):
        desktop.driver.undefine(desktop.uuid)
    assert desktop.driver.resume(desktop.uuid).state == "up"
    assert desktop.driver.guest_call(desktop.uuid, "ping", timeout=30) == "pong"
    assert desktop.driver.shutdown(desktop.uuid, timeout=120).state == "down"
    desktop.serial.wait_for(r"VDI-SHUTDOWN poweroff", timeout=5)
