"""Crash safety: kill the process (SIGKILL, no cleanup) between steps or in the middle of a copy,
then re-run the same job and check the result is right and no orphan file is left."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from image_manager import chain, fileops, qcow2, qemu_img
from tests.harness.processes import kill_process_tree

from .conftest import MiB, content_digest, qemu_io

# Replaces module.attr by a wrapper that SIGKILLs the process before (or after) its nth call, then runs
# the given statement. SIGKILL means no finally/except block runs: a real power cut for our code.
_CRASH_RUNNER = textwrap.dedent("""
    import os, signal, sys
    from pathlib import Path
    from image_manager import chain, fileops, qcow2, qemu_img
    module_name, attr, nth, when, statement = sys.argv[1:6]
    module = {"fileops": fileops, "qcow2": qcow2, "qemu_img": qemu_img, "os": os}[module_name]
    original = getattr(module, attr)
    calls = 0
    def crashing(*args, **kwargs):
        global calls
        calls += 1
        if calls == int(nth) and when == "before":
            os.kill(os.getpid(), signal.SIGKILL)
        result = original(*args, **kwargs)
        if calls == int(nth) and when == "after":
            os.kill(os.getpid(), signal.SIGKILL)
        return result
    setattr(module, attr, crashing)
    exec(statement)
