"""Acceptance with a REAL booted guest on a harness host reached only through its node agent: snapshots of the
RUNNING desktop are taken live, and deleted live by block commit; revert still needs the desktop off. The guest
writes its files through the demo guest agent; the template file never changes."""
from __future__ import annotations

import json
import subprocess
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path

import libvirt
import pytest
from sqlalchemy import select

from core.enums import HostStatus, PowerState
from core.errors import DesktopBusy, GatewayTimeout
from image_manager import service
from manager import db
from manager.models import Cluster, Desktop, Host, Snapshot, StorageDomain, Template, TemplateVersion, Volume
from manager.provisioning import nodes
from manager.provisioning.service import desktop_spec
from tests.harness.fixtures import demo_image, host_cluster_factory  # noqa: F401
from tests.harness.guests import SerialLog
from tests.integration.image_service.conftest import ok_job, sha256

pytestmark = [pytest.mark.libvirt, pytest.mark.slow]
FILE_A, FILE_B, FILE_C, FILE_D = (f"/home/user/{name}.txt" for name in "abcd")


def backing_chain(path: str) -> list[str]:
    """What qemu-img reads from the files' headers (force-share: the running guest holds the write lock)."""
    out = subprocess.run(["qemu-img", "info", "-U", "--backing-chain", "--output=json", path],
                         capture_output=True, text=True, check=True, timeout=60).stdout
    return [image["filename"] for image in json.loads(out)]


@dataclass
class LiveDesk:
    cluster: object
    desktop_id: str
    template_file: str
    serial: SerialLog
    target: nodes.NodeTarget

    # ---- the desktop as the manager sees it ----
    def row(self) -> tuple[str, str, int]:
        """(active volume id, its path, number of snapshots)."""
        with db.session_scope() as session:
            desktop = session.get(Desktop, self.desktop_id)
            count = len(list(session.scalars(select(Snapshot).where(Snapshot.desktop_id == self.desktop_id))))
            return desktop.volume_id, session.get(Volume, desktop.volume_id).path, count

    def set_power(self, state: PowerState) -> None:  # what the heartbeat would record
        with db.session_scope() as session:
            session.get(Desktop, self.desktop_id).power_state = state

    def run(self, action, *args, **kwargs):
        """A service call in its own transaction; returns its job after waiting for it to succeed."""
        with db.session_scope() as session:
            desktop = service.get_desktop(session, self.desktop_id)
            args = [service.get_snapshot(session, desktop, a) if isinstance(a, SnapshotId) else a for a in args]
            result = action(session, desktop, *args, **kwargs)
            job = result[1] if isinstance(result, tuple) else result
            snapshot_id = result[0].id if isinstance(result, tuple) else None
        ok_job(job.id, timeout=300)
        return SnapshotId(snapshot_id) if snapshot_id else None

    # ---- the domain, through the node agent ----
    def start(self) -> None:
        nodes.power(self.target, self.desktop_id, "start")  # QEMU truncates the serial log at each power-on
        self.set_power(PowerState.UP)
        self.serial.wait_for(r"VDI-AGENT ready", timeout=240)
        assert self.guest("ping") == "pong"

    def stop(self) -> None:
        assert nodes.power(self.target, self.desktop_id, "shutdown", timeout=120)["state"] == "down"
        self.set_power(PowerState.DOWN)

    def guest(self, command: str) -> str:
        try:
            return nodes.guest(self.target, self.desktop_id, command, timeout=120)
        except GatewayTimeout:  # TCG guests on a loaded 2-core machine can be slow; say which call it was
            tail = "\n".join(self.serial.text().splitlines()[-10:])
            raise AssertionError(f"guest command {command!r} got no answer within 120 s; serial tail:\n{tail}") \
                from None

    def definition_sources(self) -> tuple[str, str]:
        """The disk file in the domain's live and persistent definitions, read straight from the host's libvirt."""
        conn = libvirt.open(self.cluster.uri("host1"))
        try:
            dom = conn.lookupByUUIDString(self.desktop_id)
            return tuple(ET.fromstring(dom.XMLDesc(flags)).find("devices/disk/source").get("file")
                         for flags in (0, libvirt.VIR_DOMAIN_XML_INACTIVE))
        finally:
            conn.close()


class SnapshotId(str):
    pass


@pytest.fixture
def live_desk(host_cluster_factory, demo_image, settings_env, pg_engine, clean_db):  # noqa: F811
    cluster = host_cluster_factory(hosts=1)
    image = demo_image.publish(cluster.shared_dir / "demo")
    storage = cluster.shared_dir / "storage"
    storage.mkdir()
    with db.session_scope() as session:
        domain = StorageDomain(name="shared", path=str(storage))
        group = Cluster(name="c1")
        session.add_all([domain, group])
        session.flush()
        host = Host(name="host1", cluster_id=group.id, agent_url=cluster.agent_url("host1"),
                    agent_token=cluster.token("host1"), status=HostStatus.UP)
        template = Template(name="demo", storage_domain_id=domain.id, boot_kernel=str(image.kernel),
                            boot_initrd=str(image.initrd), boot_cmdline=image.cmdline())
        session.add_all([host, template])
        session.flush()
        version = TemplateVersion(template_id=template.id, number=1)
        session.add(version)
        session.flush()
        template.latest_version_id = version.id
        job = service.import_template_image(session, template, source_path=str(image.template), actor="tests")
        version_id, template_id, host_id = version.id, template.id, host.id
    ok_job(job.id, timeout=300)
    with db.session_scope() as session:
        template_file = session.get(Volume, session.get(TemplateVersion, version_id).volume_id).path
        desktop = Desktop(name="live1", template_version_id=version_id, host_id=host_id, memory_mib=192)
        session.add(desktop)
        session.flush()
        (volume,) = service.create_desktop_disks(session, [desktop])
        spec = desktop_spec(desktop, session.get(Template, template_id), volume.path, "127.0.0.1")
        target = nodes.target_of_desktop(session, desktop)
        desktop_id = desktop.id
    nodes.define(target, spec)  # as provisioning does: the agent stamps the domain as ours
    desk = LiveDesk(cluster, desktop_id, template_file, SerialLog(spec.serial_log), target)
    template_sha = sha256(template_file)
    yield desk
    try:
        nodes.power(target, desktop_id, "poweroff")
        nodes.undefine(target, desktop_id)
    finally:
        assert sha256(template_file) == template_sha, "the template file changed"


