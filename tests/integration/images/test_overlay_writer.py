"""The Python overlay writer against the real qemu-img and qemu-io."""
from __future__ import annotations

import os
import subprocess
import uuid
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from core.errors import Invalid
from image_manager import qcow2, qemu_img
from image_manager.errors import ImageExists, ImageInvalid, ImageNotFound

from .conftest import GiB, MiB, content_digest, qemu_img_json, qemu_io


def assert_clean_overlay(overlay: Path, backing: Path, virtual_size: int, cluster_size: int) -> None:
    check = qemu_img_json("check", str(overlay))
    assert check.get("check-errors", 0) == 0 and check.get("corruptions", 0) == 0 and check.get("leaks", 0) == 0, check
    info = qemu_img_json("info", str(overlay))
    assert info["format"] == "qcow2"
    assert info["virtual-size"] == virtual_size
    assert info["cluster-size"] == cluster_size
    assert info["full-backing-filename"] == str(backing)
    assert info["backing-filename-format"] == "qcow2"
    assert info["format-specific"]["data"]["compat"] == "1.1"  # qcow2 version 3


@pytest.mark.parametrize(
    ("base_size", "cluster_size"),
    [
        (20 * GiB, 64 * 1024),  # the white paper's template size, sparse
        (64 * MiB, 64 * 1024),
        (1 * MiB + 512, 64 * 1024),  # not a multiple of the cluster size
        (3 * GiB + 7 * 512, 512),  # smallest clusters: multi-cluster L1 table
        (100 * GiB, 4096),
        (1 * GiB, 2 * MiB),  # largest clusters
        (512, 64 * 1024),  # one sector
    ],
)
def test_qemu_img_agrees_with_the_writer(tmp_path, make_base, base_size, cluster_size):
    base = make_base(size=base_size)
    overlay = qcow2.create_overlay(tmp_path / "desk.qcow2", base, cluster_size=cluster_size)
    assert_clean_overlay(overlay, base, base_size, cluster_size)
    header = qcow2.read_header(overlay)
    assert (header.virtual_size, header.cluster_size, header.backing_file, header.backing_format) == (
        base_size, cluster_size, str(base), "qcow2")


def test_odd_virtual_size_is_rounded_up_to_a_sector_like_qemu_img(tmp_path, make_base):
    base = make_base(size=10 * MiB)
    ours = qcow2.create_overlay(tmp_path / "ours.qcow2", base, virtual_size=12345)
    theirs = qemu_img.create(tmp_path / "theirs.qcow2", backing=base, size=12345)
    assert qemu_img.info(ours).virtual_size == qemu_img.info(theirs).virtual_size == 12800
    assert qemu_img.check(ours).ok


def test_overlay_larger_than_its_backing_reads_zeros_past_the_end(tmp_path, make_base):
    base = make_base(size=4 * MiB, writes=("write -P 0x11 0 4M",))
    overlay = qcow2.create_overlay(tmp_path / "big.qcow2", base, virtual_size=16 * MiB)
    assert qemu_img.info(overlay).virtual_size == 16 * MiB
    qemu_io(overlay, "read -P 0x11 0 4M", "read -P 0 4M 12M", "write -P 0x22 8M 1M", "read -P 0x22 8M 1M")
    assert qemu_img.check(overlay).ok


def test_reader_agrees_with_overlays_made_by_qemu_img(tmp_path, make_base):
    base = make_base(size=5 * GiB)
    theirs = qemu_img.create(tmp_path / "theirs.qcow2", backing=base, cluster_size=8192)
    header = qcow2.read_header(theirs)
    assert (header.version, header.virtual_size, header.cluster_size) == (3, 5 * GiB, 8192)
    assert (header.backing_file, header.backing_format) == (str(base), "qcow2")
    assert qcow2.is_empty(theirs)
    assert qcow2.read_header(base).backing_file is None


def test_guest_writes_land_in_the_overlay_and_the_base_is_unchanged(tmp_path, make_base):
    base = make_base(size=64 * MiB, writes=("write -P 0x5a 0 8M", "write -P 0x77 32M 4M"))
    base_before = content_digest(base, tmp_path)
    base_bytes_before = base.read_bytes()
    overlay = qcow2.create_overlay(tmp_path / "desk.qcow2", base)
    assert qcow2.is_empty(overlay)

    qemu_io(overlay, "write -P 0xab 0 1M", "write -P 0xcd 40M 64k")
    qemu_io(overlay, "read -P 0xab 0 1M", "read -P 0x5a 1M 7M", "read -P 0x77 32M 4M", "read -P 0xcd 40M 64k",
            "read -P 0 8M 24M")
    assert not qcow2.is_empty(overlay)
    assert qemu_img.check(overlay).ok
    assert base.read_bytes() == base_bytes_before
    assert content_digest(base, tmp_path) == base_before
    assert content_digest(overlay, tmp_path) != base_before


