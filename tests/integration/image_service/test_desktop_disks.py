"""Desktop disks, snapshots (create, revert, preview, delete), re-image and rolling template updates."""
from __future__ import annotations

import os
from pathlib import Path

import pytest
from sqlalchemy import select

from core.enums import PoolType, PowerState, SessionState, TaskState
from core.errors import Conflict, DesktopBusy, DuplicateName, NotPlaced
from image_manager import qcow2, qemu_img, service
from manager import db
from manager.models import Desktop, DesktopSession, Pool, Snapshot, Template, TemplateVersion, User, Volume
from tests.integration.image_service.conftest import MiB, active_path, ok_job, qemu_io, reads_pattern, sha256

GiB = 1 << 30


def _template_path(version_id: str) -> Path:
    with db.session_scope() as session:
        version = session.get(TemplateVersion, version_id)
        return Path(session.get(Volume, version.volume_id).path)


def _desktop(session, desktop_id):
    return service.get_desktop(session, desktop_id)


def test_overlays_in_one_batch_thin_on_the_template(env):
    _t, v1 = env.template("t")
    names = [f"d{i:03d}" for i in range(60)]
    ids = env.desktops(v1, names)
    template = _template_path(v1)
    with db.session_scope() as session:
        vols = [session.get(Volume, session.get(Desktop, i).volume_id) for i in ids]
    assert len({v.path for v in vols}) == 60
    for vol in vols[:5]:
        header = qcow2.read_header(vol.path)
        assert Path(header.backing_file) == template and qcow2.is_empty(vol.path)
        assert vol.parent_id is not None and vol.role == "desktop"
        assert qemu_img.check(vol.path).ok
    assert reads_pattern(vols[0].path, 0, MiB, 0x11)
    # idempotent: asking again keeps the existing disks
    with db.session_scope() as session:
        again = service.create_desktop_disks(session, [session.get(Desktop, i) for i in ids[:3]])
        assert [v.id for v in again] == [v.id for v in vols[:3]]


def test_full_clone_and_bigger_disk_options(env):
    _t, v1 = env.template("t")
    (clone_id,) = env.desktops(v1, ["clone"], full_clone=True)
    with db.session_scope() as session:
        big = Desktop(name="big", template_version_id=v1, disk_size_gib=1)
        session.add(big)
        session.flush()
        service.create_desktop_disks(session, [big])
        big_path = session.get(Volume, big.volume_id).path
    clone = active_path(clone_id)
    assert qcow2.read_header(clone).backing_file is None and reads_pattern(clone, 0, MiB, 0x11)
    assert qcow2.read_header(big_path).virtual_size == GiB


def _snapshot(desktop_id: str, name: str) -> str:
    with db.session_scope() as session:
        snap, job = service.create_snapshot(session, _desktop(session, desktop_id), name)
        snap_id = snap.id
    ok_job(job.id)
    return snap_id


def _run(action, desktop_id: str, snapshot_id: str | None = None, **kwargs) -> None:
    with db.session_scope() as session:
        desktop = _desktop(session, desktop_id)
        if snapshot_id is None:
            job = action(session, desktop, **kwargs)
        else:
            job = action(session, desktop, service.get_snapshot(session, desktop, snapshot_id), **kwargs)
    ok_job(job.id)