def test_live_snapshot_then_offline_revert_brings_back_the_snapshot_state(live_desk):
    desk = live_desk
    desk.start()
    assert desk.guest(f"write {FILE_A} written before the snapshot").startswith("ok ")
    first_id, first_path, _ = desk.row()

    snap = desk.run(service.create_snapshot, "live-1")

    active_id, active_path, snapshots = desk.row()
    assert snapshots == 1 and (active_id, active_path) != (first_id, first_path)
    # libvirt moved both definitions to the new file; the desktop never stopped
    assert desk.definition_sources() == (active_path, active_path)
    assert backing_chain(active_path) == [active_path, first_path, desk.template_file]
    assert desk.guest("ping") == "pong"
    assert desk.guest(f"write {FILE_B} written after the snapshot").startswith("ok ")
    assert desk.guest(f"read {FILE_A}") == "written before the snapshot"

    # revert and preview stay offline
    for action in (service.revert_to_snapshot, service.preview_snapshot):
        with db.session_scope() as session:
            desktop = service.get_desktop(session, desk.desktop_id)
            with pytest.raises(DesktopBusy, match="power it off first"):
                action(session, desktop, service.get_snapshot(session, desktop, snap))
            session.rollback()

    desk.stop()
    desk.run(service.revert_to_snapshot, snap)
    assert desk.row()[1] == active_path  # offline operations keep the active path
    desk.start()
    assert desk.guest(f"read {FILE_A}") == "written before the snapshot"
    assert desk.guest(f"read {FILE_B}") != "written after the snapshot"
    boot = desk.serial.text()
    assert f"VDI-USERFILE {FILE_A} exists" in boot and f"VDI-USERFILE {FILE_B}" not in boot


def test_live_deletes_merge_with_the_guest_running(live_desk):
    desk = live_desk
    desk.start()
    assert desk.guest(f"write {FILE_A} first file").startswith("ok ")
    first_id, first_path, _ = desk.row()
    desk.run(service.create_snapshot, "live-1")
    _new_id, new_path, _ = desk.row()
    assert desk.guest(f"write {FILE_B} second file").startswith("ok ")
    before = backing_chain(new_path)
    assert before == [new_path, first_path, desk.template_file]

    with db.session_scope() as session:
        (snap,) = session.scalars(select(Snapshot).where(Snapshot.desktop_id == desk.desktop_id))
        snap_id = SnapshotId(snap.id)
    desk.run(service.delete_snapshot, snap_id)

    # active commit + pivot: the desktop writes its first file again, one layer shorter, the overlay is gone
    active_id, active_path, snapshots = desk.row()
    assert (active_id, active_path, snapshots) == (first_id, first_path, 0)
    after = backing_chain(active_path)
    assert after == [first_path, desk.template_file] and len(after) == len(before) - 1
    assert not Path(new_path).exists()
    assert desk.definition_sources() == (first_path, first_path)
    with db.session_scope() as session:
        assert session.get(Desktop, desk.desktop_id).task_state is None
        assert nodes.state_of(nodes.domain(desk.target, desk.desktop_id)) == PowerState.UP
    assert desk.guest(f"read {FILE_A}") == "first file"
    assert desk.guest(f"read {FILE_B}") == "second file"

    # An inner merge: deleting the older of two live snapshots commits the newer one's file into the older's.
    second = desk.run(service.create_snapshot, "live-2")
    second_active = desk.row()[1]
    assert desk.guest(f"write {FILE_C} third file").startswith("ok ")
    third = desk.run(service.create_snapshot, "live-3")
    third_id, third_active, _ = desk.row()
    assert desk.guest(f"write {FILE_D} fourth file").startswith("ok ")
    assert backing_chain(third_active) == [third_active, second_active, first_path, desk.template_file]
    desk.run(service.delete_snapshot, second)
    assert desk.row() == (third_id, third_active, 1)  # the active file did not move
    assert backing_chain(third_active) == [third_active, first_path, desk.template_file]
    assert not Path(second_active).exists()
    with db.session_scope() as session:  # snapshot live-3's content now lives in the merged file
        assert session.get(Volume, session.get(Snapshot, third).volume_id).path == first_path
    assert [desk.guest(f"read {f}") for f in (FILE_A, FILE_B, FILE_C, FILE_D)] == \
        ["first file", "second file", "third file", "fourth file"]

    # live-3 still holds its point in time, and the next boot uses the definition libvirt kept up to date
    desk.stop()
    desk.run(service.revert_to_snapshot, third)
    desk.start()
    assert [desk.guest(f"read {f}") for f in (FILE_A, FILE_B, FILE_C)] == ["first file", "second file", "third file"]
    assert desk.guest(f"read {FILE_D}") != "fourth file"
    assert f"VDI-USERFILE {FILE_D}" not in desk.serial.text()
