"""Bulk re-image, snapshot, revert, assign and unassign on real parts (Postgres, node agents on libvirt test-driver
hosts, qcow2 overlays written by image_manager): one job applies the action to each desktop through the single
action's service function (a disk action's own job is run to its end inside the bulk job), a desktop the action
does not apply to is a failure named in the result while the others are done; the permissions are the single
actions'; bad bodies are clear 422s; the preview counts what the confirmation names."""
from __future__ import annotations

from sqlalchemy import func, select

from tests.integration.broker.conftest import API, bearer, wait_for_jobs
from tests.integration.broker.test_bulk_actions import count_events, pool_desktops


def ask_bulk(client, action: str, ids: list[str], headers: dict | None = None, **options) -> dict:
    """Ask for the bulk action with its options, wait for every job, return the finished bulk job."""
    r = client.post(f"{API}/desktops/bulk", json={"action": action, "desktop_ids": ids, **options},
                    headers=headers or {})
    assert r.status_code == 202, r.text
    assert r.json()["kind"] == "desktops.bulk" and r.json()["total"] == len(set(ids)), r.json()
    wait_for_jobs(120)
    return client.get(f"{API}/jobs/{r.json()['id']}", headers=headers or {}).json()


def snapshots(ids: list[str]) -> dict[str, list[str]]:
    """Each desktop's snapshot names, oldest first."""
    from manager import db
    from manager.models import Snapshot

    out: dict[str, list[str]] = {i: [] for i in ids}
    with db.session_scope() as s:
        for desktop_id, name in s.execute(select(Snapshot.desktop_id, Snapshot.name).where(
                Snapshot.desktop_id.in_(ids)).order_by(Snapshot.created_at, Snapshot.id)):
            out[desktop_id].append(name)
    return out


def jobs_of_kind(kind: str, state: str = "succeeded") -> int:
    from manager import db
    from manager.models import Job

    with db.session_scope() as s:
        return s.scalar(select(func.count()).select_from(Job).where(Job.kind == kind, Job.state == state))


def set_desktop(desktop_id: str, **values) -> None:
    from manager import db
    from manager.models import Desktop

    with db.session_scope() as s:
        desktop = s.get(Desktop, desktop_id)
        for key, value in values.items():
            setattr(desktop, key, value)


def test_snapshot_three_desktops_then_revert_them(world, client):
    world.hosts(2)
    desktops = pool_desktops(world.pool(3, pool_type="manual"))
    ids = [i for i, _n in desktops]
    (bare_id, bare_name), = pool_desktops(world.pool(1, pool_type="manual"))

    taken = ask_bulk(client, "snapshot", ids, snapshot_name="before", description="bulk")
    assert taken["state"] == "succeeded", taken
    assert taken["result"] == {"action": "snapshot", "total": 3, "succeeded": 3, "failed": {}}
    assert taken["description"] == "snapshot (before) 3 desktop(s)"
    assert snapshots(ids) == {i: ["before"] for i in ids}
    assert jobs_of_kind("image.snapshot") == 3 and count_events("desktop.snapshot_created") == 3

    again = ask_bulk(client, "snapshot", ids[:1], snapshot_name="before")  # the name is taken
    assert again["result"]["succeeded"] == 0 and list(again["result"]["failed"]) == [desktops[0][1]], again
    assert "before" in again["result"]["failed"][desktops[0][1]]
    assert ask_bulk(client, "snapshot", ids[1:2], snapshot_name="later")["result"]["failed"] == {}

    # the newest snapshot of each; a desktop without one fails alone
    reverted = ask_bulk(client, "revert", ids + [bare_id])
    assert reverted["state"] == "succeeded" and reverted["result"]["succeeded"] == 3, reverted
    assert reverted["result"]["failed"] == {bare_name: f"desktop {bare_name} has no snapshot"}
    assert jobs_of_kind("image.revert") == 3 and count_events("desktop.revert") == 3

    # by name: only the one that has it
    named = ask_bulk(client, "revert", ids, snapshot_name="later")
    assert named["result"]["succeeded"] == 1, named
    assert named["result"]["failed"] == {n: f"desktop {n} has no snapshot named later"
                                         for i, n in desktops if i != ids[1]}
    assert jobs_of_kind("image.revert") == 4


