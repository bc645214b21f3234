"""The image reconcile never deletes a disk that a domain defined on a host uses, even when the database lost the
desktop's row (and its volume's row): it asks every host's node agent (GET /v1/disks) first. While a host does not
answer, it deletes no image at all (every host reaches every storage domain). Test-driver hypervisors behind real
node agent processes; the real guest's case is in test_desktop_life.py."""
from __future__ import annotations

import os
import uuid

from sqlalchemy import delete, update

from core.enums import HostStatus
from image_manager import qemu_img
from image_manager.reconcile import reconcile
from manager import db
from manager.models import Desktop, Host, StorageDomain, Volume
from tests.integration.broker.conftest import API, job_ended


def _provisioned(client, name: str, template_id: str) -> tuple[str, str]:
    made = client.post(f"{API}/desktops", json={"name": name, "template_id": template_id})
    assert made.status_code == 201, made.text
    assert job_ended(client, made.json()["job_id"])["state"] == "succeeded"
    with db.session_scope() as s:
        return made.json()["id"], s.get(Volume, s.get(Desktop, made.json()["id"]).volume_id).path


def _forget_desktop(desktop_id: str, *, volume_too: bool) -> None:
    """What a DELETE of the row alone once did: the domain stays defined on its host."""
    with db.session_scope() as s:
        volume_id = s.get(Desktop, desktop_id).volume_id
        s.execute(update(Desktop).where(Desktop.id == desktop_id).values(volume_id=None))
        if volume_too:
            s.execute(delete(Volume).where(Volume.id == volume_id))
        s.execute(delete(Desktop).where(Desktop.id == desktop_id))


def test_reconcile_keeps_the_disks_of_defined_domains_and_everything_while_a_host_is_silent(world, client):
    (host_id,) = world.hosts(1)
    template_id, _ = world.template()
    storage = world.template_image.parents[2]
    with db.session_scope() as s:
        s.add(StorageDomain(name=f"{world.prefix}-sd", path=str(storage)))
    row_gone, disk_a = _provisioned(client, f"{world.prefix}-a", template_id)
    both_gone, disk_b = _provisioned(client, f"{world.prefix}-b", template_id)
    assert client.post(f"{API}/desktops/{row_gone}/start").status_code == 200
    _forget_desktop(row_gone, volume_too=False)  # its volume row stays, naming no desktop
    _forget_desktop(both_gone, volume_too=True)  # no row at all knows its disk
    orphan = storage / "desktops" / str(uuid.uuid4()) / f"{uuid.uuid4()}.qcow2"
    orphan.parent.mkdir(parents=True)
    qemu_img.create(orphan, size=1 << 20)

    with db.session_scope() as s:  # a second host that does not answer
        silent = Host(name=f"{world.prefix}-silent", cluster_id=s.get(Host, host_id).cluster_id,
                      agent_url="http://127.0.0.1:9", address="127.0.0.1", status=HostStatus.NON_RESPONSIVE)
        s.add(silent)
        s.flush()
        silent_id = silent.id
    report = reconcile(min_age_seconds=0)
    assert len(report.kept_for_silent_hosts) == 1 and f"{world.prefix}-silent" in report.kept_for_silent_hosts[0]
    assert os.path.exists(disk_a) and os.path.exists(disk_b) and orphan.exists()
    assert not report.removed_files and not report.removed_rows, report

    with db.session_scope() as s:
        s.execute(delete(Host).where(Host.id == silent_id))
    report = reconcile(min_age_seconds=0)
    assert report.kept_for_silent_hosts == []
    assert not orphan.exists() and str(orphan) in report.removed_files  # what no domain and no row knows goes
    assert os.path.exists(disk_a) and os.path.exists(disk_b), report
    assert disk_a in report.kept  # its volume row, naming no desktop, was kept too
    assert disk_a not in report.removed_files and disk_b not in report.removed_files
