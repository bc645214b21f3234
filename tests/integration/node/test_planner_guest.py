"""A planner desktop (the demo image's planner variant, docs/planner.md "Guest protocol") on real QEMU (TCG): its
framebuffer, the guest agent's planner operations with their guest-side times, and their watermarks read back over
VNC by the planner's own client (planner.rfb.FramebufferViewer, planner.watermark).

One guest for the module (the machine has 2 cores); run under `flock /tmp/vdi-heavy.lock`.
"""
from __future__ import annotations

import asyncio
import os
import subprocess
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from hypervisor_node.driver import LibvirtDriver
from image_manager import qemu_img
from image_manager.demo_image import ensure_demo_image
from planner.rfb import FramebufferViewer
from planner.watermark import END_SUM, Marks, decode
from tests.harness.guests import SerialLog
from tests.harness.rfb import DirectVnc

from .conftest import demo_spec, make_overlay, remove_owned_domains, unique_manager_id

pytestmark = [pytest.mark.libvirt, pytest.mark.slow]

VNC_PASSWORD = "first-ticket"[:8]  # demo_spec's console ticket; VNC keeps its first 8 characters
# every built-in operation with its suggested code (docs/planner.md, "Built-in applications")
OPERATIONS = [("word", "open", 11), ("word", "type", 12), ("word", "save", 13), ("browser", "browse", 21),
              ("archive", "compress", 31), ("video", "play", 41)]
KEEPALIVE_PIXEL = (200, 4)
# an application a user added (docs/planner.md: an executable NAME in /opt/planner/apps of the template)
FLAKY_APP = """#!/bin/busybox sh
case "$1" in
    ops) echo "crash" ;;
    crash) exit 3 ;;
    *) exit 2 ;;
esac
"""


def _template_with_application(template: Path, workdir: Path, name: str, script: str) -> Path:
    """A copy of `template` with `script` installed as /opt/planner/apps/`name` (mode 0755), written with debugfs."""
    raw = workdir / "template.raw"
    qemu_img.convert(template, raw, out_fmt="raw")
    local = workdir / name
    local.write_text(script)
    subprocess.run(["debugfs", "-w", "-f", "-", str(raw)], check=True, capture_output=True, text=True,
                   input=f"cd /opt/planner/apps\nwrite {local} {name}\nsif {name} mode 0100755\n")
    copy = qemu_img.convert(raw, workdir / "template.qcow2", src_fmt="raw", out_fmt="qcow2")
    raw.unlink()
    return copy


@pytest.fixture(scope="module")
def planner_desktop(system_libvirtd, shared_storage):
    image = ensure_demo_image(variant="planner").publish(shared_storage / "templates")
    manager_id = unique_manager_id("planner-guest")
    driver = LibvirtDriver(system_libvirtd, manager_id=manager_id, domain_types=["qemu"])
    workdir = shared_storage / manager_id
    workdir.mkdir()
    os.chmod(workdir, 0o755)
    serial = SerialLog(workdir / "serial.log")
    template = _template_with_application(image.template, workdir, "flaky", FLAKY_APP)
    spec = demo_spec(image, make_overlay(template, workdir / "desk.qcow2"), serial.path)
    try:
        driver.define(spec)
        driver.start(spec.uuid)
        serial.wait_for(r"VDI-AGENT ready", timeout=300)
        yield driver, spec, serial
    finally:
        try:
            remove_owned_domains(driver)
        finally:
            driver.close()


def _vnc_port(driver: LibvirtDriver, uuid: str) -> int:
    root = ET.fromstring(driver._run(lambda conn: conn.lookupByUUIDString(uuid).XMLDesc(0)))
    return next(int(g.get("port")) for g in root.iter("graphics") if g.get("type") == "vnc")


def test_the_planner_desktop_boots_the_generic_kernel_with_a_framebuffer(planner_desktop):
    _, spec, serial = planner_desktop
    boot = serial.wait_for(r"VDI-BOOT template=\S+ hostname=(\S+) boot=1 kernel=(\S+)")[0]
    assert boot.group(1) == spec.name and not boot.group(2).endswith("cloud-amd64")
    desktop = serial.wait_for(r"VDI-PLANNER desktop (\d+)x(\d+) bpp=(\d+) font=(\w+) marks_us=(\d+)")[0]
    assert desktop.groups()[:4] == ("1024", "768", "24", "console")
    print(f"drawing the three watermark lines took {desktop.group(5)} us in the guest")


