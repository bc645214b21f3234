"""Snapshot / revert / merge / flatten / re-image round trips on real data written with qemu-io."""
from __future__ import annotations

import pytest

from core.errors import Invalid
from image_manager import chain, fileops, qcow2, qemu_img
from image_manager.errors import ImageExists, ImageNotFound

from .conftest import GiB, MiB, content_digest, qemu_io


@pytest.fixture
def domain(tmp_path, make_base):
    """A storage domain with template t1 v1 (filled with data) and desktop d1's first volume on it."""
    layout = fileops.StorageLayout(tmp_path / "sd")
    template = make_base(name="sd/templates/t1/1.qcow2", size=64 * MiB,
                         writes=("write -P 0x11 0 16M", "write -P 0x12 32M 8M"))
    disk = qcow2.create_overlay(layout.desktop_volume_path("d1", "v1"), template)
    return layout, template, disk


def known_files(layout):
    return [p for p in layout.root.rglob("*.qcow2") if not p.name.startswith(".tmp-")]


def test_snapshot_then_revert_restores_the_snapshot_content(domain, tmp_path):
    layout, template, v1 = domain
    template_digest = content_digest(template, tmp_path)
    qemu_io(v1, "write -P 0xa1 0 1M")
    at_snapshot = content_digest(v1, tmp_path)

    v2 = chain.create_snapshot(v1, layout.desktop_volume_path("d1", "v2"))
    assert chain.chain_paths(v2) == [v2, v1, template]
    qemu_io(v2, "write -P 0xb2 0 2M", "write -P 0xb3 50M 1M")
    assert content_digest(v2, tmp_path) != at_snapshot

    v3 = chain.revert_to_snapshot(v1, layout.desktop_volume_path("d1", "v3"), discard=[v2])
    assert not v2.exists()
    assert chain.chain_paths(v3) == [v3, v1, template]
    assert content_digest(v3, tmp_path) == at_snapshot
    assert content_digest(template, tmp_path) == template_digest
    # Running it again changes nothing.
    chain.revert_to_snapshot(v1, v3, discard=[v2])
    assert content_digest(v3, tmp_path) == at_snapshot
    assert fileops.find_orphans(layout.root, known_files(layout)) == []


def test_revert_in_place_replaces_the_active_volume(domain, tmp_path):
    layout, _template, v1 = domain
    qemu_io(v1, "write -P 0xa1 0 1M")
    v2 = chain.create_snapshot(v1, layout.desktop_volume_path("d1", "v2"))
    qemu_io(v2, "write -P 0xb2 0 1M")
    chain.revert_to_snapshot(v1, v2, discard=[v2])
    qemu_io(v2, "read -P 0xa1 0 1M")
    assert qcow2.is_empty(v2)
    # A re-run (e.g. after a crash while removing discarded files) keeps the fresh overlay as it is.
    inode = v2.stat().st_ino
    chain.revert_to_snapshot(v1, v2, discard=[v2])
    assert v2.stat().st_ino == inode


def test_revert_refuses_to_discard_what_the_new_disk_reads(domain):
    layout, template, v1 = domain
    v2 = chain.create_snapshot(v1, layout.desktop_volume_path("d1", "v2"))
    with pytest.raises(Invalid, match="reads from it"):
        chain.revert_to_snapshot(v1, layout.desktop_volume_path("d1", "v3"), discard=[v1, v2])
    with pytest.raises(Invalid, match="reads from it"):
        chain.reimage(v2, template, discard=[template])
    assert v1.exists() and v2.exists() and not layout.desktop_volume_path("d1", "v3").exists()