def test_reimage_to_the_latest_version_skips_desktops_in_use(world, client):
    from manager import db
    from manager.models import Desktop, Template, TemplateVersion

    world.hosts(2)
    pool_id = world.pool(3, pool_type="manual")
    desktops = pool_desktops(pool_id)
    ids = [i for i, _n in desktops]
    other_version = world.template()[1]  # a version of another template
    with db.session_scope() as s:  # version 2 of the pool's template (on the same image) becomes the latest
        v1 = s.get(TemplateVersion, s.get(Desktop, ids[0]).template_version_id)
        v2 = TemplateVersion(template_id=v1.template_id, number=2, name="v2", volume_id=v1.volume_id)
        s.add(v2)
        s.flush()
        s.get(Template, v1.template_id).latest_version_id = v2.id
        v1_id, v2_id = v1.id, v2.id
    ask_bulk(client, "snapshot", ids, snapshot_name="mine")
    set_desktop(ids[2], logged_in_user="CORP\\ivy")  # the guest agent reports a user

    preview = client.post(f"{API}/desktops/bulk/preview", json={"action": "reimage", "desktop_ids": ids})
    assert preview.status_code == 200 and preview.json()["logged_in"] == 1, preview.text

    job = ask_bulk(client, "reimage", ids, keep_snapshots=True)
    assert job["state"] == "succeeded" and job["result"]["succeeded"] == 2, job
    assert list(job["result"]["failed"]) == [desktops[2][1]] and "logged-in user" in job["result"]["failed"][
        desktops[2][1]]
    with db.session_scope() as s:
        versions = dict(s.execute(select(Desktop.id, Desktop.template_version_id).where(Desktop.id.in_(ids))).all())
    assert versions == {ids[0]: v2_id, ids[1]: v2_id, ids[2]: v1_id}
    assert snapshots(ids[:2]) == {i: ["mine"] for i in ids[:2]}  # kept
    assert count_events("desktop.reimaged") == 2

    # a version given: back to v1, snapshots dropped; a version of another template is refused per desktop
    back = ask_bulk(client, "reimage", ids[:1], template_version_id=v1_id)
    assert back["result"]["failed"] == {}, back
    assert snapshots(ids[:1]) == {ids[0]: []}
    wrong = ask_bulk(client, "reimage", ids[1:2], template_version_id=other_version)
    assert wrong["result"]["failed"] == {desktops[1][1]: f"desktop {desktops[1][1]} is not built on the template "
                                                         "of version 1"}, wrong


