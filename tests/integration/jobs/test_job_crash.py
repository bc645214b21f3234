"""A runner SIGKILLed mid-job (issue 18 item 4): for every job kind, no job stays RUNNING; each is resumed (its
kind's steps are idempotent) or failed with a reason naming the runner that died, as its kind registered
(manager/jobs.py OnCrash). Real Celery workers over real Redis, real Postgres.

"Mid-job" is made deterministic without any hook in the code: the test holds ACCESS EXCLUSIVE locks on every table
except the jobs' own (and those of the manager election and the notification outbox), so a claimed job (RUNNING,
its lease renewed by its worker) blocks at its first read of the world; the test waits until Postgres shows that
wait, checks that the live worker's lease keeps its job from being taken for dead, SIGKILLs the worker, releases
the locks and starts a new worker, whose recovery loop settles the job once its lease has run out.

The kind list is the registry's: a new job kind without a scenario here fails this test until one is added.
"""
from __future__ import annotations

import datetime as dt
import os
import subprocess
import sys
import threading
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from sqlalchemy import select, text

from core.enums import JobState
from manager import db, jobs
from manager.models import Event, Job, StorageDomain, Volume
from tests.harness.managers import REPO, wait_for
from tests.harness.processes import kill_process_tree

LEASE_S = 1.5
REDIS_URL = os.environ.get("VDI_TEST_CRASH_REDIS_URL", "redis://127.0.0.1:6379/13")
UNLOCKED = {"jobs", "alembic_version", "manager_leader", "manager_instances", "notification_subscriptions",
            "notification_outbox"}


def _id() -> str:
    return str(uuid.uuid4())


def _paths(tmp: Path) -> dict[str, str]:
    return {"source": str(tmp / "missing-source.qcow2"), "dest": str(tmp / "out.qcow2")}


def _desktop(tmp: Path) -> dict[str, Any]:
    return {"desktop_id": _id()}


# Each kind's parameters: ids of rows that do not exist are enough, since the job is killed at its first read of
# the world and what is checked is what recovery makes of the job (a resumed job then finds nothing to do, or fails
# on its own terms).
SCENARIOS: dict[str, Callable[[Path], dict[str, Any]]] = {
    "desktops.bulk": lambda tmp: {"action": "start", "desktop_ids": [_id()], "actor": "test"},
    "desktops.cut_consoles": _desktop,
    "desktops.deprovision": _desktop,
    "desktops.migrate": lambda tmp: {"desktop_id": _id(), "host_id": _id()},
    "desktops.provision": _desktop,
    "desktops.redefine": _desktop,
    "desktops.reset": _desktop,
    "directory.sync": lambda tmp: {"full": None},
    "hosts.drain": lambda tmp: {"host_id": _id()},
    "hosts.reconcile": lambda tmp: {"host_id": _id()},
    "image.check": lambda tmp: {"volume_ids": [_id()]},
    "image.commit_preview": _desktop,
    "image.delete_snapshot": _desktop,
    "image.preview": _desktop,
    "image.undo_preview": _desktop,
    "image.revert": _desktop,
    "image.reimage": _desktop,
    "image.snapshot": lambda tmp: {"desktop_id": _id(), "snapshot_id": _id(), "active_path": str(tmp / "a.qcow2"),
                                   "frozen_id": _id(), "frozen_path": str(tmp / "f.qcow2")},
    "image.export": lambda tmp: {"volume_id": _id(), **_paths(tmp)},
    "image.import": lambda tmp: {"template_id": _id(), "version_id": _id(), "volume_id": _id(),
                                 "source": _paths(tmp)["source"]},
    "image.new_version": lambda tmp: {"template_id": _id(), "version_id": _id(), "volume_id": _id(),
                                      "source": _paths(tmp)["source"]},
    "image.reconcile": lambda tmp: {"min_age_seconds": 3600.0},
    "policies.execute": lambda tmp: {"decisions": [{"action": "suspend", "desktop_id": _id(), "desktop": "d1"}],
                                     "actor": "test"},
    "pools.maintain": lambda tmp: {},
    "pools.provision": lambda tmp: {"pool_id": _id()},
    "pools.resize": lambda tmp: {"pool_id": _id()},
    "storage.refresh": lambda tmp: {},
}


def _all_kinds() -> list[str]:
    return sorted(jobs.kinds())


@pytest.fixture
def crash_env(settings_env, clean_db, monkeypatch, tmp_path) -> Iterator[dict[str, str]]:
    """The test process sends jobs to Celery on a Redis database of its own; the workers' environment."""
    redis.Redis.from_url(REDIS_URL).flushdb()
    monkeypatch.setenv("VDI_REDIS_URL", REDIS_URL)
    monkeypatch.setenv("VDI_JOB_LEASE_SECONDS", str(LEASE_S))
    monkeypatch.setattr(jobs, "_celery_app", None)
    from manager.config import get_settings

    get_settings.cache_clear()
    # a directory is configured (at an address where nothing answers) so that directory.sync reaches the database
    yield {**os.environ, "VDI_REDIS_URL": REDIS_URL, "VDI_JOB_LEASE_SECONDS": str(LEASE_S),
           "VDI_LOG_LEVEL": "INFO", "VDI_AD_URL": "ldap://127.0.0.1:9", "VDI_AD_BASE_DN": "DC=crash,DC=test"}
    get_settings.cache_clear()
    redis.Redis.from_url(REDIS_URL).flushdb()


