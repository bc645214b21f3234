"""PATCH of a placed desktop's CPUs, memory or monitors reaches its domain: the job desktops.redefine defines it again
on its host through its node agent and gives a running guest what libvirt can change live; the response says per
field what happened (test-driver hypervisor, real node agent; the real guest's view is in test_desktop_life.py). A
change of anything else sends no job."""
from __future__ import annotations

from sqlalchemy import select

from manager import db
from manager.models import Job
from tests.integration.broker.conftest import API


def _redefine_jobs(desktop_id: str) -> list[Job]:
    with db.session_scope() as s:
        jobs = list(s.scalars(select(Job).where(Job.kind == "desktops.redefine", Job.target_id == desktop_id)))
        s.expunge_all()
        return jobs


def test_new_hardware_is_applied_live_where_libvirt_can_and_the_response_says_so(world, client):
    world.hosts(1)
    template_id, _ = world.template()
    made = client.post(f"{API}/desktops/provision", json={"name": f"{world.prefix}-hw", "template_id": template_id,
                                                          "cpus": 1, "memory_mib": 256})
    assert made.status_code == 201, made.text
    desktop_id = made.json()["id"]

    stopped = client.patch(f"{API}/desktops/{desktop_id}", json={"cpus": 2, "memory_mib": 512})
    assert stopped.status_code == 200, stopped.text
    assert stopped.json()["applied"] == {"cpus": "next_boot", "memory_mib": "next_boot"}
    assert stopped.json()["cpus"] == 2 and stopped.json()["memory_mib"] == 512

    assert client.post(f"{API}/desktops/{desktop_id}/start").status_code == 200
    plain = client.patch(f"{API}/desktops/{desktop_id}", json={"description": "no hardware"})
    assert plain.status_code == 200 and plain.json()["job_id"] is None and plain.json()["applied"] == {}
    assert len(_redefine_jobs(desktop_id)) == 1

    # running: less memory fits under the maximum it booted with (the balloon); more vCPUs than it booted with
    # (its maximum) and new monitors wait for the next boot
    running = client.patch(f"{API}/desktops/{desktop_id}", json={"memory_mib": 384, "cpus": 4, "monitors": 2})
    assert running.status_code == 200, running.text
    assert running.json()["applied"] == {"memory_mib": "live", "cpus": "next_boot", "monitors": "next_boot"}
    job = client.get(f"{API}/jobs/{running.json()['job_id']}").json()
    assert job["state"] == "succeeded" and job["result"]["applied"] == running.json()["applied"], job

    too_much = client.patch(f"{API}/desktops/{desktop_id}", json={"memory_mib": 1024})
    assert too_much.json()["applied"] == {"memory_mib": "next_boot"}, too_much.text
    assert client.post(f"{API}/desktops/{desktop_id}/poweroff").status_code == 200
    assert client.post(f"{API}/desktops/{desktop_id}/start").status_code == 200  # the new definition boots


def test_what_the_domain_would_not_follow_is_refused(world, client):
    host_ids = world.hosts(2)
    template_id, _ = world.template()
    made = client.post(f"{API}/desktops/provision", json={"name": f"{world.prefix}-fixed", "template_id": template_id,
                                                          "host_id": host_ids[0]})
    desktop_id = made.json()["id"]
    for field, value, words in (("host_id", host_ids[1], "migrate"), ("disk_size_gib", 5, "not resized"),
                                ("template_version_id", "00000000-0000-0000-0000-000000000000", "re-image")):
        refused = client.patch(f"{API}/desktops/{desktop_id}", json={field: value})
        assert refused.status_code == 409 and words in refused.json()["detail"], refused.text
    same = client.patch(f"{API}/desktops/{desktop_id}", json={"host_id": host_ids[0], "comment": "kept"})
    assert same.status_code == 200 and same.json()["comment"] == "kept", same.text
    assert client.get(f"{API}/desktops/{desktop_id}").json()["host_id"] == host_ids[0]