def test_relative_backing_name_resolves_from_the_overlay_directory(tmp_path, make_base):
    base = make_base(name="templates/t1/1.qcow2", size=8 * MiB, writes=("write -P 0x42 0 1M",))
    overlay = qcow2.create_overlay(tmp_path / "desktops/d1/v1.qcow2", base, relative_backing=True)
    assert qcow2.read_header(overlay).backing_file == "../../templates/t1/1.qcow2"
    assert os.path.normpath(qemu_img.info(overlay).full_backing_filename) == str(base)
    # The whole storage domain can move: the chain still resolves.
    moved = tmp_path.parent / (tmp_path.name + "-moved")
    os.rename(tmp_path, moved)
    try:
        qemu_io(moved / "desktops/d1/v1.qcow2", "read -P 0x42 0 1M")
    finally:
        os.rename(moved, tmp_path)


def test_creating_the_same_overlay_again_is_a_no_op(tmp_path, make_base):
    base = make_base()
    overlay = qcow2.create_overlay(tmp_path / "desk.qcow2", base, job_id="job1")
    qemu_io(overlay, "write -P 0x01 0 64k")
    inode, content = os.stat(overlay).st_ino, overlay.read_bytes()
    assert qcow2.create_overlay(tmp_path / "desk.qcow2", base, job_id="job1") == overlay
    assert os.stat(overlay).st_ino == inode and overlay.read_bytes() == content
    assert sorted(p.name for p in tmp_path.iterdir()) == ["base.qcow2", "desk.qcow2"]


def test_an_existing_overlay_of_another_backing_is_a_conflict(tmp_path, make_base):
    base1, base2 = make_base("b1.qcow2"), make_base("b2.qcow2")
    overlay = qcow2.create_overlay(tmp_path / "desk.qcow2", base1)
    with pytest.raises(ImageExists) as err:
        qcow2.create_overlay(overlay, base2)
    assert "b1.qcow2" in err.value.message and "b2.qcow2" in err.value.message
    assert qcow2.read_header(overlay).backing_file == str(base1)
    (tmp_path / "junk.qcow2").write_bytes(b"not an image")
    with pytest.raises(ImageExists):
        qcow2.create_overlay(tmp_path / "junk.qcow2", base1)
    with pytest.raises(ImageExists):
        qcow2.create_overlay(overlay, base1, virtual_size=128 * MiB)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b1.qcow2", "b2.qcow2", "desk.qcow2", "junk.qcow2"]


def test_replace_swaps_the_overlay_atomically(tmp_path, make_base):
    base1, base2 = make_base("b1.qcow2"), make_base("b2.qcow2")
    overlay = qcow2.create_overlay(tmp_path / "desk.qcow2", base1)
    qemu_io(overlay, "write -P 0x01 0 64k")
    qcow2.create_overlay(overlay, base2, replace=True)
    assert qemu_img.info(overlay).full_backing_filename == str(base2)
    assert qcow2.is_empty(overlay) and qemu_img.check(overlay).ok


def test_missing_or_bad_backing_files_are_clear_errors(tmp_path, make_base):
    with pytest.raises(ImageNotFound) as err:
        qcow2.create_overlay(tmp_path / "desk.qcow2", tmp_path / "nope.qcow2")
    assert "nope.qcow2" in err.value.message and err.value.status == 404
    raw = tmp_path / "disk.raw"
    raw.write_bytes(b"\0" * 4096)
    with pytest.raises(ImageInvalid) as err:
        qcow2.create_overlay(tmp_path / "desk.qcow2", raw)
    assert "not a qcow2 image" in err.value.message and err.value.status == 422
    with pytest.raises(Invalid):
        qcow2.create_overlay(tmp_path / "desk.qcow2", make_base(), cluster_size=3000)
    assert not (tmp_path / "desk.qcow2").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".tmp-")]


def test_raw_backing_file(tmp_path):
    raw = tmp_path / "base.raw"
    raw.write_bytes(b"\x33" * (2 * MiB))
    overlay = qcow2.create_overlay(tmp_path / "desk.qcow2", raw, backing_format="raw")
    info = qemu_img.info(overlay)
    assert (info.virtual_size, info.backing_format) == (2 * MiB, "raw")
    qemu_io(overlay, "read -P 0x33 0 2M", "write -P 0x44 0 4k")
    assert raw.read_bytes() == b"\x33" * (2 * MiB)
    assert [link.format for link in qcow2.backing_chain(overlay)] == ["qcow2", "raw"]


