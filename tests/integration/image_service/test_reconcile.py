"""Crash safety: a worker process SIGKILLed mid-job, interrupted disk jobs, orphans; reconcile cleans all."""
from __future__ import annotations

import datetime as dt
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from sqlalchemy import select, update

from core.enums import JobState
from image_manager import fileops, qcow2, reconcile, service
from manager import db, jobs
from manager.models import Event, Job, Snapshot, Template, TemplateVersion, Volume
from tests.harness.processes import kill_process_tree
from tests.integration.image_service.conftest import MiB, active_path, ok_job, qemu_io, reads_pattern, sha256

WORKER = """
import sys
from manager import db
db.configure(sys.argv[1])
import image_manager.tasks
from manager.jobs import run_job
run_job(sys.argv[2])
"""


@pytest.fixture
def no_dispatch(monkeypatch):
    """Call it to stop sending jobs to the in-process runner (the test runs them its own way)."""
    sent: list[str] = []

    def block() -> list[str]:
        monkeypatch.setattr(jobs, "dispatch", sent.append)
        return sent

    return block


def _codes() -> list[str]:
    with db.session_scope() as session:
        return list(session.scalars(select(Event.code)))


def test_sigkilled_worker_mid_import_is_undone_by_reconcile(env, pg_url, no_dispatch, tmp_path):
    template_id, v1 = env.template("t")
    with db.session_scope() as session:
        v1_path = session.get(Volume, session.get(TemplateVersion, v1).volume_id).path
    v1_sha = sha256(v1_path)
    sent = no_dispatch()
    source = env.base_image("big.qcow2", size=64 * MiB, writes=("write -P 0x42 0 24M",))
    slow = tmp_path / "slow-qemu-img"
    slow.write_text('#!/bin/sh\nif [ "$1" = convert ]; then shift; exec qemu-img convert -r 2M "$@"; fi\n'
                    'exec qemu-img "$@"\n')
    slow.chmod(0o755)
    with db.session_scope() as session:
        job = service.import_template_image(session, session.get(Template, template_id), source_path=str(source))
        job_id, params = job.id, dict(job.params)
    assert sent == [job_id]
    worker = subprocess.Popen([sys.executable, "-c", WORKER, pg_url, job_id], start_new_session=True,
                              env={**os.environ, "VDI_QEMU_IMG": str(slow), "VDI_DATABASE_URL": pg_url})
    template_dir = env.root / "templates" / template_id
    tmp = fileops.tmp_path_for(template_dir / "2.qcow2", job_id)
    deadline = time.monotonic() + 60
    while not (tmp.exists() and tmp.stat().st_blocks * 512 > 2 * MiB):
        assert worker.poll() is None, "the worker ended before it could be killed"
        assert time.monotonic() < deadline, "the import never started writing"
        time.sleep(0.1)
    kill_process_tree(worker)  # returns once the worker and its qemu-img have really exited

    with db.session_scope() as session:
        assert session.get(Job, job_id).state == JobState.RUNNING
        assert session.get(Volume, params["volume_id"]).status == "locked"
        assert session.get(Template, template_id).status == "locked"
    assert tmp.exists()

    report = reconcile.reconcile(dead_after_seconds=0, min_age_seconds=0)
    assert report.failed_jobs == [job_id] and str(tmp) in report.removed_files
    with db.session_scope() as session:
        job = session.get(Job, job_id)
        assert job.state == JobState.FAILED and "interrupted" in job.error
        assert session.get(Volume, params["volume_id"]) is None
        assert session.get(TemplateVersion, params["version_id"]) is None
        template = session.get(Template, template_id)
        assert template.status == "ok" and template.latest_version_id == v1
        known = list(session.scalars(select(Volume.path)))
    assert not tmp.exists() and sorted(p.name for p in template_dir.iterdir()) == ["1.qcow2"]
    assert fileops.find_orphans(env.root, known) == []
    assert sha256(v1_path) == v1_sha
    codes = _codes()
    assert "image.reconcile.undone" in codes and "image.reconcile.file_removed" in codes