@pytest.mark.parametrize("commit_into_backing", [False, True])
def test_deleting_a_middle_snapshot_keeps_what_the_guest_reads(domain, tmp_path, commit_into_backing):
    layout, template, v1 = domain
    qemu_io(v1, "write -P 0xa1 0 1M")
    v2 = chain.create_snapshot(v1, layout.desktop_volume_path("d1", "v2"))
    qemu_io(v2, "write -P 0xb2 1M 1M", "write -P 0xb3 20M 64k")
    v3 = chain.create_snapshot(v2, layout.desktop_volume_path("d1", "v3"))
    qemu_io(v3, "write -P 0xc3 2M 1M")
    before = content_digest(v3, tmp_path)
    template_before = content_digest(template, tmp_path)

    new_backing = chain.delete_snapshot(v2, v3, commit_into_backing=commit_into_backing)
    assert new_backing == v1 and not v2.exists()
    assert chain.chain_paths(v3) == [v3, v1, template]
    assert content_digest(v3, tmp_path) == before
    assert content_digest(template, tmp_path) == template_before
    assert qemu_img.check(v3).ok and qemu_img.check(v1).ok
    # Once done, running it again is a no-op.
    assert chain.delete_snapshot(v2, v3, commit_into_backing=commit_into_backing) == v1
    assert content_digest(v3, tmp_path) == before


def test_deleting_the_snapshot_just_above_the_template_never_writes_the_template(domain, tmp_path):
    layout, template, v1 = domain
    template_bytes = template.read_bytes()
    qemu_io(v1, "write -P 0xa1 0 1M")
    v2 = chain.create_snapshot(v1, layout.desktop_volume_path("d1", "v2"))
    qemu_io(v2, "write -P 0xb2 4M 1M")
    before = content_digest(v2, tmp_path)
    assert chain.delete_snapshot(v1, v2) == template
    assert content_digest(v2, tmp_path) == before and template.read_bytes() == template_bytes
    with pytest.raises(Invalid, match="template version"):
        chain.delete_snapshot(template, v2)
    assert template.exists()
    v3 = chain.create_snapshot(v2, layout.desktop_volume_path("d1", "v3"))
    v4 = chain.create_snapshot(v3, layout.desktop_volume_path("d1", "v4"))
    with pytest.raises(Invalid, match="not backed by"):
        chain.delete_snapshot(v2, v4)
    assert v2.exists()


def test_delete_snapshot_of_a_standalone_base_makes_the_child_standalone(tmp_path, make_base):
    base = make_base(writes=("write -P 0x11 0 1M",))
    child = qcow2.create_overlay(tmp_path / "child.qcow2", base)
    qemu_io(child, "write -P 0x22 1M 1M")
    before = content_digest(child, tmp_path)
    with pytest.raises(Invalid, match="template"):
        chain.delete_snapshot(base, child, protected=[base])
    assert chain.delete_snapshot(base, child) is None
    assert not base.exists() and chain.chain_paths(child) == [child]
    assert content_digest(child, tmp_path) == before


def test_flatten_into_a_new_template_version(domain, tmp_path):
    layout, template, v1 = domain
    qemu_io(v1, "write -P 0xd1 8M 4M")
    v2 = chain.create_snapshot(v1, layout.desktop_volume_path("d1", "v2"))
    qemu_io(v2, "write -P 0xd2 60M 1M")
    expected = content_digest(v2, tmp_path)
    progress: list[float] = []
    dest = layout.template_path("t1", 2)
    assert chain.flatten(v2, dest, progress=progress.append, job_id="flat1") == dest
    assert progress and progress[-1] == 100.0
    assert chain.chain_paths(dest) == [dest]
    assert content_digest(dest, tmp_path) == expected
    assert qemu_img.check(dest).ok
    # New desktops on version 2 see the desktop's changes; version 1 is untouched.
    d2 = qcow2.create_overlay(layout.desktop_volume_path("d2", "v1"), dest)
    qemu_io(d2, "read -P 0xd1 8M 4M", "read -P 0xd2 60M 1M")
    qemu_io(template, "read -P 0x11 8M 4M")
    # Idempotent, and never over another image.
    assert chain.flatten(v2, dest, job_id="flat1") == dest
    with pytest.raises(ImageExists):
        chain.flatten(v2, d2)
    compressed = chain.flatten(v2, layout.template_path("t1", 3), compress=True)
    assert content_digest(compressed, tmp_path) == expected
    assert fileops.find_orphans(layout.root, known_files(layout)) == []


