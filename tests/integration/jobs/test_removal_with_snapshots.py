"""Removing a desktop that has snapshots removes them too, rows and files (found by the API fuzz: a pool shrink
failed its job with a ForeignKeyViolation, snapshots still naming the desktop's volumes, and the desktop stayed
DELETING; the snapshots' files would have stayed on the storage)."""
from __future__ import annotations

from sqlalchemy import func, select

from core.enums import TaskState
from manager import db
from manager.models import Desktop, Snapshot, Volume
from manager.provisioning import service


def test_a_desktop_with_snapshots_is_removed_with_them(db_session, tmp_path):
    files = [tmp_path / "desk" / name for name in ("frozen.qcow2", "active.qcow2", "serial.log")]
    files[0].parent.mkdir()
    for path in files:
        path.write_bytes(b"x")
    desktop = Desktop(name="snappy", cpus=1, memory_mib=256, task_state=TaskState.DELETING)
    db_session.add(desktop)
    db_session.flush()
    frozen = Volume(path=str(files[0]), role="snapshot", desktop_id=desktop.id)
    db_session.add(frozen)
    db_session.flush()
    active = Volume(path=str(files[1]), parent_id=frozen.id, desktop_id=desktop.id)
    db_session.add(active)
    db_session.flush()
    desktop.volume_id = active.id
    db_session.add(Snapshot(desktop_id=desktop.id, volume_id=frozen.id, name="before the update"))
    db_session.commit()

    work = service.disk_work(db_session, desktop.id, TaskState.DELETING)
    service.remove_everywhere(work)
    assert not files[0].parent.exists()
    with db.session_scope() as session:
        assert service.finish_removal(session, work)
    with db.session_scope() as session:
        assert session.get(Desktop, desktop.id) is None
        assert session.scalar(select(func.count()).select_from(Snapshot)) == 0
        assert session.scalar(select(func.count()).select_from(Volume)) == 0