def test_interrupted_snapshot_job_is_resumed_and_finishes(env, no_dispatch, monkeypatch):
    _t, v1 = env.template("t")
    (desktop_id,) = env.desktops(v1, ["d1"])
    disk = active_path(desktop_id)
    qemu_io(disk, "write -P 0x61 0 1M")
    no_dispatch()
    with db.session_scope() as session:
        snap, job = service.create_snapshot(session, service.get_desktop(session, desktop_id), "s1")
        job_id, snap_id, frozen = job.id, snap.id, Path(job.params["frozen_path"])
    # The state a crash between the two file steps leaves: the disk has its second name, nothing else.
    os.link(disk, frozen)
    long_ago = dt.datetime.now(dt.timezone.utc) - dt.timedelta(hours=1)
    with db.session_scope() as session:
        session.execute(update(Job).where(Job.id == job_id).values(state=JobState.RUNNING, started_at=long_ago,
                                                                  heartbeat_at=long_ago))
    monkeypatch.undo()  # the resumed job runs in the in-process runner
    report = reconcile.reconcile(dead_after_seconds=600, min_age_seconds=0)
    assert report.resumed_jobs == [job_id] and report.removed_files == []
    ok_job(job_id)
    with db.session_scope() as session:
        snap = session.get(Snapshot, snap_id)
        assert snap.status == "ok"
        assert service.get_desktop(session, desktop_id).task_state is None
        assert session.get(Volume, snap.volume_id).status == "ok"
    assert Path(qcow2.read_header(disk).backing_file) == frozen and not os.path.samefile(disk, frozen)
    assert reads_pattern(disk, 0, MiB, 0x61)
    assert "image.reconcile.resumed" in _codes()


def test_orphans_are_removed_but_backing_files_and_other_files_kept(env):
    _t, v1 = env.template("t")
    (desktop_id,) = env.desktops(v1, ["d1"])
    disk = active_path(desktop_id)
    desktops = env.root / "desktops"
    stray = desktops / "gone-desktop" / "x.qcow2"
    stray.parent.mkdir()
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(stray), "1M"], check=True)
    dead_tmp = fileops.tmp_path_for(desktops / desktop_id / "y.qcow2", "deadjob1")
    dead_tmp.write_bytes(b"partial")
    log = desktops / "d1.serial.log"
    log.write_text("console output")
    # a file no row knows that the desktop's disk reads from must survive
    hidden_base = desktops / desktop_id / "hidden-base.qcow2"
    os.link(disk, hidden_base)
    qcow2.create_overlay(disk, hidden_base, replace=True)
    with db.session_scope() as session:
        locked = Volume(path=str(desktops / "locked.qcow2"), role="snapshot", status="locked")
        missing = Volume(path=str(desktops / "missing.qcow2"), role="desktop", status="ok",
                         desktop_id=desktop_id)
        session.add_all([locked, missing])
        session.flush()
        locked_id, missing_id = locked.id, missing.id
    report = reconcile.reconcile(dead_after_seconds=600, min_age_seconds=0)
    assert not stray.exists() and not dead_tmp.exists()
    assert log.exists() and hidden_base.exists() and disk.exists()
    assert {str(stray), str(dead_tmp)} <= set(report.removed_files)
    assert str(desktops / "missing.qcow2") in report.illegal_volumes
    with db.session_scope() as session:
        assert session.get(Volume, locked_id) is None
        assert session.get(Volume, missing_id).status == "illegal"
    codes = _codes()
    assert {"image.reconcile.file_removed", "image.reconcile.row_removed", "image.reconcile.missing",
            "image.reconciled"} <= set(codes)
    # a second pass has nothing left to do
    again = reconcile.reconcile(dead_after_seconds=600, min_age_seconds=0)
    assert not again.removed_files and not again.removed_rows
