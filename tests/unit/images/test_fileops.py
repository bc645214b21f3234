"""Storage-domain naming, atomic publication and orphan detection."""
from __future__ import annotations

import os
import time

import pytest

from core.errors import Invalid
from image_manager import fileops
from image_manager.errors import ImageExists


def test_layout_names_files_under_the_storage_domain(tmp_path):
    layout = fileops.StorageLayout(tmp_path)
    assert layout.template_path("tpl-1", 3) == tmp_path / "templates/tpl-1/3.qcow2"
    assert layout.desktop_volume_path("d-9", "vol-a") == tmp_path / "desktops/d-9/vol-a.qcow2"


@pytest.mark.parametrize("bad", ["../etc", "a/b", "", ".hidden", "x" * 200, "a..b", "sp ace", "é"])
def test_ids_that_could_escape_or_hide_are_refused(tmp_path, bad):
    with pytest.raises(Invalid, match="cannot be used in a file name"):
        fileops.StorageLayout(tmp_path).desktop_volume_path("d1", bad)


def test_tmp_names_are_recognisable_and_stable_per_job(tmp_path):
    target = tmp_path / "v1.qcow2"
    assert fileops.tmp_path_for(target, "job7") == tmp_path / ".tmp-job7-v1.qcow2"
    assert fileops.tmp_path_for(target, "job7") == fileops.tmp_path_for(target, "job7")
    anonymous = fileops.tmp_path_for(target)
    assert anonymous.name.startswith(".tmp-") and anonymous != fileops.tmp_path_for(target)


def test_atomic_write_replaces_whole_content(tmp_path):
    target = tmp_path / "sub/dir/file"
    fileops.atomic_write_bytes(target, b"one")
    fileops.atomic_write_bytes(target, b"two")
    assert target.read_bytes() == b"two"
    assert sorted(os.listdir(target.parent)) == ["file"]


def test_failed_output_leaves_target_untouched_and_no_tmp(tmp_path):
    target = tmp_path / "t"
    target.write_bytes(b"old")
    with pytest.raises(RuntimeError):
        with fileops.atomic_output(target, job_id="j", replace=True) as tmp:
            tmp.write_bytes(b"half")
            raise RuntimeError("crash in the middle")
    assert target.read_bytes() == b"old" and sorted(os.listdir(tmp_path)) == ["t"]


def test_output_never_written_is_an_error(tmp_path):
    with pytest.raises(FileNotFoundError):
        with fileops.atomic_output(tmp_path / "t"):
            pass
    assert os.listdir(tmp_path) == []


def test_leftover_tmp_of_the_same_job_is_replaced(tmp_path):
    target = tmp_path / "t"
    fileops.tmp_path_for(target, "j1").write_bytes(b"garbage from a crashed run")
    with fileops.atomic_output(target, job_id="j1") as tmp:
        tmp.write_bytes(b"good")
    assert target.read_bytes() == b"good" and sorted(os.listdir(tmp_path)) == ["t"]


def test_publish_without_replace_never_clobbers(tmp_path):
    target = tmp_path / "t"
    target.write_bytes(b"first")
    tmp = tmp_path / ".tmp-x-t"
    tmp.write_bytes(b"second")
    with pytest.raises(ImageExists):
        fileops.publish(tmp, target, replace=False)
    assert target.read_bytes() == b"first"


def test_remove_is_idempotent(tmp_path):
    f = tmp_path / "f"
    f.write_bytes(b"x")
    assert fileops.remove(f) is True
    assert fileops.remove(f) is False
    d = tmp_path / "desktops/d1"
    d.mkdir(parents=True)
    (d / "v1.qcow2").write_bytes(b"x")
    assert fileops.remove_dir_if_empty(d) is False and d.exists()
    fileops.remove(d / "v1.qcow2")
    assert fileops.remove_dir_if_empty(d) is True and not d.exists()
    assert fileops.remove_dir_if_empty(d) is False


def test_find_orphans(tmp_path):
    layout = fileops.StorageLayout(tmp_path)
    known = [layout.template_path("t1", 1), layout.desktop_volume_path("d1", "v1")]
    unknown = layout.desktop_volume_path("d2", "v9")
    dead_tmp = fileops.tmp_path_for(layout.desktop_volume_path("d1", "v2"), "deadjob")
    live_tmp = fileops.tmp_path_for(layout.template_path("t1", 2), "livejob")
    for path in [*known, unknown, dead_tmp, live_tmp]:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"x" * 5000)
    (tmp_path / "unrelated.txt").write_text("outside templates/ and desktops/")

    orphans = fileops.find_orphans(tmp_path, known, active_job_ids=["livejob"])
    assert [(o.path, o.reason) for o in orphans] == [
        (dead_tmp, "temporary"),
        (unknown, "unreferenced"),
    ]
    assert all(o.size_bytes >= 5000 for o in orphans)
    assert fileops.find_orphans(tmp_path, known, active_job_ids=["livejob"], min_age_seconds=3600) == []
    old = time.time() - 7200
    os.utime(unknown, (old, old))
    assert [o.path for o in fileops.find_orphans(tmp_path, known, min_age_seconds=3600)] == [unknown]
    # Every temporary counts as an orphan when no job is running.
    assert live_tmp in [o.path for o in fileops.find_orphans(tmp_path, known)]
