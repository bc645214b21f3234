"""PATCH of a placed desktop's CPUs or memory reaches its domain: the job desktops.redefine defines it again on its
host through its node agent (test-driver hypervisor, real node agent; that driver reports no vCPU or memory figures,
so the new hardware at the next boot is not observed here). A change of anything else sends no job."""
from __future__ import annotations

import time

from sqlalchemy import select

from core.enums import JobState
from manager import db
from manager.models import Job
from tests.integration.broker.conftest import API


def _redefine_jobs(desktop_id: str) -> list[tuple[JobState, dict]]:
    with db.session_scope() as s:
        return [(j.state, j.result) for j in s.scalars(select(Job).where(Job.kind == "desktops.redefine",
                                                                        Job.target_id == desktop_id))]


def test_new_cpus_and_memory_are_sent_to_the_domain_by_a_redefine_job(world, client):
    world.hosts(1)
    template_id, _ = world.template()
    made = client.post(f"{API}/desktops/provision", json={"name": f"{world.prefix}-hw", "template_id": template_id,
                                                          "cpus": 1, "memory_mib": 256})
    assert made.status_code == 201, made.text
    desktop_id = made.json()["id"]
    assert client.post(f"{API}/desktops/{desktop_id}/start").status_code == 200
    assert client.patch(f"{API}/desktops/{desktop_id}", json={"description": "no hardware"}).status_code == 200
    assert _redefine_jobs(desktop_id) == []

    changed = client.patch(f"{API}/desktops/{desktop_id}", json={"cpus": 2, "memory_mib": 512})
    assert changed.status_code == 200, changed.text
    deadline = time.monotonic() + 60
    while True:
        jobs = _redefine_jobs(desktop_id)
        state, result = jobs[0] if jobs else (None, None)
        if state in (JobState.SUCCEEDED, JobState.FAILED):
            break
        assert time.monotonic() < deadline, "the redefine job did not run"
        time.sleep(0.2)
    assert state == JobState.SUCCEEDED and result == {"redefined": True, "effective": "next boot"}, result
    assert len(jobs) == 1
    assert client.post(f"{API}/desktops/{desktop_id}/poweroff").status_code == 200
    assert client.post(f"{API}/desktops/{desktop_id}/start").status_code == 200  # the new definition boots