def test_assign_to_one_user_within_the_pool_limit_then_unassign(world, client):
    from broker.assignment import assign_to_user
    from manager import db
    from manager.models import Assignment, Desktop, Pool

    world.hosts(2)
    manual_id = world.pool(3, pool_type="manual")
    with db.session_scope() as s:
        s.get(Pool, manual_id).max_desktops_per_user = 2
    manual = pool_desktops(manual_id)
    (auto_id, auto_name), = pool_desktops(world.pool(1))
    tpl_id, _v = world.template()
    made = client.post(f"{API}/desktops/provision", json={"name": f"{world.prefix}-solo", "template_id": tpl_id})
    assert made.status_code == 201, made.text
    solo_id, solo_name = made.json()["id"], made.json()["name"]
    ivy, _t = world.user("ivy")
    kim, _t = world.user("kim")
    with db.session_scope() as s:  # kim already has a desktop attached to the solo desktop
        s.add(Assignment(desktop_id=solo_id, user_id=kim, kind="dedicated"))

    ids = [i for i, _n in manual] + [auto_id, solo_id]
    job = ask_bulk(client, "assign", ids, user_id=ivy)
    assert job["state"] == "succeeded" and job["result"]["succeeded"] == 3, job["result"]
    failed = job["result"]["failed"]
    assert set(failed) == {manual[2][1], auto_name}, failed  # CONCURRENCY may hand any 2 of the 3 first
    assert "the limit is 2" in failed[manual[2][1]] and "only manual pools" in failed[auto_name]
    with db.session_scope() as s:
        held = set(s.scalars(select(Desktop.id).where(Desktop.assigned_user_id == ivy)))
        attached = set(s.scalars(select(Assignment.user_id).where(Assignment.desktop_id == solo_id)))
    assert len(held) == 2 and held < {i for i, _n in manual} and attached == {ivy, kim}
    free_id = ({i for i, _n in manual} - held).pop()
    assert count_events("broker.assigned") == 2 and count_events("desktop.user_attached") == 1

    preview = client.post(f"{API}/desktops/bulk/preview", json={"action": "unassign", "desktop_ids": ids})
    assert preview.status_code == 200 and preview.json()["in_use"] == 2, preview.text

    back = ask_bulk(client, "unassign", ids)
    assert back["state"] == "succeeded" and back["result"]["succeeded"] == 3, back
    names = dict(manual)
    assert back["result"]["failed"] == {names[free_id]: f"desktop {names[free_id]} is not assigned to anyone",
                                        auto_name: f"desktop {auto_name} is not assigned to anyone"}
    with db.session_scope() as s:
        assert s.scalar(select(func.count()).select_from(Desktop).where(Desktop.assigned_user_id == ivy)) == 0
        assert s.scalar(select(func.count()).select_from(Assignment).where(Assignment.desktop_id == solo_id)) == 0
    assert jobs_of_kind("desktops.reset") == 2  # as the single unassign: back to the template before anyone else
    with db.session_scope() as s:  # and a desktop already taken is a failure, not a second owner
        assert assign_to_user(s, free_id, kim)
    again = ask_bulk(client, "assign", [free_id], user_id=ivy)
    assert again["result"]["failed"] == {names[free_id]: f"desktop {names[free_id]} is already assigned; "
                                                         "unassign it first"}, again


def test_helpdesk_may_do_none_of_these(world, client, anon_client):
    world.hosts(1)
    ids = [i for i, _n in pool_desktops(world.pool(2, pool_type="manual"))]
    _helper, token = world.user("helper", roles=("HelpDesk",))
    admin, admin_token = world.user("deskadmin", roles=("DesktopAdmin",))
    bodies = {"reimage": {}, "snapshot": {"snapshot_name": "s"}, "revert": {}, "assign": {"user_id": admin},
              "unassign": {}}
    for action, options in bodies.items():
        refused = anon_client.post(f"{API}/desktops/bulk", json={"action": action, "desktop_ids": ids, **options},
                                   headers=bearer(token))
        assert refused.status_code == 403 and refused.json()["error"] == "forbidden", (action, refused.text)
        # a HelpDesk user may still see what such an action would touch (desktops:read)
        assert anon_client.post(f"{API}/desktops/bulk/preview", json={"action": action, "desktop_ids": ids,
                                                                      **options},
                                headers=bearer(token)).status_code == 200
    from manager import db
    from manager.models import Job
    with db.session_scope() as s:
        assert s.scalar(select(func.count()).select_from(Job)) == 0
    allowed = anon_client.post(f"{API}/desktops/bulk", json={"action": "snapshot", "desktop_ids": ids,
                                                             "snapshot_name": "ok"}, headers=bearer(admin_token))
    assert allowed.status_code == 202, allowed.text
    wait_for_jobs(60)
    assert snapshots(ids) == {i: ["ok"] for i in ids}


