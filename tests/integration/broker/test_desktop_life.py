"""A desktop's whole life through the API on a real guest (QEMU under the machine's libvirtd, the demo desktop image, a
node agent process), issue 18 item 1:
- POST /desktops places it and its job makes the overlay and defines the domain; it starts and its guest agent
  answers;
- PATCH of its memory reaches the running guest live through the balloon: the guest's /proc/meminfo shows less
  memory (read through the guest agent), while the same boot goes on (uptime);
- its DB row removed behind its back, the image reconcile keeps its disk, which the defined domain uses (the guest
  goes on writing to it);
- DELETE refuses it while it runs (409), and with ?force=true its job powers it off, undefines the domain and
  deletes the disk: both are gone.
One guest at a time (run under flock /tmp/vdi-heavy.lock)."""
from __future__ import annotations

import os
import re
import time

import pytest
from sqlalchemy import delete, insert, select, update

from image_manager.reconcile import reconcile
from manager import db
from manager.models import Desktop, StorageDomain, Volume
from tests.integration.broker.conftest import API, job_ended
from tests.integration.broker.test_real_guests import (guest, published_image, real_node,  # noqa: F401
                                                       real_template, wait_guest_ready)

pytestmark = [pytest.mark.libvirt, pytest.mark.slow]


def _mem_total_kib(agent, desktop_id: str) -> int:
    meminfo = guest(agent, desktop_id, "read /proc/meminfo").replace("\\n", "\n")
    found = re.search(r"^MemTotal:\s+(\d+) kB", meminfo, re.M)
    assert found, meminfo
    return int(found.group(1))


def _defined(agent, desktop_id: str) -> bool:
    from manager.nodes.client import NodeClient

    with NodeClient(agent.node.url, agent.node.token, timeout=120) as client:
        return desktop_id in [d["uuid"] for d in client.list_domains()]


def test_a_desktop_is_created_changed_live_kept_by_reconcile_and_deleted_on_a_real_guest(
        real_node, published_image, world, client):  # noqa: F811
    host_id, template_id = real_template(real_node, published_image, f"{world.prefix}-real1")
    with db.session_scope() as s:  # the reconcile scans where the desktop's disk goes (beside the template)
        s.add(StorageDomain(name=f"{world.prefix}-sd", path=str(published_image.template.parent)))

    # ---- create: the row now, the overlay and the domain by its job ---------------------------------------------
    made = client.post(f"{API}/desktops", json={"name": f"{world.prefix}-life", "template_id": template_id,
                                                "memory_mib": 256})
    assert made.status_code == 201, made.text
    desktop_id = made.json()["id"]
    assert made.json()["host_id"] == host_id
    assert job_ended(client, made.json()["job_id"], 300)["state"] == "succeeded"
    with db.session_scope() as s:
        disk = s.get(Volume, s.get(Desktop, desktop_id).volume_id).path
    assert os.path.exists(disk) and _defined(real_node, desktop_id)

    started = client.post(f"{API}/desktops/{desktop_id}/start")
    assert started.status_code == 200 and started.json()["power_state"] == "up", started.text
    wait_guest_ready(real_node, desktop_id)
    before = _mem_total_kib(real_node, desktop_id)
    uptime = int(guest(real_node, desktop_id, "uptime"))

    # ---- memory, live: the balloon takes 64 MiB back and the guest sees it -----------------------------------------
    changed = client.patch(f"{API}/desktops/{desktop_id}", json={"memory_mib": 192, "monitors": 2})
    assert changed.status_code == 200, changed.text
    assert changed.json()["applied"] == {"memory_mib": "live", "monitors": "next_boot"}, changed.text
    deadline = time.monotonic() + 120
    while (after := _mem_total_kib(real_node, desktop_id)) > before - 48 * 1024:
        assert time.monotonic() < deadline, f"MemTotal stayed {after} kB (was {before} kB)"
        time.sleep(1)
    assert int(guest(real_node, desktop_id, "uptime")) >= uptime  # the same boot, not a restart

    # ---- the row gone behind its back: the reconcile keeps the disk the running domain uses ------------------------
    with db.session_scope() as s:
        row = {c.key: getattr(s.get(Desktop, desktop_id), c.key) for c in Desktop.__table__.columns}
        s.execute(update(Desktop).where(Desktop.id == desktop_id).values(volume_id=None))
        s.execute(delete(Desktop).where(Desktop.id == desktop_id))  # its volume row stays, naming no desktop
    report = reconcile(min_age_seconds=0)
    assert os.path.exists(disk) and disk in report.kept, report
    assert disk not in report.removed_files and report.kept_for_silent_hosts == []
    assert guest(real_node, desktop_id, "write /home/user/after.txt still writing").startswith("ok")
    with db.session_scope() as s:  # the row comes back, for the API to delete it
        s.execute(insert(Desktop).values(**row))
        s.execute(update(Volume).where(Volume.id == row["volume_id"]).values(desktop_id=desktop_id))
        assert s.scalar(select(Desktop.volume_id).where(Desktop.id == desktop_id)) == row["volume_id"]

    # ---- delete: refused while it runs, then forced: domain and disk gone --------------------------------------------
    refused = client.delete(f"{API}/desktops/{desktop_id}")
    assert refused.status_code == 409 and "force=true" in refused.json()["detail"], refused.text
    removal = client.delete(f"{API}/desktops/{desktop_id}", params={"force": "true"})
    assert removal.status_code == 202, removal.text
    assert job_ended(client, removal.json()["id"], 300)["state"] == "succeeded"
    assert client.get(f"{API}/desktops/{desktop_id}").status_code == 404
    assert not os.path.exists(disk)
    assert not _defined(real_node, desktop_id)
    with db.session_scope() as s:
        assert s.scalar(select(Volume.id).where(Volume.path == disk)) is None