def test_snapshot_revert_preview_delete_keep_the_guest_view_and_the_active_path(env):
    _t, v1 = env.template("t")
    template = _template_path(v1)
    template_sha = sha256(template)
    (desktop_id,) = env.desktops(v1, ["d1"])
    disk = active_path(desktop_id)
    qemu_io(disk, "write -P 0xa1 1M 1M")
    s1 = _snapshot(desktop_id, "s1")
    assert active_path(desktop_id) == disk  # the domain's disk path never changes
    assert qcow2.is_empty(disk) and reads_pattern(disk, MiB, MiB, 0xa1)
    qemu_io(disk, "write -P 0xb2 1M 1M")
    s2 = _snapshot(desktop_id, "s2")
    qemu_io(disk, "write -P 0xc3 1M 1M")

    with db.session_scope() as session:
        infos = service.list_snapshots(session, _desktop(session, desktop_id))
        assert [(i.name, i.in_active_chain) for i in infos] == [("s1", True), ("s2", True)]
        with pytest.raises(DuplicateName):
            service.create_snapshot(session, _desktop(session, desktop_id), "s1")
        session.rollback()

    _run(service.revert_to_snapshot, desktop_id, s1)
    assert reads_pattern(disk, MiB, MiB, 0xa1)
    # s2 is kept (outside the active chain now) and can still be reverted to
    _run(service.revert_to_snapshot, desktop_id, s2)
    assert reads_pattern(disk, MiB, MiB, 0xb2)

    # preview s1, undo: back to s2's state with what was written after
    qemu_io(disk, "write -P 0xd4 1M 1M")
    _run(service.preview_snapshot, desktop_id, s1)
    assert reads_pattern(disk, MiB, MiB, 0xa1)
    with db.session_scope() as session:
        with pytest.raises(Conflict, match="previewing"):
            service.create_snapshot(session, _desktop(session, desktop_id), "s3")
        session.rollback()
    _run(service.undo_preview, desktop_id)
    assert reads_pattern(disk, MiB, MiB, 0xd4)
    # preview s1 and keep it
    _run(service.preview_snapshot, desktop_id, s1)
    _run(service.commit_preview, desktop_id)
    assert reads_pattern(disk, MiB, MiB, 0xa1)
    with db.session_scope() as session:
        assert session.scalar(select(Volume).where(Volume.role == "stash")) is None

    # deleting s1 merges it into everything built on it (the active disk and s2): their view is unchanged
    _run(service.delete_snapshot, desktop_id, s1)
    assert reads_pattern(disk, MiB, MiB, 0xa1)
    with db.session_scope() as session:
        s2_path = session.get(Volume, session.get(Snapshot, s2).volume_id).path
        assert session.get(Snapshot, s1) is None
        assert Path(qcow2.read_header(s2_path).backing_file) == template
        assert Path(qcow2.read_header(disk).backing_file) == template
    assert reads_pattern(s2_path, MiB, MiB, 0xb2)
    assert sha256(template) == template_sha
    with db.session_scope() as session:
        paths = {v.path for v in session.scalars(select(Volume))}
    on_disk = {str(p) for p in (env.root / "desktops").rglob("*") if p.is_file()}
    assert on_disk <= paths  # no file without a row


def test_disk_changes_need_the_desktop_down_and_idle(env):
    _t, v1 = env.template("t")
    (desktop_id,) = env.desktops(v1, ["d1"])
    with db.session_scope() as session:
        _desktop(session, desktop_id).power_state = PowerState.UP
    with db.session_scope() as session:
        with pytest.raises(DesktopBusy, match="power it off"):
            service.reimage_desktop(session, _desktop(session, desktop_id))
        session.rollback()
    # a running desktop's snapshot is taken live by its host (test_live_snapshots.py): it needs one
    with db.session_scope() as session:
        with pytest.raises(NotPlaced, match="on no host"):
            service.create_snapshot(session, _desktop(session, desktop_id), "s1")
        session.rollback()
    with db.session_scope() as session:
        _desktop(session, desktop_id).power_state = PowerState.POWERING_UP
    with db.session_scope() as session:
        with pytest.raises(DesktopBusy, match="wait until it is up"):
            service.create_snapshot(session, _desktop(session, desktop_id), "s1")
        session.rollback()
    with db.session_scope() as session:
        desktop = _desktop(session, desktop_id)
        desktop.power_state, desktop.task_state = PowerState.DOWN, TaskState.STARTING
    with db.session_scope() as session:
        with pytest.raises(DesktopBusy, match="starting"):
            service.reimage_desktop(session, _desktop(session, desktop_id))
        session.rollback()


