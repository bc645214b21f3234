"""Bulk actions on real parts (Postgres, node agents on libvirt test-driver hosts, qcow2 overlays): one job applies
an action to many desktops through the single actions' functions, reports done/total, records each desktop that
could not be done by name without failing the job; the permission is the single action's; the preview says what
a confirmation must say."""
from __future__ import annotations

from sqlalchemy import func, select

from tests.integration.broker.conftest import API, bearer, wait_for_jobs


def pool_desktops(pool_id: str) -> list[tuple[str, str]]:
    """(id, name) of the pool's desktops, by name."""
    from manager import db
    from manager.models import Desktop

    with db.session_scope() as s:
        return [tuple(r) for r in s.execute(select(Desktop.id, Desktop.name).where(Desktop.pool_id == pool_id)
                                            .order_by(Desktop.name))]


def run_bulk(client, action: str, ids: list[str], headers: dict | None = None) -> dict:
    """Ask for the bulk action, wait for its job, return the finished job."""
    r = client.post(f"{API}/desktops/bulk", json={"action": action, "desktop_ids": ids}, headers=headers or {})
    assert r.status_code == 202, r.text
    job = r.json()
    assert job["kind"] == "desktops.bulk" and job["total"] == len(set(ids)), job
    wait_for_jobs(120)
    return client.get(f"{API}/jobs/{job['id']}", headers=headers or {}).json()


def count_events(code: str, job_id: str | None = None) -> int:
    from manager import db
    from manager.models import Event

    with db.session_scope() as s:
        stmt = select(func.count()).select_from(Event).where(Event.code == code)
        if job_id:
            stmt = stmt.where(Event.job_id == job_id)
        return s.scalar(stmt)


def power_states(ids: list[str]) -> dict[str, str]:
    from manager import db
    from manager.models import Desktop

    with db.session_scope() as s:
        return {i: p.value for i, p in s.execute(select(Desktop.id, Desktop.power_state).where(Desktop.id.in_(ids)))}


def test_reboot_twenty_running_desktops_as_one_job(world, client):
    world.hosts(3)
    ids = [i for i, _name in pool_desktops(world.pool(20))]
    started = run_bulk(client, "start", ids)
    assert started["state"] == "succeeded" and started["result"]["failed"] == {}, started
    assert set(power_states(ids).values()) == {"up"}

    # the same ids twice are one desktop each
    rebooted = run_bulk(client, "reboot", ids + ids[:5])
    assert rebooted["state"] == "succeeded", rebooted
    assert rebooted["done"] == rebooted["total"] == 20 and rebooted["progress"] == 100.0
    assert rebooted["result"] == {"action": "reboot", "total": 20, "succeeded": 20, "failed": {}}
    assert count_events("desktop.rebooted") == 20  # each desktop through the single action's path
    assert count_events("desktops.bulk_done", rebooted["id"]) == 1


def test_a_busy_desktop_fails_alone(world, client):
    from core.enums import TaskState
    from manager import db
    from manager.provisioning.power import claim

    world.hosts(1)
    desktops = pool_desktops(world.pool(5))
    busy_id, busy_name = desktops[2]
    with db.session_scope() as s:  # another action holds it (a start in progress)
        claim(s, busy_id, TaskState.STARTING, "start")
    job = run_bulk(client, "start", [i for i, _n in desktops])
    assert job["state"] == "succeeded" and job["done"] == job["total"] == 5, job
    assert job["result"]["succeeded"] == 4
    assert job["result"]["failed"] == {busy_name: f"desktop {busy_name} is starting; cannot start"}
    states = power_states([i for i, _n in desktops])
    assert states.pop(busy_id) == "down" and set(states.values()) == {"up"}


def test_reset_and_removal_skip_assigned_desktops_and_do_the_rest(world, client):
    from broker.assignment import assign_to_user
    from manager import db
    from manager.models import Desktop

    world.hosts(2)
    desktops = pool_desktops(world.pool(4, pool_type="manual"))
    user, _token = world.user("ivy")
    with db.session_scope() as s:
        assert assign_to_user(s, desktops[0][0], user)
    ids = [i for i, _n in desktops]
    reset = run_bulk(client, "reset", ids)
    assert reset["state"] == "succeeded" and reset["result"]["succeeded"] == 3, reset
    assert reset["result"]["failed"] == {desktops[0][1]: f"desktop {desktops[0][1]} is assigned to a user; "
                                                         "unassign it first"}
    assert count_events("desktop.reset") == 3
    removed = run_bulk(client, "deprovision", ids[1:])
    assert removed["state"] == "succeeded" and removed["result"]["failed"] == {}, removed
    with db.session_scope() as s:
        assert list(s.scalars(select(Desktop.id).where(Desktop.id.in_(ids)))) == [ids[0]]


