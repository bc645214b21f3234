"""In-process jobs with several managers on one database (issue 18 item 4, manager HA): the leader's job recovery
leaves a live standby's running job alone however long it runs (its lease is renewed), and once that manager is
SIGKILLed, resumes it exactly once in its own in-process pool; a job of a leader that dies is resumed by the standby
once it has taken over. Real `vdi serve` processes, real Postgres.

"Mid-job" is deterministic: the test holds an ACCESS EXCLUSIVE lock on the volumes table, where storage.refresh
reads first, and waits until the job is RUNNING and Postgres shows a backend waiting for that lock.
"""
from __future__ import annotations

import datetime as dt
from collections.abc import Iterator

import pytest
from sqlalchemy import text

from manager.db import make_engine
from tests.harness.managers import ManagerGroup, manager_group, wait_for
from tests.harness.postgres import fresh_database

LEASE_S = 1.5


@pytest.fixture
def database() -> Iterator[str]:
    with fresh_database("vdi_jobs_ha") as url:
        yield url


@pytest.fixture
def engine(database):
    engine = make_engine(database)
    yield engine
    engine.dispose()


@pytest.fixture
def group(database, tmp_path) -> Iterator[ManagerGroup]:
    with manager_group(database, tmp_path / "managers", names=("m1",),
                       env={"VDI_JOB_LEASE_SECONDS": str(LEASE_S)}) as managers:
        wait_for("m1 leads", lambda: managers.role("m1") == "leader")
        managers.start("m2")
        yield managers


def _job(engine, job_id: str) -> dict:
    with engine.connect() as conn:
        return dict(conn.execute(text("SELECT state, owner, started_at, heartbeat_at, error FROM jobs WHERE id = :id"),
                                 {"id": job_id}).mappings().one())


def _waiting_for_a_lock(engine) -> bool:
    with engine.connect() as conn:
        return conn.scalar(text("SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                                "AND wait_event_type = 'Lock'")) > 0


def _events(engine, job_id: str, code: str) -> int:
    with engine.connect() as conn:
        return conn.scalar(text("SELECT count(*) FROM events WHERE job_id = :id AND code = :code"),
                           {"id": job_id, "code": code})


def test_the_leader_leaves_a_live_managers_job_alone_and_resumes_it_once_that_manager_dies(group, engine, tmp_path):
    assert group.role("m2") == "standby"
    storage = tmp_path / "storage"
    storage.mkdir()
    answer = group.api("m2", "POST", "/storage-domains", json={"name": "shared", "path": str(storage)})
    assert answer.status_code == 201, answer.text
    domain_id = answer.json()["id"]

    lock = engine.connect()
    try:
        lock.execute(text("LOCK TABLE volumes IN ACCESS EXCLUSIVE MODE"))
        answer = group.api("m2", "POST", f"/storage-domains/{domain_id}/refresh")
        assert answer.status_code == 202, answer.text
        job_id = answer.json()["id"]
        wait_for("m2 runs the job and it waits for the volumes table",
                 lambda: _job(engine, job_id)["state"] == "running" and _waiting_for_a_lock(engine))
        claimed = _job(engine, job_id)
        assert claimed["owner"] == "manager m2"
        # m1 leads and runs the job recovery every LEASE_S/3: m2 renews its job's lease, so it is left alone
        wait_for("m2 renews the lease", lambda: _job(engine, job_id)["heartbeat_at"]
                 > claimed["started_at"] + dt.timedelta(seconds=3 * LEASE_S))
        assert group.role("m1") == "leader"
        now = _job(engine, job_id)
        assert (now["state"], now["owner"]) == ("running", "manager m2")
        assert _events(engine, job_id, "job.resumed") == 0

        group.kill("m2")
        lock.rollback()
    finally:
        lock.close()
    final = wait_for("the job is resumed by m1 and finishes",
                     lambda: (j := _job(engine, job_id))["state"] in ("succeeded", "failed", "cancelled") and j)
    assert final["state"] == "succeeded", final["error"]
    assert final["owner"] == "manager m1" and final["started_at"] > claimed["started_at"]
    assert _events(engine, job_id, "job.resumed") == 1
    assert _events(engine, job_id, "job.succeeded") == 1
    events = group.api("m1", "GET", "/events", params={"job_id": job_id}).json()["items"]
    resumed = [e for e in events if e["code"] == "job.resumed"]
    assert resumed and "manager m2 stopped" in resumed[0]["message"], resumed


def test_a_job_of_a_leader_that_dies_is_resumed_by_the_standby_that_takes_over(group, engine, tmp_path):
    storage = tmp_path / "storage"
    storage.mkdir()
    domain_id = group.api("m1", "POST", "/storage-domains", json={"name": "shared", "path": str(storage)}).json()["id"]
    lock = engine.connect()
    try:
        lock.execute(text("LOCK TABLE volumes IN ACCESS EXCLUSIVE MODE"))
        job_id = group.api("m1", "POST", f"/storage-domains/{domain_id}/refresh").json()["id"]
        wait_for("m1 runs the job and it waits for the volumes table",
                 lambda: _job(engine, job_id)["state"] == "running" and _waiting_for_a_lock(engine))
        claimed = _job(engine, job_id)
        assert claimed["owner"] == "manager m1"
        group.kill("m1")
        lock.rollback()
    finally:
        lock.close()
    wait_for("m2 takes the lead", lambda: group.role("m2") == "leader")
    final = wait_for("the job is resumed by m2 and finishes",
                     lambda: (j := _job(engine, job_id))["state"] in ("succeeded", "failed", "cancelled") and j)
    assert final["state"] == "succeeded", final["error"]
    assert final["owner"] == "manager m2"
    assert _events(engine, job_id, "job.resumed") == 1 and _events(engine, job_id, "job.succeeded") == 1
