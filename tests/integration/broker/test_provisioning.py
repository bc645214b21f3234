"""Provisioning on real parts: placement on hosts with room, a qcow2 overlay of the template per desktop, the
domain defined on the chosen node; pools grown as a cancelable job with progress; shrinking never touches
assigned desktops; power actions are compare-and-swap (a second start while one runs is refused)."""
from __future__ import annotations

from pathlib import Path

import httpx
from sqlalchemy import func, select

from tests.integration.broker.conftest import API, bearer, wait_for_jobs


def domains_on(agent) -> dict[str, str]:
    r = httpx.get(f"{agent.node.url}/v1/domains", headers=bearer(agent.node.token))
    return {d["uuid"]: d["state"] for d in r.json()["domains"]}


def test_a_desktop_is_an_overlay_on_the_template_defined_on_a_host_that_fits(world, client, node_agents):
    from image_manager import chain

    small, big = world.hosts(2)
    from manager import db
    from manager.models import Host
    with db.session_scope() as s:  # spread puts it on the host with the most free memory
        s.get(Host, small).free_memory_mib = 1024
        s.get(Host, big).free_memory_mib = 8192
    template_id, version_id = world.template()
    made = client.post(f"{API}/desktops/provision", json={"name": f"{world.prefix}-d1", "template_id": template_id,
                                                          "memory_mib": 512, "cpus": 2})
    assert made.status_code == 201, made.text
    desktop = made.json()
    assert desktop["host_id"] == big and desktop["template_version_id"] == version_id
    assert desktop["task_state"] is None and desktop["cpus"] == 2
    with db.session_scope() as s:
        from manager.models import Volume
        disk = s.get(Volume, desktop["volume_id"]).path
    assert chain.backing_of(disk) == Path(world.template_image)  # a thin overlay, template untouched
    assert desktop["id"] in domains_on(node_agents[1])
    # pack puts the next one on the fullest host that still fits
    packed = client.post(f"{API}/desktops/provision", json={"name": f"{world.prefix}-d2", "template_id": template_id,
                                                            "memory_mib": 512, "placement": "pack"}).json()
    assert packed["host_id"] == small
    too_big = client.post(f"{API}/desktops/provision", json={"name": f"{world.prefix}-d3", "template_id": template_id,
                                                             "memory_mib": 65536})
    assert too_big.status_code == 409 and too_big.json()["error"] == "no_host"
    assert "65536 MiB" in too_big.json()["detail"]
    bad = client.post(f"{API}/desktops/provision", json={"name": f"{world.prefix}-d4", "template_id": template_id,
                                                         "placement": "random"})
    assert bad.status_code == 422 and "spread" in bad.text


def test_pool_grows_as_a_job_with_progress_and_shrinks_only_free_desktops(world, client, anon_client):
    from manager import db
    from manager.models import Desktop

    world.hosts(3)
    template_id, _ = world.template()
    pool = client.post(f"{API}/pools", json={"name": f"{world.prefix}-eng", "template_id": template_id, "size": 120,
                                             "name_pattern": f"{world.prefix}-###", "pool_type": "automatic"}).json()
    job = client.post(f"{API}/pools/{pool['id']}/provision")
    assert job.status_code == 202, job.text
    wait_for_jobs(120)
    done = client.get(f"{API}/jobs/{job.json()['id']}").json()
    assert done["state"] == "succeeded" and done["done"] == 120 and done["progress"] == 100.0, done
    with db.session_scope() as s:
        names = sorted(s.scalars(select(Desktop.name).where(Desktop.pool_id == pool["id"])))
        hosts = dict(s.execute(select(Desktop.host_id, func.count()).where(Desktop.pool_id == pool["id"])
                               .group_by(Desktop.host_id)).all())
    assert names == [f"{world.prefix}-{i:03d}" for i in range(1, 121)]
    assert sorted(hosts.values()) == [40, 40, 40]  # spread over the three hosts

    user, token = world.user("paul")
    world.entitle(pool_id=pool["id"], user_id=user)
    with db.session_scope() as s:  # the user holds the highest-numbered desktop, the first a shrink would take
        from broker.assignment import assign_to_user
        last = s.scalar(select(Desktop.id).where(Desktop.name == f"{world.prefix}-120"))
        assert assign_to_user(s, last, user)
    with db.session_scope() as s:
        before = set(s.scalars(select(Desktop.id).where(Desktop.pool_id == pool["id"])))
    shrink = client.post(f"{API}/pools/{pool['id']}/resize", json={"size": 10})
    assert shrink.status_code == 202
    wait_for_jobs(120)
    result = client.get(f"{API}/jobs/{shrink.json()['id']}").json()
    assert result["state"] == "succeeded", result
    with db.session_scope() as s:
        left = sorted(s.scalars(select(Desktop.name).where(Desktop.pool_id == pool["id"])))
    assert len(left) == 10 and f"{world.prefix}-120" in left  # the assigned desktop survived
    assert left[:9] == [f"{world.prefix}-{i:03d}" for i in range(1, 10)]
    with db.session_scope() as s:
        kept = set(s.scalars(select(Desktop.id).where(Desktop.pool_id == pool["id"])))
    desktops_root = Path(world.template_image).parents[2] / "desktops"
    assert all((desktops_root / d).is_dir() for d in kept)
    assert not any((desktops_root / d).exists() for d in before - kept)  # overlays of removed desktops are gone

    # cancel: a big grow stops between batches, what was made stays consistent
    grow = client.post(f"{API}/pools/{pool['id']}/resize", json={"size": 2000})
    client.post(f"{API}/jobs/{grow.json()['id']}/cancel")
    wait_for_jobs(300)
    state = client.get(f"{API}/jobs/{grow.json()['id']}").json()
    with db.session_scope() as s:
        count = s.scalar(select(func.count()).select_from(Desktop).where(Desktop.pool_id == pool["id"]))
        provisioning = s.scalar(select(func.count()).select_from(Desktop).where(Desktop.task_state.is_not(None)))
    assert state["state"] == "cancelled", state
    assert 10 <= count < 2000 and provisioning == 0


def test_power_actions_are_compare_and_swap(world, client):
    from core.enums import TaskState
    from manager import db
    from manager.provisioning.power import claim

    world.hosts(1)
    template_id, _ = world.template()
    desktop = client.post(f"{API}/desktops/provision", json={"name": f"{world.prefix}-p1",
                                                             "template_id": template_id}).json()
    with db.session_scope() as s:  # a start is in progress (claimed, not settled yet)
        claim(s, desktop["id"], TaskState.STARTING, "start")
    second = client.post(f"{API}/desktops/{desktop['id']}/start")
    assert second.status_code == 409 and second.json()["error"] == "desktop_busy"
    assert "starting" in second.json()["detail"]
    from manager.models import Desktop
    with db.session_scope() as s:
        s.get(Desktop, desktop["id"]).task_state = None
    up = client.post(f"{API}/desktops/{desktop['id']}/start")
    assert up.status_code == 200 and up.json()["power_state"] == "up" and up.json()["task_state"] is None
    rebooted = client.post(f"{API}/desktops/{desktop['id']}/reboot")
    assert rebooted.status_code == 200 and rebooted.json()["power_state"] == "up", rebooted.text
    off = client.post(f"{API}/desktops/{desktop['id']}/poweroff")
    assert off.status_code == 200 and off.json()["power_state"] == "down" and off.json()["task_state"] is None
    missing = client.post(f"{API}/desktops/00000000-0000-0000-0000-000000000000/start")
    assert missing.status_code == 404
