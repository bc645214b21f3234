"""The qcow2 overlay layout and header parser, in pure Python (qemu-img agreement is an integration test)."""
from __future__ import annotations

import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from core.errors import Invalid
from image_manager import qcow2
from image_manager.errors import ImageInvalid, ImageNotFound


def materialise(layout: qcow2.OverlayLayout) -> bytes:
    image = bytearray(layout.file_size)
    for offset, data in layout.pieces:
        image[offset: offset + len(data)] = data
    return bytes(image)


def refcount_of(image: bytes, header: qcow2.Qcow2Header, cluster_index: int) -> int:
    per_block = header.cluster_size * 8 // 16
    table_index, block_index = divmod(cluster_index, per_block)
    block_offset = struct.unpack_from(">Q", image, header.refcount_table_offset + 8 * table_index)[0]
    if block_offset == 0:
        return 0
    return struct.unpack_from(">H", image, block_offset + 2 * block_index)[0]


def test_header_round_trips_through_the_parser():
    layout = qcow2.layout_overlay("/srv/vdi/templates/t/3.qcow2", 20 * 2**30)
    header = qcow2.parse_header(materialise(layout)[:65536])
    assert header.version == 3
    assert header.virtual_size == 20 * 2**30
    assert header.cluster_size == 65536
    assert header.backing_file == "/srv/vdi/templates/t/3.qcow2"
    assert header.backing_format == "qcow2"
    assert header.l1_size == 40  # 20 GiB / 512 MiB per L2 table
    assert header.refcount_order == 4 and header.header_length == 104
    assert not header.dirty and not header.corrupt
    assert layout.metadata_clusters == 4 and layout.file_size == 4 * 65536


@given(
    virtual_size=st.integers(min_value=1, max_value=2**50),
    cluster_bits=st.integers(min_value=9, max_value=21),
    name=st.text(alphabet=st.characters(min_codepoint=0x21, max_codepoint=0x7e), min_size=1, max_size=200),
)
def test_every_cluster_is_counted_exactly_once(virtual_size, cluster_bits, name):
    cluster_size = 1 << cluster_bits
    try:
        layout = qcow2.layout_overlay(name, virtual_size, cluster_size=cluster_size)
    except Invalid as exc:
        # Only QEMU's documented limits may refuse a size.
        l1_bytes = -(-virtual_size // (cluster_size * cluster_size // 8)) * 8
        assert l1_bytes > qcow2.MAX_L1_TABLE_BYTES or "cluster" in exc.message
        return
    image = materialise(layout)
    header = qcow2.parse_header(image[:cluster_size])
    assert header.backing_file == name
    assert header.virtual_size == -(-virtual_size // 512) * 512
    assert header.l1_size * cluster_size * (cluster_size // 8) >= header.virtual_size
    total = layout.file_size // cluster_size
    assert [refcount_of(image, header, i) for i in range(total)] == [1] * total
    # The L1 table (no data allocated yet) is all zero and inside the file.
    l1 = image[header.l1_table_offset: header.l1_table_offset + header.l1_size * 8]
    assert len(l1) == header.l1_size * 8 and not any(l1)
    assert header.l1_table_offset % cluster_size == 0 and header.refcount_table_offset % cluster_size == 0


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"virtual_size": 0}, "positive"),
        ({"virtual_size": -5}, "positive"),
        ({"virtual_size": 2**30, "cluster_size": 3000}, "power of two"),
        ({"virtual_size": 2**30, "cluster_size": 256}, "between 512 bytes and 2 MiB"),
        ({"virtual_size": 2**30, "cluster_size": 4 * 2**20}, "between 512 bytes and 2 MiB"),
        ({"virtual_size": 2**30, "backing_format": "vmdk"}, "backing format"),
        ({"virtual_size": 2**40, "cluster_size": 512}, "larger cluster size"),
    ],
)
def test_impossible_overlays_are_refused_with_a_reason(kwargs, message):
    with pytest.raises(Invalid, match=message):
        qcow2.layout_overlay("/t.qcow2", **kwargs)


def test_backing_names_must_fit():
    with pytest.raises(Invalid, match="at most 1023"):
        qcow2.layout_overlay("/" + "a" * 1100, 2**30)
    with pytest.raises(Invalid, match="does not fit"):
        qcow2.layout_overlay("/" + "a" * 500, 2**30, cluster_size=512)
    with pytest.raises(Invalid, match="needs a backing file"):
        qcow2.layout_overlay("", 2**30)


def test_reading_files_that_are_not_qcow2(tmp_path):
    with pytest.raises(ImageNotFound) as err:
        qcow2.read_header(tmp_path / "missing.qcow2")
    assert err.value.status == 404 and "missing.qcow2" in err.value.message
    junk = tmp_path / "junk"
    junk.write_bytes(b"hello world" * 10)
    with pytest.raises(ImageInvalid, match="not a qcow2 image"):
        qcow2.read_header(junk)
    with pytest.raises(ImageInvalid, match="directory"):
        qcow2.read_header(tmp_path)
    bad_version = bytearray(materialise(qcow2.layout_overlay("/b", 2**20)))
    bad_version[4:8] = (7).to_bytes(4, "big")
    (tmp_path / "v7").write_bytes(bad_version)
    with pytest.raises(ImageInvalid, match="version 7"):
        qcow2.read_header(tmp_path / "v7")
    assert not qcow2.is_qcow2(junk) and not qcow2.is_qcow2(tmp_path / "missing")


def test_written_overlay_is_thin_and_parses(tmp_path):
    base = tmp_path / "base.qcow2"
    base.write_bytes(materialise(qcow2.layout_overlay("/elsewhere", 10 * 2**30)))
    overlay = qcow2.create_overlay(tmp_path / "o.qcow2", base, job_id="j1")
    header = qcow2.read_header(overlay)
    assert header.virtual_size == 10 * 2**30 and header.backing_file == str(base)
    assert overlay.stat().st_blocks * 512 < 64 * 1024 < overlay.stat().st_size
    assert qcow2.is_empty(overlay)
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".tmp")] == []


def test_chain_walk_detects_missing_links_and_loops(tmp_path):
    a, b = tmp_path / "a.qcow2", tmp_path / "b.qcow2"
    a.write_bytes(materialise(qcow2.layout_overlay(str(b), 2**20)))
    with pytest.raises(ImageNotFound, match="backing file .*b.qcow2 of .*a.qcow2"):
        qcow2.backing_chain(a)
    b.write_bytes(materialise(qcow2.layout_overlay("a.qcow2", 2**20)))  # relative, pointing back at a
    with pytest.raises(ImageInvalid, match="loops"):
        qcow2.backing_chain(a)