def test_batch_creates_many_valid_overlays_without_leftovers(tmp_path, make_base):
    base = make_base(size=20 * GiB)
    paths = [tmp_path / "desktops" / f"d{i:03d}" / "v1.qcow2" for i in range(200)]
    created = qcow2.create_overlays(base, paths, job_id="batch1")
    assert created == paths
    for path in paths[::37] + [paths[-1]]:
        assert_clean_overlay(path, base, 20 * GiB, 64 * 1024)
    for path in paths:
        header = qcow2.read_header(path)
        assert header.backing_file == str(base) and header.virtual_size == 20 * GiB
        assert os.stat(path).st_blocks * 512 <= 64 * 1024  # thin: a few KiB of metadata, not 20 GiB
    leftovers = [p for p in (tmp_path / "desktops").rglob(".tmp-*")]
    assert leftovers == []
    # A second batch with some existing paths only creates the missing ones.
    paths[5].unlink()
    inode = os.stat(paths[6]).st_ino
    qcow2.create_overlays(base, paths)
    assert paths[5].exists() and os.stat(paths[6]).st_ino == inode


def test_batch_with_a_conflicting_path_creates_nothing(tmp_path, make_base):
    base, other = make_base("b.qcow2"), make_base("o.qcow2")
    qcow2.create_overlay(tmp_path / "d2.qcow2", other)
    with pytest.raises(ImageExists):
        qcow2.create_overlays(base, [tmp_path / "d1.qcow2", tmp_path / "d2.qcow2", tmp_path / "d3.qcow2"])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b.qcow2", "d2.qcow2", "o.qcow2"]


def test_overlay_on_overlay_chain(tmp_path, make_base):
    base = make_base(writes=("write -P 0x10 0 1M",))
    mid = qcow2.create_overlay(tmp_path / "mid.qcow2", base)
    qemu_io(mid, "write -P 0x20 1M 1M")
    top = qcow2.create_overlay(tmp_path / "top.qcow2", mid)
    qemu_io(top, "write -P 0x30 2M 1M", "read -P 0x10 0 1M", "read -P 0x20 1M 1M", "read -P 0x30 2M 1M")
    chain = qemu_img.info_chain(top)
    assert [Path(i.filename) for i in chain] == [top, mid, base]
    assert [link.path for link in qcow2.backing_chain(top)] == [top, mid, base]


@settings(max_examples=25, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(
    virtual_size=st.integers(min_value=1, max_value=4 * 1024 * GiB),
    cluster_bits=st.integers(min_value=9, max_value=21),
)
def test_property_every_size_and_cluster_size_checks_clean(tmp_path, make_base, virtual_size, cluster_bits):
    base = tmp_path / "prop-base.qcow2"
    if not base.exists():
        make_base("prop-base.qcow2", size=1 * MiB)
    # tmp_path is shared by every example: each needs a path of its own, or an earlier example's overlay
    # turns this one into an idempotent no-op.
    overlay = tmp_path / f"prop-{uuid.uuid4().hex}.qcow2"
    cluster_size = 1 << cluster_bits
    if virtual_size > (qcow2.MAX_L1_TABLE_BYTES // 8) * cluster_size * (cluster_size // 8):
        with pytest.raises(Invalid, match="larger cluster size"):
            qcow2.create_overlay(overlay, base, virtual_size=virtual_size, cluster_size=cluster_size)
        assert not overlay.exists()
        return
    qcow2.create_overlay(overlay, base, virtual_size=virtual_size, cluster_size=1 << cluster_bits)
    expected = -(-virtual_size // 512) * 512
    assert_clean_overlay(overlay, base, expected, 1 << cluster_bits)
    # Writing at the very end of the disk must work too (the L1 table really covers the size).
    proc = subprocess.run(["qemu-io", "-c", f"write -P 0x9 {expected - 512} 512", str(overlay)],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert qemu_img.check(overlay).ok
    overlay.unlink()


def test_an_impossible_size_is_refused_even_where_a_file_would_make_the_call_a_no_op(tmp_path, make_base):
    """Found by the property above: an overlay of the same size (made with larger clusters) was at the path,
    and the idempotent shortcut skipped the size check. 128 GiB + 1 byte needs an L1 table just over QEMU's
    32 MiB limit with 512-byte clusters; 128 GiB fits exactly. qemu-img draws the line at the same place."""
    base = make_base(size=1 * MiB)
    too_big, largest = 128 * GiB + 1, 128 * GiB
    for size, accepted in ((too_big, False), (largest, True)):
        proc = subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-o", "cluster_size=512",
                               str(tmp_path / f"qemu-{size}.qcow2"), str(size)], capture_output=True, text=True,
                              timeout=60)
        assert (proc.returncode == 0) == accepted and ("too large" in proc.stderr) != accepted, proc.stderr

    overlay = tmp_path / "o.qcow2"
    qcow2.create_overlay(overlay, base, virtual_size=too_big, cluster_size=1024)
    with pytest.raises(Invalid, match="larger cluster size"):
        qcow2.create_overlay(overlay, base, virtual_size=too_big, cluster_size=512)
    assert qcow2.create_overlay(tmp_path / "fits.qcow2", base, virtual_size=largest, cluster_size=512)
    assert_clean_overlay(tmp_path / "fits.qcow2", base, largest, 512)