""")


def run_and_crash(statement: str, at: str, *, nth: int = 1, when: str = "before") -> None:
    module_name, attr = at.split(".")
    proc = subprocess.run([sys.executable, "-c", _CRASH_RUNNER, module_name, attr, str(nth), when, statement],
                          capture_output=True, text=True, timeout=300, cwd=Path(__file__).parents[3])
    assert proc.returncode == -signal.SIGKILL, f"the crash point was never reached: {proc.stderr}"


def files_of(root: Path) -> list[Path]:
    return [p for p in root.rglob("*.qcow2") if not p.name.startswith(".tmp-")]


@pytest.fixture
def desk(tmp_path, make_base):
    layout = fileops.StorageLayout(tmp_path / "sd")
    template = make_base(name="sd/templates/t1/1.qcow2", size=64 * MiB, writes=("write -P 0x11 0 16M",))
    v1 = qcow2.create_overlay(layout.desktop_volume_path("d1", "v1"), template)
    qemu_io(v1, "write -P 0xa1 0 2M")
    v2 = chain.create_snapshot(v1, layout.desktop_volume_path("d1", "v2"))
    qemu_io(v2, "write -P 0xb2 1M 2M")
    v3 = chain.create_snapshot(v2, layout.desktop_volume_path("d1", "v3"))
    qemu_io(v3, "write -P 0xc3 2M 1M")
    return layout, template, v1, v2, v3


@pytest.mark.parametrize(
    ("at", "when"),
    [
        ("qemu_img.commit", "before"),
        ("qemu_img.commit", "after"),
        ("qemu_img.rebase", "after"),
        ("fileops.remove", "after"),
    ],
)
def test_merge_by_commit_survives_a_crash_at_every_step(desk, tmp_path, at, when):
    layout, template, v1, v2, v3 = desk
    expected = content_digest(v3, tmp_path)
    statement = f"chain.delete_snapshot(Path({str(v2)!r}), Path({str(v3)!r}), commit_into_backing=True)"
    run_and_crash(statement, at, when=when)
    # Whatever the crash point, the guest would still read the same disk…
    assert content_digest(v3, tmp_path) == expected
    # …and the re-run finishes the job.
    assert chain.delete_snapshot(v2, v3, commit_into_backing=True) == v1
    assert chain.chain_paths(v3) == [v3, v1, template] and not v2.exists()
    assert content_digest(v3, tmp_path) == expected
    assert qemu_img.check(v3).ok and qemu_img.check(v1).ok
    assert fileops.find_orphans(layout.root, files_of(layout.root)) == []


@pytest.mark.parametrize(("at", "when"), [("qemu_img.rebase", "before"), ("qemu_img.rebase", "after")])
def test_merge_by_rebase_survives_a_crash(desk, tmp_path, at, when):
    layout, template, v1, v2, v3 = desk
    expected = content_digest(v3, tmp_path)
    run_and_crash(f"chain.delete_snapshot(Path({str(v2)!r}), Path({str(v3)!r}))", at, when=when)
    assert content_digest(v3, tmp_path) == expected
    chain.delete_snapshot(v2, v3)
    assert chain.chain_paths(v3) == [v3, v1, template] and content_digest(v3, tmp_path) == expected


def test_safe_rebase_killed_mid_copy_is_resumable(tmp_path, make_base):
    base = make_base(size=512 * MiB, writes=("write -P 0x21 0 8M",))
    snap = qcow2.create_overlay(tmp_path / "snap.qcow2", base)
    qemu_io(snap, "write -P 0x31 0 300M")
    child = qcow2.create_overlay(tmp_path / "child.qcow2", snap)
    qemu_io(child, "write -P 0x41 400M 1M")
    expected = content_digest(child, tmp_path)
    proc = subprocess.Popen([sys.executable, "-c",
                             f"from image_manager import chain; chain.delete_snapshot({str(snap)!r}, {str(child)!r})"],
                            cwd=Path(__file__).parents[3])
    deadline = time.monotonic() + 60
    while os.stat(child).st_blocks * 512 < 20 * MiB and proc.poll() is None:  # wait until copying is under way
        assert time.monotonic() < deadline
        time.sleep(0.01)
    assert proc.poll() is None, "the rebase finished before it could be interrupted"
    kill_process_tree(proc)
    assert content_digest(child, tmp_path) == expected
    chain.delete_snapshot(snap, child)
    assert chain.chain_paths(child) == [child, base] and content_digest(child, tmp_path) == expected


@pytest.mark.parametrize(("at", "when"), [("fileops.publish", "before"), ("fileops.publish", "after"),
                                          ("fileops.remove", "after")])
def test_revert_survives_a_crash(desk, tmp_path, at, when):
    layout, template, v1, v2, v3 = desk
    at_v1 = content_digest(v1, tmp_path)
    v4 = layout.desktop_volume_path("d1", "v4")
    statement = (f"chain.revert_to_snapshot(Path({str(v1)!r}), Path({str(v4)!r}), "
                 f"discard=[Path({str(v2)!r}), Path({str(v3)!r})], job_id='rev1')")
    run_and_crash(statement, at, when=when)
    chain.revert_to_snapshot(v1, v4, discard=[v2, v3], job_id="rev1")
    assert not v2.exists() and not v3.exists()
    assert content_digest(v4, tmp_path) == at_v1
    assert fileops.find_orphans(layout.root, files_of(layout.root)) == []


@pytest.mark.parametrize(("at", "when"), [("fileops.publish", "before"), ("fileops.publish", "after"),
                                          ("fileops.remove", "after")])
def test_reimage_in_place_survives_a_crash(desk, tmp_path, at, when):
    layout, template, v1, v2, v3 = desk
    statement = (f"chain.reimage(Path({str(v3)!r}), Path({str(template)!r}), "
                 f"discard=[Path({str(v1)!r}), Path({str(v2)!r})], job_id='re1')")
    run_and_crash(statement, at, when=when)
    chain.reimage(v3, template, discard=[v1, v2], job_id="re1")
    assert chain.chain_paths(v3) == [v3, template] and qcow2.is_empty(v3)
    assert not v1.exists() and not v2.exists()
    assert fileops.find_orphans(layout.root, files_of(layout.root)) == []


def test_flatten_killed_mid_copy_leaves_only_a_temporary_that_the_rerun_replaces(tmp_path, make_base):
    layout = fileops.StorageLayout(tmp_path / "sd")
    template = make_base(name="sd/templates/t1/1.qcow2", size=512 * MiB, writes=("write -P 0x51 0 384M",))
    disk = qcow2.create_overlay(layout.desktop_volume_path("d1", "v1"), template)
    qemu_io(disk, "write -P 0x52 100M 1M")
    dest = layout.template_path("t1", 2)
    tmp = fileops.tmp_path_for(dest, "flat9")
    proc = subprocess.Popen([sys.executable, "-c",
                             f"from image_manager import chain; chain.flatten({str(disk)!r}, {str(dest)!r}, "
                             f"compress=True, job_id='flat9')"], cwd=Path(__file__).parents[3])
    deadline = time.monotonic() + 60
    while not (tmp.exists() and tmp.stat().st_size > 0) and proc.poll() is None:
        assert time.monotonic() < deadline
        time.sleep(0.01)
    assert proc.poll() is None, "the copy finished before it could be interrupted"
    kill_process_tree(proc)
    assert not dest.exists()
    assert [o.reason for o in fileops.find_orphans(layout.root, files_of(layout.root))] == ["temporary"]
    chain.flatten(disk, dest, job_id="flat9")
    assert fileops.find_orphans(layout.root, files_of(layout.root)) == []
    assert content_digest(dest, tmp_path) == content_digest(disk, tmp_path)


def test_batch_overlay_creation_survives_a_crash(tmp_path, make_base):
    base = make_base(size=1 * MiB)
    paths = [tmp_path / "sd/desktops" / f"d{i}" / "v1.qcow2" for i in range(60)]
    statement = f"qcow2.create_overlays({str(base)!r}, {[str(p) for p in paths]!r}, job_id='prov1')"
    run_and_crash(statement, "fileops.publish", nth=25, when="before")
    assert sum(p.exists() for p in paths) == 24  # each path is all there or absent
    for p in paths[:24]:
        assert qemu_img.check(p).ok
    qcow2.create_overlays(base, paths, job_id="prov1")
    assert all(qcow2.read_header(p).backing_file == str(base) for p in paths)
    assert fileops.find_orphans(tmp_path / "sd", paths) == []
