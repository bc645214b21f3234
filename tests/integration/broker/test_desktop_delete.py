"""DELETE /desktops/{id} never removes only the row of a desktop that has a domain or a disk (the domain would keep
running while the image reconcile, finding its disk unreferenced, deleted it): it is a 409 that names the
deprovision job, which undefines the domain and deletes the disk. A desktop that is only a row is deleted."""
from __future__ import annotations

import os
import time

from manager import db
from manager.models import Desktop, Volume
from manager.provisioning import nodes
from tests.integration.broker.conftest import API


def test_a_desktop_with_a_domain_and_a_disk_is_removed_by_its_job_not_by_a_row_delete(world, client):
    world.hosts(1)
    template_id, _ = world.template()
    made = client.post(f"{API}/desktops/provision", json={"name": f"{world.prefix}-del", "template_id": template_id})
    assert made.status_code == 201, made.text
    desktop_id = made.json()["id"]
    with db.session_scope() as s:
        desktop = s.get(Desktop, desktop_id)
        disk = s.get(Volume, desktop.volume_id).path
        target = nodes.target_of_desktop(s, desktop)
    assert os.path.exists(disk) and nodes.domain(target, desktop_id)

    refused = client.delete(f"{API}/desktops/{desktop_id}")
    assert refused.status_code == 409, refused.text
    assert f"/api/v1/desktops/{desktop_id}/deprovision" in refused.json()["detail"]
    assert client.get(f"{API}/desktops/{desktop_id}").status_code == 200 and os.path.exists(disk)

    job = client.post(f"{API}/desktops/{desktop_id}/deprovision")
    assert job.status_code == 202, job.text
    deadline = time.monotonic() + 120
    while client.get(f"{API}/jobs/{job.json()['id']}").json()["state"] in ("pending", "running"):
        assert time.monotonic() < deadline
        time.sleep(0.2)
    assert client.get(f"{API}/desktops/{desktop_id}").status_code == 404
    assert not os.path.exists(disk)
    assert desktop_id not in [d["uuid"] for d in nodes.client(target).list_domains()]

    bare = client.post(f"{API}/desktops", json={"name": f"{world.prefix}-row"})
    assert bare.status_code == 201, bare.text
    assert client.delete(f"{API}/desktops/{bare.json()['id']}").status_code == 204