def test_full_clone_is_independent(domain, tmp_path):
    layout, template, v1 = domain
    qemu_io(v1, "write -P 0xe1 0 1M")
    clone = chain.full_clone(v1, layout.desktop_volume_path("d9", "v1"))
    assert chain.chain_paths(clone) == [clone]
    qemu_io(clone, "write -P 0xe2 0 1M")
    qemu_io(v1, "read -P 0xe1 0 1M")
    template.rename(template.with_name("gone.qcow2"))
    qemu_io(clone, "read -P 0xe2 0 1M", "read -P 0x11 1M 15M")


def test_reimage_drops_the_diff(domain, tmp_path):
    layout, template, v1 = domain
    qemu_io(v1, "write -P 0xf1 0 8M")
    v2 = chain.create_snapshot(v1, layout.desktop_volume_path("d1", "v2"))
    qemu_io(v2, "write -P 0xf2 0 1M")
    # A new template version to move to.
    t2 = chain.flatten(template, layout.template_path("t1", 2))
    qemu_io(t2, "write -P 0x99 0 1M")

    disk = chain.reimage(v2, t2, discard=[v1], job_id="re1")
    assert disk == v2 and not v1.exists()
    assert chain.chain_paths(v2) == [v2, t2]
    assert qcow2.is_empty(v2)
    qemu_io(v2, "read -P 0x99 0 1M", "read -P 0x11 1M 15M")
    # Re-running finds the fresh overlay and keeps it.
    inode = v2.stat().st_ino
    chain.reimage(v2, t2, discard=[v1], job_id="re1")
    assert v2.stat().st_ino == inode
    # Re-image to a new volume id instead of in place.
    v3 = chain.reimage(v2, template, new_active=layout.desktop_volume_path("d1", "v3"))
    assert not v2.exists() and chain.chain_paths(v3) == [v3, template]
    assert fileops.find_orphans(layout.root, known_files(layout)) == []


def test_operations_on_missing_files_are_clear_errors(domain, tmp_path):
    layout, template, v1 = domain
    with pytest.raises(ImageNotFound):
        chain.create_snapshot(tmp_path / "nope.qcow2", tmp_path / "x.qcow2")
    with pytest.raises(ImageNotFound):
        chain.flatten(tmp_path / "nope.qcow2", tmp_path / "x.qcow2")
    template.rename(template.with_name("moved.qcow2"))
    with pytest.raises(ImageNotFound, match="backing file .*1.qcow2 of .*v1.qcow2"):
        chain.flatten(v1, tmp_path / "flat.qcow2")
    with pytest.raises(Invalid, match="same file"):
        chain.create_snapshot(v1, v1)
    assert not (tmp_path / "flat.qcow2").exists() and not (tmp_path / "x.qcow2").exists()


def test_accounting_and_savings(tmp_path, make_base):
    template = make_base(name="t.qcow2", size=20 * GiB, writes=("write -P 0x1 0 40M",))
    disks = qcow2.create_overlays(template, [tmp_path / f"d{i}.qcow2" for i in range(10)])
    for i, disk in enumerate(disks):
        qemu_io(disk, f"write -P 0x2 {i}M 4M")
    usage = chain.volume_usage(disks[0])
    assert usage.virtual_size == 20 * GiB and usage.chain_depth == 2 and usage.backing == template
    assert 4 * MiB <= usage.actual_size < 6 * MiB
    report = chain.savings_report(disks)
    template_bytes = fileops.allocated_bytes(template)
    diffs = sum(fileops.allocated_bytes(d) for d in disks)
    assert report.desktops == 10 and report.shared_files == 1
    assert report.shared_bytes == template_bytes and report.private_bytes == diffs
    assert report.total_bytes == template_bytes + diffs
    assert report.full_copies_bytes == 10 * template_bytes + diffs
    assert report.thick_copies_bytes == 10 * 20 * GiB
    assert report.saved_bytes == 9 * template_bytes
    assert report.saving_ratio > 5
    assert report.to_dict()["desktops"] == 10
