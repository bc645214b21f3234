"""A long image copy honours cancellation (issue 18 item 4): an import cancelled while qemu-img converts ends
CANCELLED at its next progress report, its qemu-img is killed (it writes no more), and the half-built version is
undone as a failed import would be. Real qemu-img (rate-limited so the copy takes seconds), in-process runner."""
from __future__ import annotations

import os
import time
from pathlib import Path

from image_manager import fileops, qemu_img, service
from manager import db, jobs
from manager.models import Job, Template, TemplateVersion, Volume
from tests.integration.image_service.conftest import MiB, sha256, wait_job


def _processes_writing(path: Path) -> list[int]:
    """Pids whose command line names `path` (the qemu-img converting into it)."""
    pids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                cmdline = Path(f"/proc/{entry}/cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if str(path).encode() in cmdline:
                pids.append(int(entry))
    return pids


def test_an_import_cancelled_mid_copy_stops_and_is_undone(env, tmp_path, monkeypatch):
    template_id, v1 = env.template("t")
    with db.session_scope() as session:
        v1_path = session.get(Volume, session.get(TemplateVersion, v1).volume_id).path
    v1_sha = sha256(v1_path)
    source = env.base_image("big.qcow2", size=64 * MiB, writes=("write -P 0x42 0 24M",))
    slow = tmp_path / "slow-qemu-img"
    slow.write_text('#!/bin/sh\nif [ "$1" = convert ]; then shift; exec qemu-img convert -r 2M "$@"; fi\n'
                    'exec qemu-img "$@"\n')
    slow.chmod(0o755)
    monkeypatch.setattr(qemu_img, "QEMU_IMG", str(slow))
    with db.session_scope() as session:
        job = service.import_template_image(session, session.get(Template, template_id), source_path=str(source))
        job_id, params = job.id, dict(job.params)
    tmp = fileops.tmp_path_for(env.root / "templates" / template_id / "2.qcow2", job_id)
    deadline = time.monotonic() + 60
    while not (tmp.exists() and tmp.stat().st_blocks * 512 > 2 * MiB):
        assert time.monotonic() < deadline, "the import never started writing"
        time.sleep(0.1)
    assert _processes_writing(tmp), "qemu-img is converting"

    with db.session_scope() as session:
        jobs.request_cancel(session, session.get(Job, job_id))
    final = wait_job(job_id)
    assert final.state.value == "cancelled", (final.state, final.error)
    assert final.error.startswith("cancelled by request after ") and final.done < 1000, final.error
    assert _processes_writing(tmp) == [], "its qemu-img was killed"
    assert not tmp.exists()
    with db.session_scope() as session:
        assert session.get(Volume, params["volume_id"]) is None
        assert session.get(TemplateVersion, params["version_id"]) is None
        template = session.get(Template, template_id)
        assert template.status == "ok" and template.latest_version_id == v1
    assert sha256(v1_path) == v1_sha