def test_reimage_drops_the_diff_and_kept_snapshots_bring_it_back(env):
    _t, v1 = env.template("t")
    (desktop_id,) = env.desktops(v1, ["d1"])
    disk = active_path(desktop_id)
    qemu_io(disk, "write -P 0xe5 2M 1M")
    s1 = _snapshot(desktop_id, "before")
    _run(service.reimage_desktop, desktop_id, keep_snapshots=True)
    assert qcow2.is_empty(disk) and not reads_pattern(disk, 2 * MiB, MiB, 0xe5)
    _run(service.revert_to_snapshot, desktop_id, s1)
    assert reads_pattern(disk, 2 * MiB, MiB, 0xe5)
    # a plain re-image deletes the snapshots with their files
    with db.session_scope() as session:
        snap_path = session.get(Volume, session.get(Snapshot, s1).volume_id).path
    _run(service.reimage_desktop, desktop_id)
    assert not os.path.exists(snap_path)
    with db.session_scope() as session:
        assert session.scalars(select(Snapshot)).all() == []
        assert [v.role for v in session.scalars(select(Volume).where(Volume.desktop_id == desktop_id))] == ["desktop"]


def _pool_with_v2(env, size: int):
    template_id, v1 = env.template("t")
    with db.session_scope() as session:
        pool = Pool(name="p", template_id=template_id, pool_type=PoolType.AUTOMATIC, size=size)
        session.add(pool)
        session.flush()
        pool_id = pool.id
    ids = env.desktops(v1, [f"p{i}" for i in range(size)], pool_id=pool_id)
    source = env.base_image("v2.qcow2", writes=("write -P 0x22 0 1M",))
    with db.session_scope() as session:
        job = service.import_template_image(session, session.get(Template, template_id), source_path=str(source))
    ok_job(job.id)
    with db.session_scope() as session:
        v2 = session.get(Template, template_id).latest_version_id
    return pool_id, ids, v1, v2


def test_rolling_update_moves_idle_desktops_now_and_busy_ones_at_logoff(env):
    pool_id, (idle, busy, held), v1, v2 = _pool_with_v2(env, 3)
    for desktop_id in (idle, busy, held):
        qemu_io(active_path(desktop_id), "write -P 0x99 8M 64k")
    with db.session_scope() as session:
        user = User(username="alice", domain="local", upn="alice@local")
        session.add(user)
        session.flush()
        session.add(DesktopSession(desktop_id=busy, user_id=user.id, state=SessionState.CONNECTED))
        _desktop(session, held).assigned_user_id = user.id  # an automatic pool's desktop held for a session
        user_id = user.id
    with db.session_scope() as session:
        result = service.roll_out_version(session, session.get(Pool, pool_id), session.get(TemplateVersion, v2))
        assert result.moved_now == ["p0"] and sorted(result.pending) == ["p1", "p2"]
        job_ids = result.job_ids
    for job_id in job_ids:
        ok_job(job_id)
    v2_path = _template_path(v2)
    with db.session_scope() as session:
        assert _desktop(session, idle).template_version_id == v2
        assert _desktop(session, busy).template_version_id == v1
        assert _desktop(session, busy).pending_template_version_id == v2
    assert Path(qcow2.read_header(active_path(idle)).backing_file) == v2_path
    assert reads_pattern(active_path(idle), 0, MiB, 0x22)
    assert reads_pattern(active_path(busy), 8 * MiB, 65536, 0x99)  # the user's data is untouched

    # while the user is still on it nothing happens; after logoff the pending version is applied
    with db.session_scope() as session:
        assert service.apply_pending_version(session, _desktop(session, busy)) is None
        for row in session.scalars(select(DesktopSession).where(DesktopSession.desktop_id == busy)):
            row.state = SessionState.ENDED
        job = service.apply_pending_version(session, _desktop(session, busy))
        assert job is not None
    ok_job(job.id)
    with db.session_scope() as session:
        desktop = _desktop(session, busy)
        assert (desktop.template_version_id, desktop.pending_template_version_id) == (v2, None)
        assert service.apply_pending_version(session, _desktop(session, held)) is None  # still held
        _desktop(session, held).assigned_user_id = None
    assert Path(qcow2.read_header(active_path(busy)).backing_file) == v2_path
    assert user_id
