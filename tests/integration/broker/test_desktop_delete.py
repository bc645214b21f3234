"""DELETE /desktops/{id} removes a desktop everywhere, as the job desktops.deprovision: a running desktop is refused
(409, as oVirt refuses to remove a VM that is not down) unless ?force=true powers it off first; the domain is
undefined and the overlay deleted before the rows go, and the desktop stays (task_state deleting) until its host has
confirmed: a host that does not answer fails the job and keeps the row, and asking again sends a new job.
Test-driver hypervisors behind real node agent processes, real qcow2 overlays."""
from __future__ import annotations

import os

from core.enums import PowerState, TaskState
from manager import db
from manager.models import Desktop, Host, Volume
from manager.provisioning import nodes
from tests.integration.broker.conftest import API, job_ended


def _created(client, world, name: str, template_id: str) -> tuple[str, str, nodes.NodeTarget]:
    made = client.post(f"{API}/desktops", json={"name": f"{world.prefix}-{name}", "template_id": template_id})
    assert made.status_code == 201, made.text
    assert job_ended(client, made.json()["job_id"])["state"] == "succeeded"
    desktop_id = made.json()["id"]
    with db.session_scope() as s:
        desktop = s.get(Desktop, desktop_id)
        return desktop_id, s.get(Volume, desktop.volume_id).path, nodes.target_of_desktop(s, desktop)


def _defined(target, desktop_id: str) -> bool:
    return desktop_id in [d["uuid"] for d in nodes.client(target).list_domains()]


def test_delete_undefines_the_domain_and_removes_the_disk_then_the_row(world, client):
    world.hosts(1)
    template_id, _ = world.template()
    desktop_id, disk, target = _created(client, world, "del", template_id)
    assert os.path.exists(disk) and _defined(target, desktop_id)
    assert client.post(f"{API}/desktops/{desktop_id}/start").status_code == 200

    refused = client.delete(f"{API}/desktops/{desktop_id}")
    assert refused.status_code == 409, refused.text
    assert "force=true" in refused.json()["detail"] and "up" in refused.json()["detail"]
    assert client.get(f"{API}/desktops/{desktop_id}").json()["task_state"] is None and os.path.exists(disk)

    job = client.delete(f"{API}/desktops/{desktop_id}", params={"force": "true"})
    assert job.status_code == 202, job.text
    assert job.json()["kind"] == "desktops.deprovision" and job.json()["target_id"] == desktop_id
    assert job_ended(client, job.json()["id"])["state"] == "succeeded"
    assert client.get(f"{API}/desktops/{desktop_id}").status_code == 404
    assert not os.path.exists(disk)
    assert not _defined(target, desktop_id)
    assert client.delete(f"{API}/desktops/{desktop_id}").status_code == 404


def test_a_desktop_stays_deleting_until_its_host_confirms(world, client):
    world.hosts(1)
    template_id, _ = world.template()
    desktop_id, disk, target = _created(client, world, "keep", template_id)
    with db.session_scope() as s:  # its host stops answering (an agent URL nothing listens on)
        host = s.get(Host, s.get(Desktop, desktop_id).host_id)
        host.agent_url, real_url = "http://127.0.0.1:9", host.agent_url

    failed = client.delete(f"{API}/desktops/{desktop_id}")
    assert failed.status_code == 202, failed.text
    job = job_ended(client, failed.json()["id"])
    assert job["state"] == "failed" and job["error"], job
    kept = client.get(f"{API}/desktops/{desktop_id}").json()
    assert kept["task_state"] == TaskState.DELETING.value and os.path.exists(disk) and _defined(target, desktop_id)

    with db.session_scope() as s:
        s.get(Host, s.get(Desktop, desktop_id).host_id).agent_url = real_url
    again = client.delete(f"{API}/desktops/{desktop_id}")  # a new job finishes it
    assert again.status_code == 202 and again.json()["id"] != failed.json()["id"], again.text
    assert job_ended(client, again.json()["id"])["state"] == "succeeded"
    assert client.get(f"{API}/desktops/{desktop_id}").status_code == 404
    assert not os.path.exists(disk) and not _defined(target, desktop_id)


def test_an_assigned_or_record_only_desktop(world, client):
    world.hosts(1)
    template_id, _ = world.template()
    user_id, _token = world.user("dora")
    desktop_id, disk, _target = _created(client, world, "own", template_id)
    with db.session_scope() as s:
        s.get(Desktop, desktop_id).assigned_user_id = user_id
    refused = client.delete(f"{API}/desktops/{desktop_id}")
    assert refused.status_code == 409 and "unassign" in refused.json()["detail"], refused.text
    assert os.path.exists(disk)

    with db.session_scope() as s:  # a record without a host or a disk (made before desktops were provisioned)
        bare = Desktop(name=f"{world.prefix}-row", power_state=PowerState.DOWN)
        s.add(bare)
        s.flush()
        bare_id = bare.id
    job = client.delete(f"{API}/desktops/{bare_id}")
    assert job.status_code == 202, job.text
    assert job_ended(client, job.json()["id"])["state"] == "succeeded"
    assert client.get(f"{API}/desktops/{bare_id}").status_code == 404
