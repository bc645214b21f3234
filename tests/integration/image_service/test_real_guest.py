"""Acceptance with a REAL booted guest: the demo desktop on a harness libvirt host, its disk made and changed
only by the image service. A file the user writes survives a reboot, disappears after a re-image, comes
back after a snapshot revert; the template file never changes."""
from __future__ import annotations

import time

import libvirt
import pytest
from sqlalchemy import select

from core.enums import PowerState
from image_manager import service
from manager import db
from manager.models import Desktop, StorageDomain, Template, TemplateVersion, Volume
from tests.harness.fixtures import demo_image, host_cluster_factory  # noqa: F401
from tests.harness.guests import GuestAgent, SerialLog, agent_channel_path, demo_domain_xml
from tests.integration.image_service.conftest import ok_job, sha256

pytestmark = [pytest.mark.libvirt, pytest.mark.slow]
NOTE = "/home/user/notes.txt"


def _wait_off(domain, timeout=120.0):
    deadline = time.monotonic() + timeout
    while domain.state()[0] != libvirt.VIR_DOMAIN_SHUTOFF:
        if time.monotonic() > deadline:
            raise TimeoutError(f"{domain.name()} did not power off")
        time.sleep(0.25)


class Desk:
    """One desktop row and its libvirt domain; the DB power state follows libvirt as the heartbeat would."""

    def __init__(self, cluster, conn, image, desktop_id, disk, serial):
        self.cluster, self.conn, self.desktop_id, self.serial = cluster, conn, desktop_id, serial
        self.domain = conn.defineXML(demo_domain_xml(image, "desk1", disk, serial.path))
        self.boots = 0

    def _power(self, state):
        with db.session_scope() as session:
            session.get(Desktop, self.desktop_id).power_state = state

    def start(self) -> GuestAgent:
        self.domain.create()  # QEMU truncates the serial log at each power-on
        self._power(PowerState.UP)
        self.boots = 1
        self.serial.wait_for(r"VDI-BOOT .*", timeout=180, count=self.boots)
        self.serial.wait_for(r"VDI-AGENT ready", timeout=180, count=self.boots)
        agent = GuestAgent(self.cluster.host_path("host1", agent_channel_path(self.domain.XMLDesc())))
        agent.wait_ready()
        return agent

    def stop(self) -> None:
        self.domain.shutdown()
        _wait_off(self.domain)
        self._power(PowerState.DOWN)


def _job(action, desktop_id, snapshot_id=None, **kwargs):
    with db.session_scope() as session:
        desktop = service.get_desktop(session, desktop_id)
        if snapshot_id is None:
            job = action(session, desktop, **kwargs)
        else:
            job = action(session, desktop, service.get_snapshot(session, desktop, snapshot_id), **kwargs)
    ok_job(job.id, timeout=300)


def test_user_data_survives_reboot_goes_on_reimage_returns_on_revert(host_cluster_factory, demo_image, settings_env,
                                                                     pg_engine, clean_db):
    cluster = host_cluster_factory(hosts=1)
    image = demo_image.publish(cluster.shared_dir / "demo")
    storage = cluster.shared_dir / "storage"
    storage.mkdir()
    with db.session_scope() as session:
        domain = StorageDomain(name="shared", path=str(storage))
        session.add(domain)
        session.flush()
        template = Template(name="demo", storage_domain_id=domain.id, boot_kernel=str(image.kernel),
                            boot_initrd=str(image.initrd))
        session.add(template)
        session.flush()
        version = TemplateVersion(template_id=template.id, number=1)
        session.add(version)
        session.flush()
        template.latest_version_id = version.id
        job = service.import_template_image(session, template, source_path=str(image.template), actor="tests")
        version_id = version.id
    ok_job(job.id, timeout=300)
    with db.session_scope() as session:
        template_file = session.get(Volume, session.get(TemplateVersion, version_id).volume_id).path
        desktop = Desktop(name="desk1", template_version_id=version_id)
        session.add(desktop)
        session.flush()
        (volume,) = service.create_desktop_disks(session, [desktop])
        desktop_id, disk = desktop.id, volume.path
    template_sha = sha256(template_file)

    conn = libvirt.open(cluster.uri("host1"))
    try:
        desk = Desk(cluster, conn, image, desktop_id, disk, SerialLog(cluster.shared_dir / "desk1.serial.log"))
        agent = desk.start()
        assert agent.request(f"write {NOTE} before the snapshot") == "ok 20"
        assert agent.request("reboot") == "ok"
        desk.boots += 1
        desk.serial.wait_for(rf"VDI-USERFILE {NOTE} exists: before the snapshot", timeout=180)
        desk.serial.wait_for(r"VDI-AGENT ready", timeout=180, count=desk.boots)
        agent.wait_ready()
        assert agent.request(f"read {NOTE}") == "before the snapshot"
        desk.stop()

        with db.session_scope() as session:
            snap, job = service.create_snapshot(session, service.get_desktop(session, desktop_id), "with-notes")
            snapshot_id = snap.id
        ok_job(job.id)
        _job(service.reimage_desktop, desktop_id, keep_snapshots=True)
        agent = desk.start()
        assert agent.request(f"read {NOTE}") != "before the snapshot"
        assert "VDI-USERFILE none" in desk.serial.text().split("VDI-BOOT")[-1]
        desk.stop()

        _job(service.revert_to_snapshot, desktop_id, snapshot_id)
        agent = desk.start()
        assert agent.request(f"read {NOTE}") == "before the snapshot"
        desk.stop()
        desk.domain.undefine()
    finally:
        conn.close()
    assert sha256(template_file) == template_sha
    with db.session_scope() as session:
        assert session.get(Desktop, desktop_id).task_state is None
        assert len(list(session.scalars(select(Volume).where(Volume.desktop_id == desktop_id)))) == 2