class Worker:
    def __init__(self, env: dict[str, str], log: Path) -> None:
        self.log = log
        with open(log, "ab") as out:
            self.proc = subprocess.Popen([sys.executable, "-m", "manager.cli", "worker", "--concurrency", "2",
                                          "--loglevel", "INFO", "--hostname", f"crash-{uuid.uuid4().hex[:6]}@test"],
                                         env=env, cwd=REPO, stdout=out, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL)
        wait_for(f"the Celery worker is ready ({log})", lambda: self._ready(), bound_s=90)

    def _ready(self) -> bool:
        assert self.proc.poll() is None, self.log.read_text(errors="replace")[-3000:]
        return " ready." in self.log.read_text(errors="replace")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                kill_process_tree(self.proc)


class TableLocks:
    """ACCESS EXCLUSIVE locks on every table but the jobs' own, held by a connection of the test."""

    def __init__(self) -> None:
        self.conn = db.get_engine().connect()
        tables = [t for t in self.conn.execute(text("SELECT tablename FROM pg_tables WHERE schemaname = 'public'"))
                  .scalars() if t not in UNLOCKED]
        self.conn.execute(text(f"LOCK TABLE {', '.join(tables)} IN ACCESS EXCLUSIVE MODE"))

    def release(self) -> None:
        if self.conn is not None:
            self.conn.rollback()
            self.conn.close()
            self.conn = None