def test_helpdesk_may_bulk_reboot_but_not_bulk_deprovision(world, client, anon_client):
    world.hosts(1)
    ids = [i for i, _n in pool_desktops(world.pool(2))]
    _helper, token = world.user("helper", roles=("HelpDesk",))
    _plain, plain_token = world.user("plain")
    for action in ("reset", "deprovision"):
        refused = anon_client.post(f"{API}/desktops/bulk", json={"action": action, "desktop_ids": ids},
                                   headers=bearer(token))
        assert refused.status_code == 403 and refused.json()["error"] == "forbidden", refused.text
    allowed = anon_client.post(f"{API}/desktops/bulk", json={"action": "start", "desktop_ids": ids},
                               headers=bearer(token))
    assert allowed.status_code == 202, allowed.text
    wait_for_jobs(60)
    job = anon_client.get(f"{API}/jobs/{allowed.json()['id']}", headers=bearer(token)).json()
    assert job["state"] == "succeeded" and job["created_by"] == "helper@local" and job["done"] == 2, job
    # a user without any desktop permission may not even preview
    assert anon_client.post(f"{API}/desktops/bulk/preview", json={"action": "start", "desktop_ids": ids},
                            headers=bearer(plain_token)).status_code == 403
    assert anon_client.post(f"{API}/desktops/bulk", json={"action": "start", "desktop_ids": ids},
                            headers=bearer(plain_token)).status_code == 403


def test_preview_counts_desktops_in_use_and_busy(world, client, anon_client):
    from broker.assignment import assign_to_user
    from core.enums import TaskState
    from manager import db
    from manager.provisioning.power import claim

    world.hosts(1)
    pool_id = world.pool(6, os_type="windows_11", protocols="rdp", ip_prefix="10.9", pool_type="manual")
    desktops = pool_desktops(pool_id)
    user, token = world.user("una")
    other, _t = world.user("otto")
    world.entitle(pool_id=pool_id, user_id=user)
    got = anon_client.post(f"{API}/broker/connect", json={"pool_id": pool_id, "client": {"protocols": ["rdp"]}},
                           headers=bearer(token))
    assert got.status_code == 200, got.text
    logged_in = got.json()["desktop_name"]
    free = [(i, n) for i, n in desktops if n != logged_in]
    with db.session_scope() as s:
        assert assign_to_user(s, free[0][0], other)  # assigned, nobody logged in
        claim(s, free[1][0], TaskState.REBOOTING, "reboot")  # busy
    ids = [i for i, _n in desktops]
    r = client.post(f"{API}/desktops/bulk/preview", json={"action": "reset", "desktop_ids": ids + ids[:2]})
    assert r.status_code == 200, r.text
    assert r.json() == {"action": "reset", "count": 6, "names": [n for _i, n in desktops],
                        "in_use": 2, "in_use_names": sorted([logged_in, free[0][1]]), "busy": 1,
                        "logged_in": 1, "without_snapshot": 0}


def test_bad_bulk_requests_are_clear_4xx(world, client):
    world.hosts(1)
    ids = [i for i, _n in pool_desktops(world.pool(1))]
    unknown = ["no-such-desktop", "00000000-0000-0000-0000-000000000000"]
    for path in ("bulk", "bulk/preview"):
        r = client.post(f"{API}/desktops/{path}", json={"action": "reboot", "desktop_ids": ids + unknown})
        assert r.status_code == 422 and r.json()["error"] == "invalid", r.text
        assert all(u in r.json()["detail"] for u in unknown) and ids[0] not in r.json()["detail"]
    for body in ({"action": "reboot", "desktop_ids": []}, {"action": "explode", "desktop_ids": ids},
                 {"action": "reboot", "desktop_ids": [f"d{i}" for i in range(1001)]}, {"action": "reboot"}):
        r = client.post(f"{API}/desktops/bulk", json=body)
        assert r.status_code == 422 and r.json()["error"] == "invalid" and r.json()["detail"], r.text
        assert r.json()["detail"].count("desktop_ids") <= 1 and r.json()["detail"].count("action") <= 1
    from manager import db
    from manager.models import Job
    with db.session_scope() as s:
        assert s.scalar(select(func.count()).select_from(Job)) == 0  # nothing was enqueued


def test_a_cancelled_bulk_job_touches_no_more_desktops(world):
    import pytest

    from core.enums import JobState
    from manager import db
    from manager.jobs import JobCancelled, JobContext
    from manager.models import Job
    from manager.provisioning import bulk

    world.hosts(1)
    ids = [i for i, _n in pool_desktops(world.pool(3))]
    with db.session_scope() as s:  # a bulk start whose cancel was asked for while it runs
        job = Job(kind=bulk.JOB_KIND, params={}, state=JobState.RUNNING, cancel_requested=True, total=3)
        s.add(job)
        s.flush()
        job_id = job.id
    with pytest.raises(JobCancelled):
        bulk.run_bulk(JobContext(job_id), "start", ids, actor="tests")
    assert set(power_states(ids).values()) == {"down"} and count_events("desktop.started") == 0
