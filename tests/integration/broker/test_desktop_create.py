"""POST /desktops creates the desktop and, as the job desktops.provision, places it on a host, makes its qcow2 overlay
of the template and defines its domain (the path pools take). Bad input is a 4xx naming the problem and leaves
nothing behind; a failure the job meets removes the desktop again and fails the job with the reason. Test-driver
hypervisors behind real node agent processes, real qcow2 overlays."""
from __future__ import annotations

import os

from sqlalchemy import func, select

from image_manager import qcow2
from manager import db
from manager.models import Desktop, Volume
from manager.provisioning import nodes
from tests.integration.broker.conftest import API, job_ended


def _desktops() -> int:
    with db.session_scope() as s:
        return s.scalar(select(func.count()).select_from(Desktop))


def test_create_places_the_desktop_and_its_job_makes_the_overlay_and_the_domain(world, client):
    host_ids = world.hosts(2)
    template_id, version_id = world.template()
    made = client.post(f"{API}/desktops", json={"name": f"{world.prefix}-new", "template_id": template_id,
                                                "memory_mib": 512, "host_id": host_ids[1]})
    assert made.status_code == 201, made.text
    body = made.json()
    assert body["host_id"] == host_ids[1] and body["template_version_id"] == version_id and body["job_id"]
    job = job_ended(client, body["job_id"])
    assert job["kind"] == "desktops.provision" and job["state"] == "succeeded", job
    desktop = client.get(f"{API}/desktops/{body['id']}").json()
    assert desktop["task_state"] is None and desktop["power_state"] == "down"
    with db.session_scope() as s:
        row = s.get(Desktop, body["id"])
        disk = s.get(Volume, row.volume_id).path
        target = nodes.target_of_desktop(s, row)
    assert os.path.exists(disk) and qcow2.backing_chain(disk)[-1].path == world.template_image
    assert nodes.domain(target, body["id"])["name"] == f"{world.prefix}-new"
    assert client.post(f"{API}/desktops/{body['id']}/start").json()["power_state"] == "up"


def test_bad_input_is_a_4xx_naming_the_problem_and_leaves_nothing(world, client):
    world.hosts(1, memory_mib=1024)
    template_id, _ = world.template()
    before = _desktops()
    cases = [
        ({"name": f"{world.prefix}-a"}, 422, "template_id"),
        ({"name": f"{world.prefix}-a", "template_id": "00000000-0000-0000-0000-000000000000"}, 422, "template"),
        ({"name": f"{world.prefix}-a", "template_id": template_id, "host_id": "00000000-0000-0000-0000-000000000000"},
         422, "host_id"),
        ({"name": f"{world.prefix}-a", "template_id": template_id, "memory_mib": 4096}, 409, "free memory"),
        ({"name": f"{world.prefix}-a", "template_id": template_id, "user_ids": ["00000000-0000-0000-0000-000000000001"]},
         422, "user_ids"),
        ({"name": "", "template_id": template_id}, 422, "name"),
    ]
    for payload, status, word in cases:
        response = client.post(f"{API}/desktops", json=payload)
        assert response.status_code == status, (payload, response.text)
        assert word in response.text, (payload, response.text)
    assert _desktops() == before

    made = client.post(f"{API}/desktops", json={"name": f"{world.prefix}-a", "template_id": template_id})
    assert made.status_code == 201, made.text
    again = client.post(f"{API}/desktops", json={"name": f"{world.prefix}-a", "template_id": template_id})
    assert again.status_code == 409 and again.json()["error"] == "duplicate", again.text
    assert f"{world.prefix}-a" in again.json()["detail"]
    job_ended(client, made.json()["job_id"])


def test_a_failure_in_the_job_removes_the_desktop_and_says_why(world, client, tmp_path):
    world.hosts(1)
    template_id, version_id = world.template()
    with db.session_scope() as s:  # the version's image file is gone (no overlay can be made on it)
        from manager.models import TemplateVersion

        missing = Volume(path=str(tmp_path / "templates" / "gone" / "1.qcow2"), role="template", virtual_size=1 << 26)
        s.add(missing)
        s.flush()
        s.get(TemplateVersion, version_id).volume_id = missing.id
    made = client.post(f"{API}/desktops", json={"name": f"{world.prefix}-bad", "template_id": template_id})
    assert made.status_code == 201, made.text
    job = job_ended(client, made.json()["job_id"])
    assert job["state"] == "failed" and f"{world.prefix}-bad" in job["error"] and "disk" in job["error"], job
    assert client.get(f"{API}/desktops/{made.json()['id']}").status_code == 404