def _lock_waiters() -> int:
    with db.session_scope() as session:
        return session.scalar(text("SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                                   "AND wait_event_type = 'Lock'"))


def _job(job_id: str) -> Job:
    with db.session_scope() as session:
        return session.get(Job, job_id)


def _codes(job_id: str) -> list[str]:
    with db.session_scope() as session:
        return list(session.scalars(select(Event.code).where(Event.job_id == job_id).order_by(Event.id)))


def test_every_job_kind_has_a_crash_scenario():
    """Fails as soon as a job kind is registered that the SIGKILL test below does not cover."""
    missing = sorted(set(_all_kinds()) - set(SCENARIOS))
    assert missing == [], f"add a crash scenario to SCENARIOS for job kind(s) {missing}"


@pytest.mark.redis
@pytest.mark.parametrize("kind", _all_kinds())
def test_a_worker_sigkilled_mid_job_leaves_no_job_running(kind, crash_env, tmp_path):
    if kind not in SCENARIOS:
        pytest.fail(f"no crash scenario for job kind {kind!r}: add one to SCENARIOS")
    expected = jobs.kinds()[kind].on_crash
    first = Worker(crash_env, tmp_path / "worker-1.log")
    locks = TableLocks()
    second = None
    try:
        with db.session_scope() as session:
            job_id = jobs.enqueue(session, kind, params=SCENARIOS[kind](tmp_path), created_by="test").id
        # mid-job: claimed by the worker and waiting for the world
        wait_for("the job is running and blocked on a table lock",
                 lambda: _job(job_id).state == JobState.RUNNING and _lock_waiters() > 0)
        claimed = _job(job_id)
        assert claimed.owner.startswith("worker "), claimed.owner
        # its live worker renews the lease past its length: the worker's own recovery loop leaves the job alone
        wait_for("the lease is renewed", lambda: _job(job_id).heartbeat_at
                 > claimed.started_at + dt.timedelta(seconds=2 * LEASE_S))
        assert _job(job_id).state == JobState.RUNNING and _job(job_id).owner == claimed.owner

        kill_process_tree(first.proc)
        locks.release()
        assert _job(job_id).state == JobState.RUNNING, "the dead worker's job is still RUNNING until recovered"

        second = Worker(crash_env, tmp_path / "worker-2.log")
        final = wait_for("the job is settled", lambda: (j := _job(job_id)).state in
                         (JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED) and j, bound_s=120)
    finally:
        locks.release()
        for worker in (first, second):
            if worker is not None:
                worker.stop()
    codes = _codes(job_id)
    if expected == jobs.OnCrash.RESUME:
        assert codes.count("job.resumed") == 1, codes
        assert "interrupted" not in final.error, final.error
        assert final.started_at > claimed.started_at, "it ran again after the crash"
    else:
        assert final.state == JobState.FAILED, (final.state, final.error)
        assert final.error.startswith(f"interrupted: {claimed.owner} stopped"), final.error
        assert "retry" in final.error and "job.resumed" not in codes
    ends = [c for c in codes if c in ("job.succeeded", "job.failed", "job.cancelled")]
    assert ends == [f"job.{final.state.value}"], codes  # it ended once


def test_recovery_settles_a_dead_job_once(settings_env, clean_db, monkeypatch):
    """Several managers and workers run the recovery at once: each dead job is resumed (or failed) by one of them,
    and a PENDING job whose message was lost (never claimed for longer than a lease) is sent again by one."""
    sent: list[str] = []
    monkeypatch.setattr(jobs, "dispatch", sent.append)
    long_ago = dt.datetime.now(dt.timezone.utc) - dt.timedelta(hours=1)
    with db.session_scope() as session:
        ids = [jobs.enqueue(session, kind, params={}, created_by="test").id
               for kind in ("storage.refresh", "pools.maintain", "desktops.bulk") for _ in range(3)]
        lost = jobs.enqueue(session, "storage.refresh", params={}, created_by="test")  # its message was lost
        lost.created_at, lost_id = long_ago, lost.id
    sent.clear()
    with db.session_scope() as session:
        session.execute(Job.__table__.update().where(Job.id.in_(ids)).values(
            state=JobState.RUNNING, started_at=long_ago, heartbeat_at=long_ago, owner="manager gone"))
    reports: list[jobs.Recovery] = []
    barrier = threading.Barrier(4)

    def recover() -> None:
        barrier.wait()
        reports.append(jobs.recover_orphaned_jobs())

    threads = [threading.Thread(target=recover) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    resumed = [j for r in reports for j in r.resumed]
    failed = [j for r in reports for j in r.failed]
    assert sorted(resumed + failed) == sorted(ids), "every dead job settled exactly once"
    assert [j for r in reports for j in r.resent] == [lost_id], "a PENDING job never claimed is sent again, once"
    assert sorted(sent) == sorted(resumed + [lost_id])
    with db.session_scope() as session:
        rows = {j.id: j for j in session.scalars(select(Job).where(Job.id.in_(ids)))}
        assert {rows[j].kind for j in failed} == {"desktops.bulk"}
        assert all(rows[j].state == JobState.PENDING and rows[j].owner == "" for j in resumed)
        assert all(rows[j].error.startswith("interrupted: manager gone stopped") for j in failed)
        resumed_events = session.scalars(select(Event.job_id).where(Event.code == "job.resumed")).all()
    assert sorted(resumed_events) == sorted(resumed)


def test_a_live_runners_job_is_not_recovered(settings_env, clean_db, monkeypatch):
    """A RUNNING job whose lease is fresh belongs to a live runner (another manager's in-process pool): left alone."""
    monkeypatch.setattr(jobs, "dispatch", lambda job_id: None)
    with db.session_scope() as session:
        job_id = jobs.enqueue(session, "storage.refresh", params={}, created_by="test").id
    with db.session_scope() as session:
        now = db.clock(session)
        session.execute(Job.__table__.update().where(Job.id == job_id).values(
            state=JobState.RUNNING, started_at=now - dt.timedelta(hours=1), heartbeat_at=now, owner="manager m2"))
    report = jobs.recover_orphaned_jobs()
    assert report.resumed == [] and report.failed == []
    assert _job(job_id).state == JobState.RUNNING


def test_a_run_whose_job_was_settled_meanwhile_stops_and_writes_nothing(settings_env, clean_db, tmp_path):
    """A runner cut off from the database past its lease: recovery settles its job meanwhile. When the runner goes on,
    it stops at its next step (JobLost) and leaves the job as recovery left it."""
    with db.session_scope() as session:
        domain = StorageDomain(name="shared", path=str(tmp_path))
        session.add(domain)
        session.flush()
        for i in range(3):
            (tmp_path / f"v{i}.qcow2").write_bytes(os.urandom(8192))
            session.add(Volume(storage_domain_id=domain.id, path=str(tmp_path / f"v{i}.qcow2"), role="desktop"))
    locks = TableLocks()
    try:
        with db.session_scope() as session:
            job_id = jobs.enqueue(session, "storage.refresh", params={}, created_by="test").id
        wait_for("the job runs in-process and waits for the volumes table",
                 lambda: _job(job_id).state == JobState.RUNNING and _lock_waiters() > 0)
        with db.session_scope() as session:  # what recovery does to a FAIL kind whose lease ran out
            session.execute(Job.__table__.update().where(Job.id == job_id).values(
                state=JobState.FAILED, error="interrupted: settled elsewhere", finished_at=db.clock(session)))
    finally:
        locks.release()
    wait_for("the run has ended", lambda: job_id not in jobs._leases._ids)
    final = _job(job_id)
    assert (final.state, final.error, final.done) == (JobState.FAILED, "interrupted: settled elsewhere", 0)
    assert _codes(job_id) == []
    with db.session_scope() as session:
        assert session.scalars(select(Volume.actual_size)).all() == [0, 0, 0], "it stopped before measuring"