def test_the_agent_lists_the_applications_and_refuses_unknown_ones(planner_desktop):
    driver, spec, _ = planner_desktop
    assert driver.guest_call(spec.uuid, "planner-apps", timeout=60) == \
        "archive:compress browser:browse flaky:crash video:play word:open,type,save"
    assert driver.guest_call(spec.uuid, "planner-op paint open 900 51", timeout=60) == \
        "ERR no application 'paint' on this desktop: send planner-apps for the list"
    assert driver.guest_call(spec.uuid, "planner-op word print 900 14", timeout=60) == \
        "ERR application 'word' has no operation 'print': it has open type save"


def _watch(driver: LibvirtDriver, uuid: str, operations: list[tuple[str, str, int]], first_seq: int):
    """Run `operations` one after the other through the agent while the planner's VNC client watches the screen.
    Returns the ServerInit, (app, op, code, seq, reply, what the client saw) per operation, the marks on the screen
    at the end, and the keep-alive block's colours seen during 1.5 s of think time."""

    async def scenario():
        connection = await DirectVnc.open(_vnc_port(driver, uuid), VNC_PASSWORD)
        viewer = FramebufferViewer(connection)
        init = await viewer.start()
        reader = asyncio.create_task(viewer.run())
        try:
            results = []
            for seq, (app, op, code) in enumerate(operations, start=first_seq):
                reply = await asyncio.to_thread(driver.guest_call, uuid, f"planner-op {app} {op} {seq} {code}",
                                                timeout=180)
                results.append((app, op, code, seq, reply, await viewer.wait_for(seq, timeout=60)))
            final = decode(viewer.framebuffer.pixel)
            # think time: the keep-alive block keeps changing, so updates keep coming while nothing else moves
            greys = set()
            for _ in range(30):
                greys.add(viewer.framebuffer.pixel(*KEEPALIVE_PIXEL))
                await asyncio.sleep(0.05)
            return init, results, final, greys
        finally:
            reader.cancel()
            await connection.close()

    return asyncio.run(scenario())


def test_every_operation_answers_its_guest_time_and_the_client_sees_its_marks(planner_desktop):
    driver, spec, _ = planner_desktop
    init, results, final, greys = _watch(driver, spec.uuid, OPERATIONS, first_seq=1)
    assert (init.width, init.height) == (1024, 768)
    for app, op, code, seq, reply, seen in results:
        status, got_code, got_seq, microseconds = reply.split()
        assert (status, int(got_code), int(got_seq)) == ("ok", code, seq), reply
        assert int(microseconds) > 0
        assert seen is not None, f"the client never saw the end mark of {app} {op} (seq {seq})"
        assert seen.code == code
        print(f"{app} {op}: guest {int(microseconds) / 1000:.1f} ms, client "
              + (f"{seen.seconds * 1000:.1f} ms" if seen.seconds is not None else "start mark not seen"))
    # video play paces 48 frames at 24 per second: long enough that the start mark must reach the client
    play = results[-1][-1]
    assert play.start_t is not None and play.end_t > play.start_t
    last_seq = len(OPERATIONS)
    assert final == Marks(code=41, start=last_seq, end=END_SUM - last_seq)
    assert len(greys) >= 2, f"the keep-alive block did not change on the client's screen: {greys}"


def test_a_failing_application_is_answered_fail_and_still_ends_its_marks(planner_desktop):
    driver, spec, _ = planner_desktop
    _, results, final, _ = _watch(driver, spec.uuid, [("flaky", "crash", 51)], first_seq=950)
    (_, _, _, _, reply, seen) = results[0]
    assert reply == "FAIL 51 950 exit 3"
    assert seen is not None and seen.code == 51  # the end mark is drawn anyway: a client never waits forever
    assert final == Marks(code=51, start=950, end=END_SUM - 950)
