"""image_manager.qemu_img against the real qemu-img."""
from __future__ import annotations

import os
import struct
import subprocess
from pathlib import Path

import pytest

from image_manager import qcow2, qemu_img
from image_manager.errors import ImageInUse, ImageInvalid, ImageNotFound, ImageToolTimeout

from .conftest import GiB, MiB, content_digest, qemu_io


def test_info_and_chain(tmp_path, make_base):
    base = make_base(size=64 * MiB, writes=("write -P 0x1 0 2M",))
    top = qcow2.create_overlay(tmp_path / "top.qcow2", base)
    info = qemu_img.info(top)
    assert (info.format, info.virtual_size, info.cluster_size) == ("qcow2", 64 * MiB, 65536)
    assert (info.full_backing_filename, info.backing_format) == (str(base), "qcow2")
    assert info.actual_size > 0 and not info.dirty and not info.corrupt
    chain = qemu_img.info_chain(top)
    assert [c.filename for c in chain] == [str(top), str(base)]
    assert chain[1].backing_filename is None


def test_check_reports_ok_leaks_and_corruption(tmp_path, make_base):
    base = make_base()
    good = qcow2.create_overlay(tmp_path / "good.qcow2", base)
    assert qemu_img.check(good).status == "ok"

    # A leak: a cluster with refcount 1 that nothing references.
    layout = qcow2.layout_overlay(str(base), 64 * MiB)
    leaky = tmp_path / "leaky.qcow2"
    with open(leaky, "wb") as fh:
        for offset, data in layout.pieces:
            fh.seek(offset)
            fh.write(data)
        rb_offset = layout.pieces[2][0]
        fh.seek(rb_offset + 2 * layout.metadata_clusters)
        fh.write(b"\x00\x01")
        fh.truncate(layout.file_size + 65536)
    result = qemu_img.check(leaky)
    assert (result.status, result.leaks, result.corruptions) == ("leaks", 1, 0)
    repaired = qemu_img.check(leaky, repair="leaks")
    assert repaired.leaks_fixed == 1 and qemu_img.check(leaky).ok

    # A corruption: an L1 entry pointing at a cluster whose refcount is 0.
    corrupt = tmp_path / "corrupt.qcow2"
    corrupt.write_bytes(good.read_bytes())
    header = qcow2.read_header(corrupt)
    with open(corrupt, "r+b") as fh:
        fh.seek(header.l1_table_offset)
        fh.write(struct.pack(">Q", (1 << 63) | (8 * 65536)))
        fh.truncate(9 * 65536)
    result = qemu_img.check(corrupt)
    assert result.status == "corrupt" and result.corruptions >= 1 and not result.ok


def test_convert_reports_progress_and_flattens(tmp_path, make_base):
    base = make_base(size=256 * MiB, writes=("write -P 0x61 0 64M", "write -P 0x62 128M 32M"))
    top = qcow2.create_overlay(tmp_path / "top.qcow2", base)
    qemu_io(top, "write -P 0x63 16M 16M")
    seen: list[float] = []
    out = qemu_img.convert(top, tmp_path / "flat.qcow2", progress=seen.append)
    assert seen and seen[-1] == 100.0 and seen == sorted(seen)
    assert qemu_img.info(out).backing_filename is None
    assert content_digest(out, tmp_path) == content_digest(top, tmp_path)
    raw = qemu_img.convert(top, tmp_path / "flat.raw", out_fmt="raw")
    assert os.path.getsize(raw) == 256 * MiB
    assert os.stat(raw).st_blocks * 512 < 150 * MiB  # zero regions stay sparse


def test_compressed_convert_is_smaller(tmp_path, make_base):
    base = make_base(size=64 * MiB, writes=("write -P 0x41 0 32M",))
    plain = qemu_img.convert(base, tmp_path / "plain.qcow2")
    packed = qemu_img.convert(base, tmp_path / "packed.qcow2", compress=True)
    assert os.path.getsize(packed) * 10 < os.path.getsize(plain)
    assert content_digest(packed, tmp_path) == content_digest(plain, tmp_path)


def test_commit_and_rebase(tmp_path, make_base):
    base = make_base(name="base.qcow2", writes=("write -P 0x10 0 4M",))
    mid = qcow2.create_overlay(tmp_path / "mid.qcow2", base)
    qemu_io(mid, "write -P 0x20 1M 1M")
    top = qcow2.create_overlay(tmp_path / "top.qcow2", mid)
    qemu_io(top, "write -P 0x30 3M 1M")
    before = content_digest(top, tmp_path)

    # Safe rebase onto base: top receives the 0x20 data it used to read from mid.
    qemu_img.rebase(top, base)
    assert qemu_img.info(top).full_backing_filename == str(base)
    assert content_digest(top, tmp_path) == before
    qemu_io(top, "read -P 0x20 1M 1M", "read -P 0x30 3M 1M")

    # Commit a fresh overlay's data down into its backing file.
    upper = qcow2.create_overlay(tmp_path / "upper.qcow2", top)
    qemu_io(upper, "write -P 0x40 0 512k")
    qemu_img.commit(upper)
    qemu_io(top, "read -P 0x40 0 512k", "read -P 0x10 512k 512k")

    # Unsafe rebase only rewrites the header.
    qemu_img.rebase(top, mid, unsafe=True)
    assert qcow2.read_header(top).backing_file == str(mid)
    # Rebase onto nothing makes a standalone image with the same content.
    content = content_digest(top, tmp_path)
    qemu_img.rebase(top, None)
    assert qcow2.read_header(top).backing_file is None
    assert content_digest(top, tmp_path) == content


