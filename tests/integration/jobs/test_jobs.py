"""Jobs: sent only after commit, run by a real Celery worker over real Redis (or the embedded in-process
runner), with progress users can watch."""
from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest
import redis
from sqlalchemy import select, text

from core.enums import JobState
from manager import db
from manager.jobs import enqueue
from manager.models import Job, StorageDomain, Volume
from tests.conftest import REDIS_URL
from tests.harness.managers import wait_for

API = "/api/v1"


def _storage_with_files(tmp_path, count: int) -> str:
    root = tmp_path / "storage"
    root.mkdir()
    with db.session_scope() as session:
        domain = StorageDomain(name="shared", path=str(root))
        session.add(domain)
        session.flush()
        for i in range(count):
            path = root / f"vol-{i:04d}.qcow2"
            path.write_bytes(os.urandom(4096 + i))
            session.add(Volume(storage_domain_id=domain.id, path=str(path), role="desktop"))
        return domain.id


def _watch(client, job_id: str, timeout: float = 120) -> list[dict]:
    seen, deadline = [], time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = client.get(f"{API}/jobs/{job_id}").json()
        seen.append(job)
        if job["state"] in ("succeeded", "failed", "cancelled"):
            return seen
        time.sleep(0.05)
    pytest.fail(f"job {job_id} did not finish; last seen {seen[-1] if seen else None}")


def _assert_watched_to_completion(seen: list[dict], total: int) -> None:
    final = seen[-1]
    assert final["state"] == "succeeded", final
    assert final["total"] == total and final["done"] == total and final["progress"] == 100.0
    dones = [j["done"] for j in seen]
    assert dones == sorted(dones), "progress never goes backwards"
    assert final["started_at"] and final["finished_at"]


@pytest.fixture
def celery_worker(settings_env, pg_url, monkeypatch):
    """A real `vdi worker` process (Celery) on a private Redis database."""
    redis.Redis.from_url(REDIS_URL).flushdb()
    monkeypatch.setenv("VDI_REDIS_URL", REDIS_URL)
    from manager.config import get_settings

    get_settings.cache_clear()
    env = {**os.environ, "VDI_REDIS_URL": REDIS_URL, "VDI_DATABASE_URL": pg_url}
    proc = subprocess.Popen([sys.executable, "-m", "manager.cli", "worker", "--concurrency", "2",
                             "--hostname", f"test-{os.getpid()}@localhost"], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    yield proc
    proc.terminate()
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
    get_settings.cache_clear()


@pytest.mark.redis
def test_a_real_celery_worker_runs_a_job_and_reports_progress(client, celery_worker, tmp_path):
    domain_id = _storage_with_files(tmp_path, 600)
    response = client.post(f"{API}/storage-domains/{domain_id}/refresh")
    assert response.status_code == 202, response.text
    job_id = response.json()["id"]
    assert response.json()["state"] == "pending"
    seen = _watch(client, job_id)
    _assert_watched_to_completion(seen, total=601)
    assert seen[-1]["result"]["volumes"] == 600 and seen[-1]["result"]["missing"] == []
    with db.session_scope() as session:
        sizes = session.scalars(select(Volume.actual_size)).all()
        assert len(sizes) == 600 and all(size >= 4096 for size in sizes)
        assert session.scalar(select(StorageDomain.free_bytes)) > 0
    events = client.get(f"{API}/events", params={"job_id": job_id}).json()["items"]
    assert [e["code"] for e in events] == ["job.succeeded"]
    assert celery_worker.poll() is None, "the worker is still alive"


def test_the_embedded_runner_needs_no_broker(client, tmp_path):
    domain_id = _storage_with_files(tmp_path, 50)
    job_id = client.post(f"{API}/storage-domains/{domain_id}/refresh").json()["id"]
    _assert_watched_to_completion(_watch(client, job_id), total=51)


def test_a_job_is_not_sent_when_its_transaction_rolls_back(client, tmp_path, monkeypatch):
    sent: list[str] = []
    monkeypatch.setattr("manager.jobs.dispatch", sent.append)
    with pytest.raises(RuntimeError):
        with db.session_scope() as session:
            enqueue(session, "storage.refresh", params={})
            raise RuntimeError("the request failed after creating the job")
    assert sent == []
    with db.session_scope() as session:
        assert session.scalars(select(Job)).all() == []
        job = enqueue(session, "storage.refresh", params={})
        assert sent == [], "not before commit"
    assert sent == [job.id]


def test_cancelling_a_pending_job(client, monkeypatch):
    monkeypatch.setattr("manager.jobs.dispatch", lambda job_id: None)
    with db.session_scope() as session:
        job_id = enqueue(session, "storage.refresh", params={}).id
    response = client.post(f"{API}/jobs/{job_id}/cancel")
    assert response.status_code == 200 and response.json()["state"] == "cancelled"
    again = client.post(f"{API}/jobs/{job_id}/cancel")
    assert again.status_code == 409 and "already cancelled" in again.json()["detail"]
    with db.session_scope() as session:
        assert session.get(Job, job_id).state == JobState.CANCELLED


def test_cancelling_a_running_job_stops_it_between_steps_with_what_it_completed(client, tmp_path):
    """storage.refresh measures volumes in batches of 200: the test holds every volume row (FOR UPDATE) so the job
    waits inside its first batch, asks to cancel, lets it go; it stops after that batch, CANCELLED, keeping what
    that batch measured."""
    domain_id = _storage_with_files(tmp_path, 450)
    lock = db.get_engine().connect()
    try:
        lock.execute(text("SELECT id FROM volumes FOR UPDATE")).all()
        job_id = client.post(f"{API}/storage-domains/{domain_id}/refresh").json()["id"]
        wait_for("the job waits inside its first batch", lambda: client.get(f"{API}/jobs/{job_id}").json()["state"]
                 == "running" and lock.scalar(text("SELECT count(*) FROM pg_stat_activity WHERE datname = "
                                                   "current_database() AND wait_event_type = 'Lock'")) > 0)
        response = client.post(f"{API}/jobs/{job_id}/cancel")
        assert response.status_code == 200 and response.json()["cancel_requested"] is True
        assert response.json()["state"] == "running", "a running job stops at its next step, not at once"
        lock.rollback()
    finally:
        lock.close()
    final = _watch(client, job_id)[-1]
    assert final["state"] == "cancelled", final
    assert final["done"] == 200 and final["result"]["volumes_measured"] == 200, final
    assert final["error"] == "cancelled by request after 200 of 451 step(s)"
    with db.session_scope() as session:
        measured = session.scalars(select(Volume.actual_size).where(Volume.actual_size > 0)).all()
    assert len(measured) == 200, "the first batch's measures were kept, nothing after it"