def test_bad_options_are_clear_422s(world, client):
    world.hosts(1)
    ids = [i for i, _n in pool_desktops(world.pool(1))]
    user, _t = world.user("una")
    cases = [({"action": "snapshot"}, "snapshot_name: snapshot needs snapshot_name"),
             ({"action": "assign"}, "user_id: assign needs user_id"),
             ({"action": "assign", "user_id": "no-such-user"}, "user_id: user no-such-user does not exist"),
             ({"action": "reimage", "snapshot_name": "x"}, "snapshot_name: reimage takes no snapshot_name"),
             ({"action": "revert", "user_id": user}, "user_id: revert takes no user_id"),
             ({"action": "reboot", "keep_snapshots": True}, "keep_snapshots: reboot takes no keep_snapshots"),
             ({"action": "reimage", "template_version_id": "nope"},
              "template_version_id: template version nope does not exist"),
             ({"action": "snapshot", "snapshot_name": "a/b"}, "snapshot_name"),
             ({"action": "snapshot", "snapshot_name": ""}, "snapshot_name"),
             ({"action": "snapshot", "snapshot_name": "s", "color": "red"}, "color")]
    for body, says in cases:
        for path in ("bulk", "bulk/preview"):
            r = client.post(f"{API}/desktops/{path}", json={**body, "desktop_ids": ids})
            assert r.status_code == 422 and r.json()["error"] == "invalid", (body, r.text)
            assert says in r.json()["detail"], (body, r.json()["detail"])
    from manager import db
    from manager.models import Job
    with db.session_scope() as s:
        assert s.scalar(select(func.count()).select_from(Job)) == 0


def test_preview_of_a_revert_counts_desktops_without_the_snapshot(world, client):
    world.hosts(1)
    ids = [i for i, _n in pool_desktops(world.pool(3, pool_type="manual"))]
    ask_bulk(client, "snapshot", ids[:2], snapshot_name="one")
    ask_bulk(client, "snapshot", ids[:1], snapshot_name="two")
    set_desktop(ids[0], logged_in_user="ivy")
    for name, without in ((None, 1), ("one", 1), ("two", 2), ("three", 3)):
        body = {"action": "revert", "desktop_ids": ids} | ({"snapshot_name": name} if name else {})
        r = client.post(f"{API}/desktops/bulk/preview", json=body)
        assert r.status_code == 200, r.text
        assert r.json()["without_snapshot"] == without and r.json()["logged_in"] == 1 and r.json()["count"] == 3


def test_a_cancelled_bulk_snapshot_takes_none(world):
    import pytest

    from core.enums import JobState
    from manager import db
    from manager.jobs import JobCancelled, JobContext
    from manager.models import Job
    from manager.provisioning import bulk

    world.hosts(1)
    ids = [i for i, _n in pool_desktops(world.pool(2, pool_type="manual"))]
    with db.session_scope() as s:  # a bulk snapshot whose cancel was asked for while it runs
        job = Job(kind=bulk.JOB_KIND, params={}, state=JobState.RUNNING, cancel_requested=True, total=2)
        s.add(job)
        s.flush()
        job_id = job.id
    with pytest.raises(JobCancelled):
        bulk.run_bulk(JobContext(job_id), "snapshot", ids, actor="tests", options={"snapshot_name": "never"})
    assert snapshots(ids) == {i: [] for i in ids} and jobs_of_kind("image.snapshot") == 0


def test_reimage_powers_running_desktops_off_only_when_asked(world, client):
    world.hosts(1)
    desktops = pool_desktops(world.pool(2, pool_type="manual"))
    ids = [i for i, _n in desktops]
    assert ask_bulk(client, "start", ids)["result"]["failed"] == {}
    refused = ask_bulk(client, "reimage", ids)
    assert refused["result"]["succeeded"] == 0 and set(refused["result"]["failed"]) == {n for _i, n in desktops}
    assert all("power it off first" in why for why in refused["result"]["failed"].values()), refused["result"]
    done = ask_bulk(client, "reimage", ids, power_off=True)
    assert done["result"] == {"action": "reimage", "total": 2, "succeeded": 2, "failed": {}}, done["result"]
    assert count_events("desktop.reimaged") == 2