def test_create_measure_resize(tmp_path, make_base):
    img = qemu_img.create(tmp_path / "new.qcow2", size=1 * GiB, cluster_size=128 * 1024)
    info = qemu_img.info(img)
    assert (info.virtual_size, info.cluster_size) == (1 * GiB, 128 * 1024)
    qemu_img.resize(img, 2 * GiB)
    assert qemu_img.info(img).virtual_size == 2 * GiB
    with pytest.raises(ImageInvalid, match="shrink"):
        qemu_img.resize(img, 1 * GiB)
    qemu_img.resize(img, 1 * GiB, shrink=True)
    assert qemu_img.info(img).virtual_size == 1 * GiB
    base = make_base(size=64 * MiB, writes=("write -P 0x5 0 8M",))
    measured = qemu_img.measure(source=base)
    assert 8 * MiB <= measured.required < 9 * MiB and measured.fully_allocated > 64 * MiB
    assert qemu_img.measure(size=10 * GiB).fully_allocated > 10 * GiB
    overlay = qemu_img.create(tmp_path / "ov.qcow2", backing=base)
    assert qemu_img.info(overlay).virtual_size == 64 * MiB


def test_missing_and_bad_files_are_typed_errors(tmp_path, make_base):
    with pytest.raises(ImageNotFound) as err:
        qemu_img.info(tmp_path / "nope.qcow2")
    assert "nope.qcow2" in err.value.message and "No such file" in err.value.message
    junk = tmp_path / "junk.img"
    junk.write_bytes(b"junk" * 1000)
    with pytest.raises(ImageInvalid, match="not in qcow2 format"):
        qemu_img.info(junk, fmt="qcow2")
    with pytest.raises(ImageInvalid):
        qemu_img.check(junk)
    base = make_base()
    top = qcow2.create_overlay(tmp_path / "top.qcow2", base)
    base.rename(tmp_path / "moved.qcow2")
    with pytest.raises(ImageNotFound, match="backing file of .*top.qcow2"):
        qemu_img.convert(top, tmp_path / "flat.qcow2")
    assert not (tmp_path / "flat.qcow2").exists()
    with pytest.raises(ImageInvalid, match="regular file"):
        qemu_img.info(tmp_path)


def test_an_image_held_open_is_in_use_but_readable_with_force_share(tmp_path, make_base):
    base = make_base()
    # qemu-io holds the image while it waits for commands on a pipe we never write to. Its prompt says it has
    # opened the image; probing the lock before that could make qemu-io's own open fail on OUR probe's lock.
    holder = subprocess.Popen(["qemu-io", str(base)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT)
    try:
        said = b""
        while b"qemu-io>" not in said:
            chunk = os.read(holder.stdout.fileno(), 4096)
            assert chunk, f"qemu-io exited without opening the image: {said.decode(errors='replace')}"
            said += chunk
        with pytest.raises(ImageInUse) as exc:
            qemu_img.info(base)
        assert exc.value.status == 409 and "lock" in exc.value.message
        assert qemu_img.info(base, force_share=True).virtual_size == 64 * MiB
    finally:
        holder.kill()
        holder.wait()
        holder.stdin.close()
        holder.stdout.close()


def test_timeout_kills_qemu_img_and_raises(tmp_path, make_base):
    base = make_base(size=512 * MiB, writes=("write -P 0x7 0 256M",))
    dest = tmp_path / "slow.qcow2"
    with pytest.raises(ImageToolTimeout) as err:
        qemu_img.convert(base, dest, compress=True, timeout=0.2)
    assert err.value.status == 504 and "0.2" in err.value.message
    leftover = subprocess.run(["pgrep", "-f", f"qemu-img convert .*{dest}"], capture_output=True, text=True)
    assert leftover.stdout.strip() == ""


def test_missing_binary_is_unavailable(monkeypatch, tmp_path):
    from image_manager.errors import ImageToolMissing

    monkeypatch.setattr(qemu_img, "QEMU_IMG", str(Path(tmp_path) / "no-such-qemu-img"))
    with pytest.raises(ImageToolMissing, match="qemu-utils"):
        qemu_img.info(tmp_path / "x.qcow2")
