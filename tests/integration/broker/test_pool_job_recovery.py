"""A pool job whose runner died (issue 18 item 4): pools.provision is failed with the reason, and the desktops it left
half made (task_state provisioning: overlay and domain made, never finished) are removed everywhere by
desktops.deprovision jobs; the pool's finished desktops are untouched, and nothing is touched while another job of
the same pool is still running (those desktops may be its own). Test-driver hypervisors behind real node agent
processes, real qcow2 overlays; the dead job is a RUNNING row whose lease ran out."""
from __future__ import annotations

import datetime as dt
import os

from sqlalchemy import select, update

from core.enums import JobState, TaskState
from manager import db, jobs
from manager.models import Desktop, Job, Volume
from manager.provisioning import nodes
from tests.integration.broker.conftest import wait_for_jobs


def _dead_job(pool_id: str, *, heartbeat: dt.datetime) -> str:
    with db.session_scope() as s:
        job = Job(kind="pools.provision", params={"pool_id": pool_id}, state=JobState.RUNNING, owner="worker gone",
                  started_at=heartbeat, heartbeat_at=heartbeat)
        s.add(job)
        s.flush()
        return job.id


def _pool_desktops(pool_id: str) -> dict[str, tuple[TaskState | None, str, nodes.NodeTarget]]:
    with db.session_scope() as s:
        return {d.id: (d.task_state, s.get(Volume, d.volume_id).path, nodes.target_of_desktop(s, d))
                for d in s.scalars(select(Desktop).where(Desktop.pool_id == pool_id))}


def _defined(target: nodes.NodeTarget, desktop_id: str) -> bool:
    return desktop_id in [d["uuid"] for d in nodes.client(target).list_domains()]


def test_a_dead_pool_provision_is_failed_and_its_half_made_desktops_removed(world, settings_env):
    """No manager runs here (no lifespan, so no recovery loop): the test runs the recovery pass itself."""
    world.hosts(2)
    pool_id = world.pool(3)
    with db.session_scope() as s:
        ids = sorted(s.scalars(select(Desktop.id).where(Desktop.pool_id == pool_id)))
        # the state a worker killed between materialise and finish leaves: made, still PROVISIONING
        s.execute(update(Desktop).where(Desktop.id.in_(ids[:2])).values(task_state=TaskState.PROVISIONING))
    before = _pool_desktops(pool_id)
    assert all(os.path.exists(path) and _defined(target, d) for d, (_s, path, target) in before.items())
    long_ago = dt.datetime.now(dt.timezone.utc) - dt.timedelta(hours=1)

    live = _dead_job(pool_id, heartbeat=long_ago)
    with db.session_scope() as s:  # another job of the pool is alive: its desktops may be these
        s.add(Job(kind="pools.resize", params={"pool_id": pool_id}, state=JobState.RUNNING, owner="worker alive",
                  started_at=db.clock(s), heartbeat_at=db.clock(s)))
    report = jobs.recover_orphaned_jobs()
    assert report.failed == [live] and report.cleaned[live] == []
    assert {d: s for d, (s, _p, _t) in _pool_desktops(pool_id).items()} == {d: s for d, (s, _p, _t) in before.items()}
    with db.session_scope() as s:
        s.execute(update(Job).where(Job.kind == "pools.resize").values(state=JobState.SUCCEEDED))

    dead = _dead_job(pool_id, heartbeat=long_ago)
    report = jobs.recover_orphaned_jobs()
    assert report.failed == [dead] and len(report.cleaned[dead]) == 2
    with db.session_scope() as s:
        job = s.get(Job, dead)
        assert job.state == JobState.FAILED
        assert job.error.startswith("interrupted: worker gone stopped") and "retry" in job.error
    wait_for_jobs()
    after = _pool_desktops(pool_id)
    assert list(after) == [ids[2]] and after[ids[2]][0] is None, "the finished desktop stays, as it was"
    for desktop_id in ids[:2]:
        _state, path, target = before[desktop_id]
        assert not os.path.exists(path) and not _defined(target, desktop_id)
    with db.session_scope() as s:
        removals = s.scalars(select(Job).where(Job.kind == "desktops.deprovision")).all()
        assert sorted(j.target_id for j in removals) == ids[:2]
        assert all(j.state == JobState.SUCCEEDED for j in removals)
